"""The BI degradation: antialiased bicubic downscaling, the clean LR of the SR literature. One definition
for the hypernet's evidence (the base's error one scale down), refine's self-supervised pairs and
training's clean LR (training/degradation.py quantises it to 8 bits)."""

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
