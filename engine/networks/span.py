"""SPAN, the pretrained backbone (`quality-x2`, `quality-x4`, `real-x2`): Swift Parameter-free Attention
Network (Wan et al., CVPR-W 2024), in its deployed form (the reparameterised 3x3 convs), with a frame window.

    x' = (x - mean) * 255                        the DIV2K mean, as the official weights expect
    f  = conv_1(x')                              3x3, 3 -> C
    b_i = SPAB(b_{i-1}), b_0 = f, i = 1..6       each: c1, SiLU, c2, SiLU, c3; (c3 + input) * (sigmoid(c3) - 0.5)
    out = upsampler(conv_cat([f, conv_2(b_6), b_1, a_6]))   a_6: block 6's first SiLU; 1x1 fusion;
                                                             3x3 conv to 3*s*s, pixel shuffle

The window: conv_1 runs on every frame of the window (shared weights) and `fuse` mixes the frames' features
into f. fusion="linear": a 1x1 (or, fuse_kernel=3, 3x3) conv over all frames' features, started as the
identity on the centre frame. fusion="gated": the centre frame's features plus each neighbour's difference
from them, weighted per pixel and channel by a gate that reads both (GatedFuse): a linear mix cannot tell
a still pixel, where a neighbour is a second look at the same point, from a moving one. Either way an
imported network *is* the single-frame SPAN at step 0 and training learns what the neighbours add.
fusion="average" (NoiseAverage) starts elsewhere: a noise-adaptive temporal average of the input frames
before conv_1, which on noisy sources gains without training (README, "The frame window on real sources").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..lora import LoRAConv2d
from .blocks import SharedFrameConv, conv3x3, noise_sigma
from .registry import register

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class SPAB(nn.Module):
    """Swift parameter-free attention block (deployed form)."""

    def __init__(self, channels: int):
        super().__init__()
        self.c1_r, self.c2_r, self.c3_r = conv3x3(channels, channels), conv3x3(channels, channels), conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a1 = F.silu(self.c1_r(x))
        out3 = self.c3_r(F.silu(self.c2_r(a1)))
        return (out3 + x) * (torch.sigmoid(out3) - 0.5), a1


class GatedFuse(nn.Module):
    """f = f_c + alpha * sum_j gate(f_c, f_j - f_c) * (f_j - f_c) over the window's neighbours j, the gate a
    sigmoid of two 3x3 convs (shared by the neighbours) and alpha a per-channel scale that starts at zero, so
    that the fusion starts as the centre frame alone. Input [N, T*C, H, W] (SharedFrameConv's layout)."""

    def __init__(self, channels: int, window: int, hidden: int = 16):
        super().__init__()
        self.channels, self.window = channels, window
        self.gate_1 = LoRAConv2d(2 * channels, hidden, 3, padding=1)
        self.gate_2 = LoRAConv2d(hidden, channels, 3, padding=1)
        self.alpha = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def gates(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the centre's features [N, C, H, W], each neighbour's difference from them and its gate's logit, [N, T-1, C, H, W])."""
        n, _, h, w = f.shape
        c, t, k = self.channels, self.window, self.window // 2
        frames = f.reshape(n, t, c, h, w)
        centre = frames[:, k]
        diff = torch.cat([frames[:, :k], frames[:, k + 1 :]], 1) - centre[:, None]
        pairs = torch.cat([centre[:, None].expand_as(diff), diff], 2).reshape(n * (t - 1), 2 * c, h, w)
        return centre, diff, self.gate_2(F.silu(self.gate_1(pairs))).reshape(n, t - 1, c, h, w)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        centre, diff, logit = self.gates(f)
        return centre + self.alpha * (torch.sigmoid(logit) * diff).sum(1)

    def still_loss(self, f: torch.Tensor, hr: torch.Tensor, scale: int) -> torch.Tensor:
        """Training's supervision of the gate, which the strength alone cannot start (the gate's gradient is
        zero while the strength is): open where a neighbour shows the centre's HR picture, shut elsewhere."""
        logit = self.gates(f)[2]
        return F.binary_cross_entropy_with_logits(logit, still_labels(hr, scale).expand_as(logit))


class NoiseAverage(nn.Module):
    """The centre frame with each pixel averaged with the neighbours that look like it, before conv_1:
    x = x_c + strength * sum_j m_j (x_j - x_c) / (1 + sum_j m_j), m_j = sigmoid((k sigma - d_j) / (k sigma / 4)),
    d_j the 5x5 mean over the channels of |x_j - x_c| and sigma the centre frame's noise sigma (each window's
    own, so tiles may differ). It starts as the plain noise-adaptive average (k = 2.5, strength 1 per colour
    channel); training moves k and the strength. On the three input channels it costs little (on conv_1's 48
    output channels, the same arithmetic made real-x2 40 % slower at 540p)."""

    def __init__(self, k: float = 2.5):
        super().__init__()
        self.log_k = nn.Parameter(torch.tensor(float(k)).log())
        self.strength = nn.Parameter(torch.ones(1, 3, 1, 1))

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        """window [N, T, 3, H, W] -> the averaged centre frame [N, 3, H, W]."""
        n, t = window.shape[:2]
        centre = window[:, t // 2]
        threshold = (self.log_k.exp() * noise_sigma(centre)).view(n, 1, 1, 1)
        total, count = torch.zeros_like(centre), torch.ones_like(centre[:, :1])
        for j in range(t):
            if j == t // 2:
                continue
            diff = window[:, j] - centre
            d = F.avg_pool2d(diff.abs().mean(1, keepdim=True), 5, 1, 2, count_include_pad=False)
            m = torch.sigmoid((threshold - d) / (threshold / 4 + 1e-4))
            total = total + m * diff
            count = count + m
        return centre + self.strength * total / count


def still_labels(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """For an HR window [N, T, 3, sH, sW]: 1 where a neighbour shows the centre's picture (mean absolute
    difference over the LR pixel under 1/255: a still pixel), else 0, per neighbour [N, T-1, 1, H, W]."""
    k = hr.shape[1] // 2
    diff = (torch.cat([hr[:, :k], hr[:, k + 1 :]], 1) - hr[:, k : k + 1]).abs().mean(2)
    return (F.avg_pool2d(diff, scale) < 1 / 255).float()[:, :, None]


@register("span")
class SPAN(nn.Module):
    def __init__(self, scale: int = 2, window: int = 1, channels: int = 48, blocks: int = 6, fuse_kernel: int = 1,
                 fusion: str = "linear"):
        super().__init__()
        if window % 2 != 1:
            raise ValueError("window must be odd (2k+1 frames)")
        if blocks < 1:
            raise ValueError("blocks must be at least 1")
        if fuse_kernel not in (1, 3):
            raise ValueError("fuse_kernel must be 1 or 3")
        if fusion not in ("linear", "gated", "average"):
            raise ValueError("fusion must be linear, gated or average")
        if fusion != "linear" and fuse_kernel != 1:
            raise ValueError("fuse_kernel is the linear fusion's")
        self.scale, self.window = scale, window
        # LR pixels: every 3x3 conv on the path adds one (tiles overlap by this much)
        self.receptive_radius = 3 * blocks + 3 + (0 if window == 1 else 2 if fusion in ("gated", "average") else fuse_kernel // 2)
        self.register_buffer("mean", torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1), persistent=False)
        if window == 1 or fusion == "average":  # the average makes one frame of the window before conv_1
            self.conv_1 = conv3x3(3, channels)
        else:
            self.conv_1 = SharedFrameConv(3, channels, window)
        if window > 1 and fusion == "gated":
            self.fuse = GatedFuse(channels, window)
        elif window > 1 and fusion == "average":
            self.fuse = NoiseAverage()
        elif window > 1:
            self.fuse = LoRAConv2d(channels * window, channels, fuse_kernel, padding=fuse_kernel // 2)
            with torch.no_grad():  # pass the centre frame's features through (the kernel's centre tap)
                self.fuse.weight.zero_()
                self.fuse.bias.zero_()
                c, k = window // 2, fuse_kernel // 2
                self.fuse.weight[:, c * channels : (c + 1) * channels, k, k] = torch.eye(channels)
        self.blocks = nn.ModuleList(SPAB(channels) for _ in range(blocks))
        self.conv_2 = conv3x3(channels, channels)
        self.conv_cat = LoRAConv2d(channels * 4, channels, 1)
        self.upsampler = conv3x3(channels, 3 * scale * scale)
        self.trunk_dtype: torch.dtype | None = None  # the blocks' own precision at run time (low_precision)

    def low_precision(self, dtype: torch.dtype) -> None:
        """Run the blocks (91 % of the arithmetic) in `dtype`; the first conv, which sees the 0..255 input, and the
        tail stay float32: in bf16 they cost a measurable share of a dB, the blocks a hundredth (README, "Speed")."""
        self.blocks.to(dtype)
        self.trunk_dtype = dtype

    def frame_convs(self, window: torch.Tensor) -> torch.Tensor:
        """conv_1 on every frame of the window [N, T, 3, H, W] -> [N, T*C, H, W]."""
        n, t, c, h, w = window.shape
        return self.conv_1((window.reshape(n * t, c, h, w) - self.mean).reshape(n, t * c, h, w) * 255.0)

    def still_loss(self, window: torch.Tensor, hr: torch.Tensor) -> torch.Tensor | None:
        """The gated fusion's supervision (GatedFuse.still_loss) for LR windows and their HR windows, on the
        per-frame features as they are (the gate learns to read them, not they to suit it); None for a
        network without a gate being trained."""
        if not isinstance(getattr(self, "fuse", None), GatedFuse) or not self.fuse.gate_1.weight.requires_grad:
            return None
        return self.fuse.still_loss(self.frame_convs(window).detach(), hr, self.scale)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        if isinstance(getattr(self, "fuse", None), NoiseAverage):
            f = self.frame_convs(self.fuse(window)[:, None])
        else:
            f = self.frame_convs(window)
            if self.window > 1:
                f = self.fuse(f)
        first, a, b = self.trunk(f)
        out = self.conv_cat(torch.cat([f, self.conv_2(b), first, a], 1))
        return F.pixel_shuffle(self.upsampler(out), self.scale)

    def trunk(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The blocks: block 1's output, block 6's first SiLU and block 6's output (in f's dtype)."""
        b, first, a = f if self.trunk_dtype is None else f.to(self.trunk_dtype), None, None
        for block in self.blocks:
            b, a = block(b)
            if first is None:
                first = b
        return first.to(f.dtype), a.to(f.dtype), b.to(f.dtype)

    # One frame in two halves, for a network that changes the deep features between them (vsrt): conv_cat
    # is a 1x1 conv, so the share of f, block 1 and a_6 in it is computed once per frame.

    def frame_features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, 3, H, W] (a single-frame SPAN) -> (the tail's input without the deep features' share, the deep
        features b_6), each [B, C, H, W]."""
        f = self.conv_1((frames - self.mean) * 255.0)
        first, a, b = self.trunk(f)
        c = f.shape[1]
        weight = self.conv_cat.effective_weight()
        return F.conv2d(torch.cat([f, first, a], 1), torch.cat([weight[:, :c], weight[:, 2 * c :]], 1), self.conv_cat.bias), b

    def reconstruct(self, partial: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        """frame_features' two halves (the deep features possibly changed) -> the frame upscaled [B, 3, sH, sW]."""
        c = deep.shape[1]
        out = partial + F.conv2d(self.conv_2(deep), self.conv_cat.effective_weight()[:, c : 2 * c])
        return F.pixel_shuffle(self.upsampler(out), self.scale)
