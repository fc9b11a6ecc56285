"""Building blocks shared by the base networks. Every convolution is a LoRAConv2d, so a clip's LoRA can
adapt any layer built from these."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..lora import LoRAConv2d

# Immerkaer's noise kernel: the second differences cancel smooth shading; its gain on white noise is 6
NOISE_KERNEL = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]).view(1, 1, 3, 3)
LUMA = (0.299, 0.587, 0.114)
SIGMA_GRID = (60, 128)  # 7,680 responses: their median is TopK's k = 3,840, TensorRT's largest


def noise_sigma(frames: torch.Tensor) -> torch.Tensor:
    """Frames [B, 3, H, W] (0..1) -> each one's noise sigma [B], from the median absolute response of Immerkaer's
    kernel on its luma (the median ignores edges and texture)."""
    y = (frames * frames.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    response = F.conv2d(y, NOISE_KERNEL.to(y)).abs()
    # The lower median, as the largest of the smaller half (ONNX has no median), of the responses on a fixed
    # grid (nearest): its k is a constant that TensorRT's TopK takes (k <= 3840) at every frame size.
    grid = F.interpolate(response, size=SIGMA_GRID, mode="nearest").flatten(1)
    median = grid.topk(grid.shape[1] // 2, dim=1, largest=False, sorted=False).values.amax(1)
    return median / 0.6745 / 6.0


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
