"""Quality measurement on the validation clips: bicubic, Lanczos and presets, Y-PSNR / SSIM per clip.

    hypersr bench quality [--preset fast-x2 ...] [--update-card]

LR input is the BI degradation of each HR clip (engine.data.degrade_bi). Bicubic (Catmull-Rom, b=0 c=0.5)
and Lanczos (3 taps) are VapourSynth's resizers; presets run through the same VapourSynth function users
call (hypersr.vsplugin.upscale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import data
from .metrics import y_psnr, y_ssim


def baselines():
    import vapoursynth as vs

    core = vs.core
    return {
        "bicubic": lambda c, s: core.resize.Bicubic(c, c.width * s, c.height * s, filter_param_a=0, filter_param_b=0.5),
        "lanczos": lambda c, s: core.resize.Lanczos(c, c.width * s, c.height * s, filter_param_a=3),
    }


def upscale_methods(lr: np.ndarray, scale: int, presets: list[str], device: str | None = None) -> dict[str, np.ndarray]:
    """Upscale LR frames [T, 3, h, w] by every baseline and preset; values quantised to 8 bits."""
    from ..vsplugin import upscale
    from ..vsplugin.io import clip_from_array, clip_to_array

    clip = clip_from_array(lr)
    outs = {name: fn(clip, scale) for name, fn in baselines().items()}
    for p in presets:
        outs[p] = upscale(clip, preset=p, device=device)
    return {name: np.round(np.clip(clip_to_array(c), 0, 1) * 255) / 255 for name, c in outs.items()}


def evaluate(clips: dict[str, torch.Tensor], scale: int, presets: list[str], device: str | None = None) -> dict:
    """{clip: {method: {"y_psnr", "ssim", "per_frame_psnr"}}} plus "mean" over clips."""
    results: dict = {}
    for name, hr in clips.items():
        lr = data.degrade_bi(hr, scale).numpy()
        results[name] = {}
        for method, sr in upscale_methods(lr, scale, presets, device).items():
            sr_t = torch.from_numpy(sr)
            psnrs = [y_psnr(a, b) for a, b in zip(sr_t, hr)]
            ssims = [y_ssim(a, b) for a, b in zip(sr_t, hr)]
            results[name][method] = {"y_psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "per_frame_psnr": psnrs}
    methods = next(iter(results.values())).keys()
    results["mean"] = {m: {k: float(np.mean([results[c][m][k] for c in clips])) for k in ("y_psnr", "ssim")} for m in methods}
    return results


def table(results: dict) -> str:
    methods = list(results["mean"])
    lines = ["| clip | " + " | ".join(f"{m} Y-PSNR / SSIM" for m in methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for clip, row in results.items():
        cells = [f"{row[m]['y_psnr']:.2f} / {row[m]['ssim']:.4f}" for m in methods]
        lines.append(f"| {clip} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def validation_clips(data_dir: Path, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    data.fetch(data_dir)
    return {n: data.validation_clip(data_dir, n) for n in (names or data.VALIDATION_CLIPS)}
