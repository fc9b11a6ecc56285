"""The sink side of the y4m pipe and of batch: an upscaled clip written as a y4m stream (a file, stdout or
an encoder's stdin)."""

from __future__ import annotations

import sys

import numpy as np
import vapoursynth as vs

from ..engine.errors import HypersrError
from ..engine.runtime import release_free_memory
from ..vsplugin.passes import PAST_END, TRIM_EVERY, error_message
from .y4m import MAX_OUTPUT_HEADER, Y4MHeader, Y4MWriter

core = vs.core


def write_y4m(clip: vs.VideoNode, header: Y4MHeader, out, total: int | None = None, progress: bool = True, desc: str = "hypersr",
              position: int | None = None) -> int:
    """Write the clip's frames as y4m until the end (or the PAST_END marker); returns the frame count. A frame
    that fails to render is one HypersrError."""
    from tqdm import tqdm

    header = header.resized(clip.width, clip.height)
    dropped = header.fitted()[2]
    if dropped:
        print(f"hypersr: note: the output's y4m header drops the tag{'s' if len(dropped) > 1 else ''} {' '.join('X' + x for x in dropped)}: "
              f"FFmpeg reads a header of at most {MAX_OUTPUT_HEADER} bytes", file=sys.stderr)
    writer = Y4MWriter(out, header)
    written = 0
    limit = total if total is not None else clip.num_frames
    with tqdm(total=total, unit="frame", desc=desc, file=sys.stderr, disable=not progress, dynamic_ncols=True, position=position,
              leave=position is None) as bar:
        try:
            for f in clip.frames(prefetch=max(2, core.num_threads), close=True):
                if written >= limit or f.props.get(PAST_END, 0):
                    break
                writer.write([np.asarray(f[p]) for p in range(f.format.num_planes)])
                written += 1
                bar.update()
                if written % TRIM_EVERY == 0:
                    release_free_memory()
        except vs.Error as e:
            raise HypersrError(error_message(e, "processing failed")) from None
    out.flush()
    return written


