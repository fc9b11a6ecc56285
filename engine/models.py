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


class SharedFrameConv(LoRAConv2d):
    """One conv applied to every frame of a window, run as a single grouped conv over the frames stacked
    on the channel axis: its output is already the fusion's input layout, with no copies between (on
    CPU the copies cost a quarter of the time). Input [N, frames*in, H, W] -> [N, frames*out, H, W]."""

    def __init__(self, cin: int, cout: int, frames: int):
        super().__init__(cin, cout, 3, padding=1)
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # the layout the runtime chose
        k = self.frames
        return F.conv2d(x, self.effective_weight().repeat(k, 1, 1, 1), self.bias.repeat(k), padding=self.padding, groups=k)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


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


def build_model(arch: dict) -> nn.Module:
    """Build a base network from a model card's `architecture` entry: {"type": "fast", ...kwargs}."""
    from .vsrt import VSRT  # it builds on this module's layers

    arch = dict(arch)
    kind = arch.pop("type")
    return {"fast": FastVSR, "vsrt": VSRT}[kind](**arch)


def macs_per_lr_pixel(model: nn.Module, size: int = 32) -> int:
    """Multiply-accumulates per LR input pixel of the convolutions and matrix products (attention),
    counted by torch's FlopCounterMode on a real forward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, model.window, 3, size, size))
    return round(counter.get_total_flops() / 2 / (size * size))
