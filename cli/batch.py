"""`hypersr batch`: both passes and encoding for many files, on this machine or a Ray cluster."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .options import at_least


def cmd_batch(args) -> None:
    from ..batch.job import job_settings

    t0 = time.time()
    settings = job_settings(args.preset, args.refine, args.device, args.ffmpeg, args.ffmpeg_args, args.source_kind)
    if args.ray:
        from ..batch.cluster import run_batch_ray

        job = run_batch_ray(args.ray, args.inputs, args.output, Path(args.job_dir), settings)
    else:
        from ..batch.local import run_batch

        job = run_batch(args.inputs, args.output, Path(args.job_dir), settings)
    frames = sum(e.frames or 0 for e in job.entries)
    print(f"hypersr batch: {len(job.entries)} files done ({frames} frames analysed this job) in {time.time() - t0:.0f} s; "
          f"job record in {job.path}", file=sys.stderr)



def add_commands(sub) -> None:
    ba = sub.add_parser("batch", help="both passes and encoding for many files; resumable (run the same command again)")
    ba.add_argument("inputs", nargs="+", help="video files, folders (their video files) or glob patterns")
    ba.add_argument("-o", "--output", default="{dir}/{stem}.hypersr.mkv",
                    help="output template with {stem}, {name}, {dir} of each input (default %(default)s)")
    ba.add_argument("--job-dir", default="hypersr-job", help="job record and cached LoRAs (default %(default)s)")
    ba.add_argument("--ffmpeg-args", default="-c:v libx264 -crf 16 -preset slow",
                    help="encoder arguments for ffmpeg, one string (default %(default)r); audio and subtitles are copied")
    ba.add_argument("--ffmpeg", help="the ffmpeg to encode with (default: ffmpeg on PATH, else the one of the imageio-ffmpeg package)")
    ba.add_argument("--preset", default=None, help="default: fast-x2")
    ba.add_argument("--refine", type=at_least(0), default=0, metavar="N", help="refine steps in pass one (default 0)")
    ba.add_argument("--source-kind", help="what the sources went through, for --refine on real-x2 (see `hypersr analyse -h`)")
    ba.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ba.add_argument("--ray", metavar="ADDRESS", help="run the passes on a Ray cluster (e.g. 10.0.0.1:6379); needs hypersr[ray]")
    ba.set_defaults(func=cmd_batch)

