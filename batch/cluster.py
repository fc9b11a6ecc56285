"""`hypersr batch --ray ADDRESS`: the two passes of each file spread over a Ray cluster.

- Pass one is a map-reduce. Workers analyse consecutive segments of the file; their summaries are
  mergeable (engine.hypernet.ClipSummary), so merging them in order gives the LoRA one machine would
  make, to floating-point rounding.
- The workers are actors that hold the model (a GPU each where the node has one). In pass two each upscales
  a segment of the output clip; windows at a segment's edges read the neighbouring source frames, so
  the joined frames equal the single-machine frames exactly.
- Joining: segments are written losslessly (FFV1), then the driver's ffmpeg decodes them in order
  (concat demuxer) and encodes once with the user's arguments. Lossless segments rather than encoded
  ones cut on keyframes: the final encode sees one continuous stream (no forced keyframes or rate-control
  restarts at segment edges), and segments can be any length.
Every node must see the input files, the job directory and the installed hypersr at the same paths
(shared storage); Ray retries a segment whose worker died.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..engine.errors import HypersrError
from .encode import encode_command, partial_path, run_ffmpeg, segment_command
from .job import Entry, Job, expand_inputs

SEGMENT_FRAMES = 300  # frames per pass-two segment (pass one uses one segment per worker)


def merge_segments(segments, preset: str, device: str | None):
    """Reduce: the segments' summaries in order -> the clip's LoRA."""
    from ..engine.analyse import Analyser

    analyser = Analyser(preset, device=device)
    for seg in sorted(segments, key=lambda s: s.first):
        analyser.absorb(seg)
    return analyser.lora()


class Worker:
    """A Ray actor holding the model: analyses segments (pass one's map) and upscales segments of files
    into lossless FFV1 files (pass two)."""

    def __init__(self, preset: str, device: str | None):
        import torch

        self.preset = preset
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    def pid(self) -> int:
        return os.getpid()

    def analyse_segment(self, path: str, first: int, last: int):
        """Map: pass one over frames first..last-1 of a file."""
        from ..ffmpeg_filter.source import open_input
        from ..vsplugin.passes import analyse_segment

        return analyse_segment(open_input(path).rgb(), self.preset, self.device, first, last)

    def upscale_segment(self, path: str, lora, first: int, last: int, target: str, ffmpeg: str) -> str:
        from ..engine.backends import backend_from_names
        from ..ffmpeg_filter.sink import write_y4m
        from ..ffmpeg_filter.source import open_input, upscale_source

        source = open_input(path)
        out = upscale_source(source, self.preset, lora, backend_from_names(None, self.device))[first:last]
        run_ffmpeg(segment_command(ffmpeg, partial_path(Path(target))), Path(target),
                   feed=lambda stdin: write_y4m(out, source.header, stdin, last - first, progress=False))
        return target


def connect(address: str):
    try:
        import ray
    except ImportError:
        raise HypersrError("--ray needs Ray: pip install 'hypersr[ray]'") from None
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise HypersrError(f"cannot join the Ray cluster at {address} ({str(e).splitlines()[0]}); start it with `ray start --head`") from None
    return ray


def spans(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def process_file(ray, job: Job, entry: Entry, workers: list) -> None:
    from ..engine.lora import load_lora, save_lora
    from ..ffmpeg_filter.source import open_input

    s = job.settings
    n = open_input(entry.source).clip.num_frames
    if entry.state != "analysed" or not job.lora_path(entry).exists():
        t0 = time.time()
        segments = ray.get([w.analyse_segment.remote(entry.source, a, b) for w, (a, b) in zip(workers, spans(n, len(workers)))])
        lora = merge_segments(segments, s["preset"], "cpu")
        save_lora(lora, job.lora_path(entry))
        entry.frames, entry.seconds["pass_one"] = n, round(time.time() - t0, 2)
        entry.state = "analysed"
        job.save()
    lora = load_lora(job.lora_path(entry))
    t0 = time.time()
    folder = job.directory / "segments" / entry.fingerprint
    folder.mkdir(parents=True, exist_ok=True)
    parts = spans(n, max(len(workers), -(-n // SEGMENT_FRAMES)))
    targets = [folder / f"{i:05d}.mkv" for i in range(len(parts))]
    pending = [(i, a, b) for i, (a, b) in enumerate(parts) if not targets[i].exists()]  # finished segments survive a restart
    refs = [workers[k % len(workers)].upscale_segment.remote(entry.source, lora, a, b, str(targets[i]), s["ffmpeg"])
            for k, (i, a, b) in enumerate(pending)]
    for _ in tqdm(ray.get(refs) if refs else [], desc=f"{Path(entry.source).name} pass two", unit="segment", file=sys.stderr, leave=False):
        pass
    concat = folder / "segments.txt"
    concat.write_text("".join(f"file '{t}'\n" for t in targets))
    final = Path(entry.output)
    final.parent.mkdir(parents=True, exist_ok=True)
    run_ffmpeg(encode_command(s["ffmpeg"], entry.source, partial_path(final), s["ffmpeg_args"], ["-f", "concat", "-safe", "0", "-i", str(concat)]),
               final)
    for t in targets:
        t.unlink()
    entry.seconds["pass_two"] = round(time.time() - t0, 2)


def run_batch_ray(address: str, inputs: list[str], template: str, job_dir: Path, settings: dict) -> Job:
    """settings: from job.job_settings()."""
    if settings["refine"]:
        raise HypersrError("--refine is not available with --ray yet: test-time training needs the whole clip in one place")
    job = Job.open(job_dir, expand_inputs(inputs), template, settings)
    ray = connect(address)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = max(1, gpus or int(resources.get("CPU", 1)))
        actor = ray.remote(num_cpus=0 if gpus else 1, num_gpus=1 if gpus else 0, max_restarts=3, max_task_retries=3)(Worker)
        workers = [actor.remote(settings["preset"], settings["device"]) for _ in range(count)]
        return job.run(lambda entry: process_file(ray, job, entry, workers), "hypersr batch (ray)", (HypersrError, ray.exceptions.RayError))
    finally:
        ray.shutdown()
