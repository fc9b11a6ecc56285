"""`hypersr batch` on one machine: for each file, pass one (LoRA cached in the job directory), pass two,
and encoding by the user's ffmpeg with the user's encoder arguments; audio, subtitles, chapters and
metadata are copied from the source. Outputs appear under their final names only when complete."""

from __future__ import annotations

import time
from pathlib import Path

from .encode import encode_command, partial_path, run_ffmpeg
from .job import Entry, Job, expand_inputs


def pass_one(job: Job, entry: Entry, position: int) -> None:
    from ..engine.lora import save_lora
    from ..ffmpeg_filter.source import analyse_source, open_input

    s = job.settings
    t0 = time.time()
    lora = analyse_source(open_input(entry.source), s["preset"], s["refine"], s["device"], desc=f"{Path(entry.source).name} pass one",
                          position=position, source_kind=s.get("source_kind"))
    save_lora(lora, job.lora_path(entry))
    entry.frames = lora.made_by["frames"]
    entry.seconds["pass_one"] = round(time.time() - t0, 2)


def pass_two(job: Job, entry: Entry, position: int) -> None:
    from ..engine.backends import backend_from_names
    from ..ffmpeg_filter.sink import write_y4m
    from ..ffmpeg_filter.source import open_input, upscale_source

    s = job.settings
    t0 = time.time()
    source = open_input(entry.source)
    out = upscale_source(source, s["preset"], str(job.lora_path(entry)), backend_from_names(None, s["device"]))
    final = Path(entry.output)
    final.parent.mkdir(parents=True, exist_ok=True)
    desc = f"{Path(entry.source).name} pass two"
    run_ffmpeg(encode_command(s["ffmpeg"], entry.source, partial_path(final), s["ffmpeg_args"]), final,
               feed=lambda stdin: write_y4m(out, source.header, stdin, source.total, progress=True, desc=desc, position=position))
    entry.seconds["pass_two"] = round(time.time() - t0, 2)


def process_file(job: Job, entry: Entry) -> None:
    if entry.state != "analysed" or not job.lora_path(entry).exists():
        pass_one(job, entry, position=1)
        entry.state = "analysed"
        job.save()
    pass_two(job, entry, position=1)


def run_batch(inputs: list[str], template: str, job_dir: Path, settings: dict) -> Job:
    """settings: from job.job_settings()."""
    job = Job.open(job_dir, expand_inputs(inputs), template, settings)
    return job.run(lambda entry: process_file(job, entry), "hypersr batch")
