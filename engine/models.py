"""Base super-resolution networks.

Interface shared by every base model: `forward(window)` takes a window of 2k+1 consecutive LR frames,
shape [N, 2k+1, 3, H, W], RGB float in [0, 1], and returns the centre frame upscaled, [N, 3, sH, sW].
Every convolution is a LoRAConv2d, so a clip's LoRA can adapt any layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .lora import LoRAConv2d


def conv3x3(cin: int, cout: int) -> LoRAConv2d:
    return LoRAConv2d(cin, cout, 3, padding=1)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class FastVSR(nn.Module):
    """The real-time family (`fast-x2`, `fast-x4`).

    Early fusion: the window's frames are stacked on the channel axis and mixed by the first conv, a few
    residual blocks run at LR resolution, a pixel shuffle makes the HR image, and all of it is a residual
    over the bicubic-interpolated centre frame (so an untrained net already gives bicubic).
    """

    def __init__(self, scale: int = 2, window: int = 3, channels: int = 32, blocks: int = 3):
        super().__init__()
        if window % 2 != 1:
            raise ValueError("window must be odd (2k+1 frames)")
        self.scale, self.window = scale, window
        self.head = conv3x3(3 * window, channels)
        self.body = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.tail = conv3x3(channels, 3 * scale * scale)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = window.shape
        centre = window[:, t // 2]
        x = F.relu(self.head(window.reshape(n, t * c, h, w)))
        x = self.body(x) + x
        residual = F.pixel_shuffle(self.tail(x), self.scale)
        base = F.interpolate(centre, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return base + residual


ARCHITECTURES = {"fast": FastVSR}


def build_model(arch: dict) -> nn.Module:
    """Build a base network from a model card's `architecture` entry: {"type": "fast", ...kwargs}."""
    arch = dict(arch)
    kind = arch.pop("type")
    return ARCHITECTURES[kind](**arch)


def macs_per_lr_pixel(model: nn.Module) -> int:
    """Multiply-accumulates per LR input pixel of all convolutions (stride 1, same padding)."""
    return sum(
        m.out_channels * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    )
