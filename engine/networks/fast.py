"""The real-time family of base networks (`fast-x2`, `fast-x4`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..lora import LoRAConv2d
from .blocks import ResBlock, SharedFrameConv, conv3x3
from .registry import register


@register("fast")
class FastVSR(nn.Module):
    """The real-time family (`fast-x2`, `fast-x4`).

    fusion="early": the window's frames are stacked on the channel axis and mixed by the first conv.
    fusion="perframe": a shared conv extracts features from each frame, a learned 1x1 conv fuses them.
    Then a few residual blocks run at LR resolution, a pixel shuffle makes the HR image, and all of it is
    a residual over the bicubic-interpolated centre frame (so an untrained net already gives bicubic).
    """

    def __init__(self, scale: int = 2, window: int = 3, channels: int = 32, blocks: int = 3, fusion: str = "early"):
        super().__init__()
        if window % 2 != 1:
            raise ValueError("window must be odd (2k+1 frames)")
        if fusion not in ("early", "perframe"):
            raise ValueError(f"unknown fusion {fusion!r}")
        self.scale, self.window, self.fusion = scale, window, fusion
        if fusion == "early":
            self.head = conv3x3(3 * window, channels)
        else:
            self.frame_features = SharedFrameConv(3, channels, window)
            self.fuse = LoRAConv2d(channels * window, channels, 1)
        self.body = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.tail = conv3x3(channels, 3 * scale * scale)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = window.shape
        centre = window[:, t // 2]
        if self.fusion == "early":
            x = F.relu(self.head(window.reshape(n, t * c, h, w)))
        else:
            feats = self.frame_features(window.reshape(n, t * c, h, w))
            x = F.relu(self.fuse(F.relu(feats)))
        x = self.body(x) + x
        residual = F.pixel_shuffle(self.tail(x), self.scale)
        base = F.interpolate(centre, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return base + residual
