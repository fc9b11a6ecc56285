"""The BI degradation: antialiased bicubic downscaling, the clean LR of the SR literature. One definition
for the hypernet's evidence (the base's error one scale down, unquantised), and, rounded to 8 bits as a
real LR frame is, for refine's self-supervised pairs, pass one's safety check and training's clean LR."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bi_downscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """[..., 3, H, W] -> [..., 3, H // scale, W // scale], not quantised (so that training and analysis see
    the same thing at any bit depth)."""
    shape = x.shape
    flat = x.reshape(-1, *shape[-3:])
    out = F.interpolate(flat, size=(shape[-2] // scale, shape[-1] // scale), mode="bicubic", antialias=True, align_corners=False)
    return out.reshape(*shape[:-2], *out.shape[-2:])


def quantise_8bit(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def bi_downscale_8bit(x: torch.Tensor, scale: int) -> torch.Tensor:
    """BI as a clip's LR frames have it: downscaled, then rounded to 8 bits. Inputs without that rounding
    teach (and judge) a network without the quantisation noise every real LR frame has (README, Never worse)."""
    return quantise_8bit(bi_downscale(x, scale))
