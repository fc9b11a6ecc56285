"""VapourSynth functions for .vpy scripts:

    from hypersr import vsplugin as hsr
    rgb = core.resize.Bicubic(src, format=vs.RGBS, matrix_in_s="709")
    out = hsr.upscale(rgb)                       # x2 with the default preset

torch is imported only when a function is called, so importing this module costs nothing.
"""

from __future__ import annotations

import vapoursynth as vs

from ..engine.errors import HypersrError

core = vs.core

PAST_END = "HypersrPastEnd"  # set by streaming sources on requests beyond the last frame


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


def _window_frames(frames: list[vs.VideoFrame], k: int) -> list[vs.VideoFrame]:
    """Stop the window at scene changes and at the stream's end: the nearest frame repeats instead."""
    win = list(frames)
    for j in range(k - 1, -1, -1):  # backwards from the centre
        inner = win[j + 1]
        if inner.props.get("_SceneChangePrev", 0) or win[j].props.get(PAST_END, 0):
            win[j] = inner
    for j in range(k + 1, 2 * k + 1):
        inner = win[j - 1]
        if inner.props.get("_SceneChangeNext", 0) or win[j].props.get(PAST_END, 0):
            win[j] = inner
    return win


def upscale(
    clip: vs.VideoNode,
    lora=None,
    preset: str | None = None,
    device_index: int | None = None,
    num_streams: int = 1,
    trt: bool = False,
    trt_cache_dir: str | None = None,
    tile: int | None = None,
    tile_pad: int = 16,
    device: str | None = None,
) -> vs.VideoNode:
    """Upscale an RGBS / RGBH clip by the preset's scale; frame n sees frames n-k..n+k.

    lora: a LoRA file path (from `hypersr analyse`) or a loaded LoRA. device_index: the CUDA GPU to use;
    by default the first GPU when there is one, else the CPU (device="cpu" forces the CPU). num_streams:
    frames in flight at once. tile / tile_pad: process frames in tiles of tile x tile LR pixels that
    overlap by tile_pad (for frames that do not fit in GPU memory); the output is the same. Frame
    properties of each source frame are kept.
    """
    import numpy as np

    from ..engine.runtime import Upscaler

    if not isinstance(clip, vs.VideoNode):
        raise vs.Error("hypersr.upscale: clip must be a VideoNode")
    if clip.format is None or clip.width == 0 or clip.height == 0:
        raise vs.Error("hypersr.upscale: variable-format or variable-size clips are not supported; resize to one format first")
    if clip.format.id not in (vs.RGBS, vs.RGBH):
        raise vs.Error(
            f"hypersr.upscale: clip is {clip.format.name}, expected RGBS or RGBH; convert first, e.g. "
            'core.resize.Bicubic(clip, format=vs.RGBS, matrix_in_s="709")'
        )
    if trt:
        try:
            import torch_tensorrt  # noqa: F401
        except ImportError:
            raise vs.Error("hypersr.upscale: trt=True needs Torch-TensorRT: pip install 'hypersr[trt]' (or use trt=False)") from None
        raise vs.Error("hypersr.upscale: the TensorRT backend is not part of this release yet; use trt=False")
    if device_index is not None:
        device = f"cuda:{device_index}"
    try:
        engine = Upscaler(preset, lora, device, num_streams, tile, tile_pad)
        engine.check_size(clip.width, clip.height)
    except HypersrError as e:
        raise vs.Error(f"hypersr.upscale: {e}") from None

    k, s = engine.window // 2, engine.scale
    out_blank = core.std.BlankClip(clip, width=clip.width * s, height=clip.height * s, keep=True)
    sources = window_clips(clip, k)

    def infer(n: int, f: list[vs.VideoFrame]) -> vs.VideoFrame:
        *window, blank = f
        centre = window[k]
        fout = blank.copy()
        fout.props.update(centre.props)
        if centre.props.get(PAST_END, 0):
            return fout  # nobody will use it; do not spend the model on it
        win = _window_frames(window, k)
        frames = np.empty((len(win), 3, clip.height, clip.width), np.float32)  # one copy of the window
        for t, fr in enumerate(win):
            for p in range(3):
                np.copyto(frames[t, p], np.asarray(fr[p]), casting="unsafe")  # RGBH: half -> float
        result = engine(frames)
        for p in range(3):
            np.copyto(np.asarray(fout[p]), result[p], casting="unsafe")
        return fout

    return core.std.ModifyFrame(out_blank, sources + [out_blank], infer)
