"""`hypersr batch` on one machine: for each file, pass one (LoRA cached in the job directory), pass two,
and encoding by the user's ffmpeg with the user's encoder arguments; audio, subtitles, chapters and
metadata are copied from the source. Outputs appear under their final names only when complete."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..engine.errors import HypersrError
from .job import Entry, Job, expand_inputs

Y4M_STDIN = ["-f", "yuv4mpegpipe", "-i", "-"]


def encode_command(ffmpeg: str, source: str, target: Path, ffmpeg_args: str, video: list[str] = Y4M_STDIN) -> list[str]:
    """ffmpeg reading the upscaled video (default: y4m on stdin), everything else from the source file."""
    return [ffmpeg, "-v", "error", *video, "-i", source,
            "-map", "0:v:0", "-map", "1:a?", "-map", "1:s?", "-map_metadata", "1", "-map_chapters", "1",
            "-c:a", "copy", "-c:s", "copy", *shlex.split(ffmpeg_args), "-y", str(target)]


def partial_path(output: Path) -> Path:
    """Where an output is written until it is complete (same folder and suffix, so ffmpeg picks the muxer)."""
    return output.with_name(f".{output.stem}.hypersr-partial{output.suffix}")


def pass_one(job: Job, entry: Entry, position: int) -> None:
    from ..engine.analyse import analyse_frames
    from ..engine.lora import save_lora
    from ..ffmpeg_filter.pipe import open_input
    from ..vsplugin import read_frames
    from ..vsplugin.io import to_rgb

    s = job.settings
    t0 = time.time()
    source = open_input(entry.source)
    rgb = to_rgb(source.clip, "RGBS", source.matrix)
    frames = read_frames(rgb, source.total, progress=True, desc=f"{Path(entry.source).name} pass one", position=position)
    lora = analyse_frames(frames, s["preset"], s["refine"], s["device"], (rgb.width, rgb.height))
    save_lora(lora, job.lora_path(entry))
    entry.frames = lora.made_by["frames"]
    entry.seconds["pass_one"] = round(time.time() - t0, 2)


def pass_two(job: Job, entry: Entry, position: int) -> None:
    import vapoursynth as vs

    from ..ffmpeg_filter.pipe import open_input, output_clip, write_y4m
    from ..vsplugin import upscale
    from ..vsplugin.io import to_rgb

    s = job.settings
    t0 = time.time()
    source = open_input(entry.source)
    try:
        out = output_clip(source, upscale(to_rgb(source.clip, "RGBS", source.matrix), lora=str(job.lora_path(entry)),
                                          preset=s["preset"], device=s["device"]))
    except vs.Error as e:
        raise HypersrError(str(e).removeprefix("hypersr.upscale: ")) from None
    final = Path(entry.output)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(final)
    proc = subprocess.Popen(encode_command(s["ffmpeg"], entry.source, partial, s["ffmpeg_args"]), stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        try:
            write_y4m(out, source.header, proc.stdin, source.total, progress=True, desc=f"{Path(entry.source).name} pass two",
                      position=position)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg stopped reading: its exit status and message say why
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise HypersrError(f"ffmpeg failed encoding {final.name}: {err.splitlines()[-1] if err else 'exit ' + str(proc.returncode)}")
        partial.replace(final)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        partial.unlink(missing_ok=True)
    entry.seconds["pass_two"] = round(time.time() - t0, 2)


def run_batch(inputs: list[str], template: str, job_dir: Path, ffmpeg_args: str, preset: str | None, refine: int,
              device: str | None, ffmpeg: str | None = None) -> Job:
    from ..engine import presets
    from ..ffmpeg_filter.tool import ffmpeg_executable

    files = expand_inputs(inputs)
    settings = {"preset": presets.get(preset).name, "refine": refine, "device": device, "ffmpeg": ffmpeg_executable(ffmpeg),
                "ffmpeg_args": ffmpeg_args}
    job = Job.open(job_dir, files, template, settings)
    failed = []
    with tqdm(total=len(job.entries), unit="file", desc="hypersr batch", file=sys.stderr, position=0, dynamic_ncols=True) as bar:
        bar.update(sum(e.state == "done" for e in job.entries))
        for entry in job.entries:
            if entry.state == "done":
                continue
            try:
                if entry.state != "analysed" or not job.lora_path(entry).exists():
                    pass_one(job, entry, position=1)
                    entry.state = "analysed"
                    job.save()
                pass_two(job, entry, position=1)
                entry.state = "done"
                job.save()
            except HypersrError as e:
                failed.append(f"{entry.source}: {e}")
                tqdm.write(f"hypersr batch: {entry.source}: {e}", file=sys.stderr)
            bar.update()
    if failed:
        raise HypersrError(f"{len(failed)} of {len(job.entries)} files failed (run the same command again to retry them): " + "; ".join(failed))
    return job
