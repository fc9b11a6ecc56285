"""The two passes over VapourSynth clips, written once for every host: the .vpy functions (vsplugin), the
y4m pipe and batch (local and Ray) all call these. Errors are HypersrError; only the .vpy functions turn
them into vapoursynth.Error.

    lora = analyse_clip(rgb, preset)                       # pass one: every frame once -> the clip's LoRA
    out = upscale_clip(rgb, upscaler_for(rgb, preset, lora))  # pass two: an RGB clip, scale x larger
"""

from __future__ import annotations

import sys

import numpy as np
import vapoursynth as vs

from ..engine.errors import HypersrError

core = vs.core

PAST_END = "HypersrPastEnd"  # set by streaming sources on requests beyond the last frame
TRIM_EVERY = 32  # frames between returns of freed memory to the system (engine.runtime.release_free_memory)


def error_message(e: vs.Error, context: str = "") -> str:
    """A vapoursynth.Error as one line. When a Python frame callback raised, VapourSynth puts the whole
    traceback in the message: keep its last line. hypersr's own errors give their text alone; any other
    error is prefixed with `context` (e.g. "processing failed")."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown VapourSynth error"
    kind, sep, text = last.partition(": ")
    if sep and kind.startswith("hypersr.") and kind.endswith("Error"):
        return text
    return f"{context}: {last}" if context else last


def check_rgb(clip) -> None:
    if not isinstance(clip, vs.VideoNode):
        raise HypersrError("clip must be a VideoNode")
    if clip.format is None or clip.width == 0 or clip.height == 0:
        raise HypersrError("variable-format or variable-size clips are not supported; resize to one format first")
    if clip.format.id not in (vs.RGBS, vs.RGBH):
        raise HypersrError(f'clip is {clip.format.name}, expected RGBS or RGBH; convert first, e.g. '
                           'core.resize.Bicubic(clip, format=vs.RGBS, matrix_in_s="709")')


def frame_array(f: vs.VideoFrame) -> np.ndarray:
    """An RGB frame's planes as one [3, H, W] array of its own (float32 for RGBS, float16 for RGBH)."""
    return np.stack([np.asarray(f[p]) for p in range(3)])


def read_frames(clip: vs.VideoNode, total: int | None = None, progress: bool = True, desc: str = "hypersr analyse",
                position: int | None = None):
    """The clip's frames as [3, H, W] float32 arrays, in order, up to `total` or a PAST_END marker."""
    from tqdm import tqdm

    from ..engine.runtime import release_free_memory

    limit = clip.num_frames if total is None else total
    with tqdm(total=total, unit="frame", desc=desc, file=sys.stderr, disable=not progress, dynamic_ncols=True,
              position=position, leave=position is None) as bar:
        try:
            for n, f in enumerate(clip.frames(prefetch=max(2, core.num_threads), close=True)):
                if n >= limit or f.props.get(PAST_END, 0):
                    break
                yield frame_array(f).astype(np.float32, copy=False)
                bar.update()
                if n % TRIM_EVERY == TRIM_EVERY - 1:
                    release_free_memory()
        except vs.Error as e:
            raise HypersrError(error_message(e, "processing failed")) from None


def analyse_clip(rgb: vs.VideoNode, preset=None, refine: int = 0, device: str | None = None, total: int | None = None,
                 progress: bool = True, desc: str = "hypersr analyse", position: int | None = None, source_kind: str | None = None):
    """Pass one over an RGBS / RGBH clip (or its first `total` frames): the clip's LoRA. source_kind: what
    the source went through, for refine on a real-source preset (engine/degradation.SOURCE_KINDS)."""
    from ..engine.analyse import analyse_frames

    check_rgb(rgb)
    return analyse_frames(read_frames(rgb, total, progress, desc, position), preset, refine, device, (rgb.width, rgb.height),
                          source_kind=source_kind)


def analyse_segment(rgb: vs.VideoNode, preset, device: str | None, first: int, last: int):
    """Pass one over frames first..last-1 only: a mergeable Segment (engine/analyse.py), for Ray's map."""
    from ..engine.analyse import Analyser

    check_rgb(rgb)
    analyser = Analyser(preset, device=device, first_index=first)
    try:
        for i in range(first, last):
            analyser.update(frame_array(rgb.get_frame(i)).astype(np.float32, copy=False))
    except vs.Error as e:
        raise HypersrError(error_message(e, "processing failed")) from None
    return analyser.segment()


def upscaler_for(rgb: vs.VideoNode, preset=None, lora=None, backend=None, tile: int | None = None, tile_pad: int | None = None):
    """Pass two's engine (engine/runtime.py: Upscaler) for this clip, its frame size checked."""
    from ..engine.runtime import Upscaler

    check_rgb(rgb)
    engine = Upscaler(preset, lora, backend=backend, tile=tile, tile_pad=tile_pad, frame_size=(rgb.width, rgb.height))
    engine.check_size(rgb.width, rgb.height)
    return engine


def window_clips(clip: vs.VideoNode, k: int = 1) -> list[vs.VideoNode]:
    """Clips shifted by -k..k frames, clip ends repeating: frame n of clip j is frame n+j-k.

    Also the input for an exported ONNX model in vs-mlrt: core.ort.Model(window_clips(rgb), "model.onnx")."""
    n = clip.num_frames
    shifted = []
    for off in range(-k, k + 1):
        d = min(abs(off), n - 1)
        if off < 0 and d:
            shifted.append(clip[0] * d + clip[: n - d])
        elif off > 0 and d:
            shifted.append(clip[d:] + clip[-1] * d)
        else:
            shifted.append(clip)
    return shifted


def upscale_clip(rgb: vs.VideoNode, engine) -> vs.VideoNode:
    """Pass two: the RGB clip upscaled by `engine` (upscaler_for), in its format; frame n sees frames
    n-k..n+k, stopping at the clip's ends, at scene changes (_SceneChangePrev / _SceneChangeNext) and at a
    stream's end (PAST_END). Each source frame's properties are kept."""
    from ..engine.window import window_numbers

    k, s, count = engine.window // 2, engine.scale, rgb.num_frames
    out_blank = core.std.BlankClip(rgb, width=rgb.width * s, height=rgb.height * s, keep=True)
    sources = window_clips(rgb, k)

    def infer(n: int, f: list[vs.VideoFrame]) -> vs.VideoFrame:
        *window, blank = f
        centre = window[k]
        fout = blank.copy()
        fout.props.update(centre.props)
        if centre.props.get(PAST_END, 0):
            return fout  # nobody will use it; do not spend the model on it
        frames = {min(max(n + j - k, 0), count - 1): fr for j, fr in enumerate(window)}
        numbers = window_numbers(
            n, k, lambda m: m < count and not frames[m].props.get(PAST_END, 0),
            lambda m: bool(frames[m].props.get("_SceneChangeNext", 0) or frames[m + 1].props.get("_SceneChangePrev", 0)))
        result = engine.upscale(numbers, lambda m: frame_array(frames[m]))
        for p in range(3):
            np.copyto(np.asarray(fout[p]), result[p], casting="unsafe")
        return fout

    return core.std.ModifyFrame(out_blank, sources + [out_blank], infer)
