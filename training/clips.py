"""Training video from stills: a simulated camera, shots and cuts (see DATA.md at the repository root).

A *shot* is a camera path over one still: a start point, a pan velocity (pixels per frame, sub-pixel),
a zoom rate and a rotation rate. A *clip* is a few shots of the same scene with cuts between them,
at different magnifications: a close-up (the still at full resolution) and distant shots (the same
region shrunk, antialiased), which is where one part of a clip can teach another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Camera:
    centre: tuple[float, float]  # (x, y) in source pixels (pixel centres at integers) at frame 0
    velocity: tuple[float, float] = (0.0, 0.0)  # output pixels per frame
    zoom_rate: float = 0.0  # relative magnification change per frame
    rotation_rate: float = 0.0  # radians per frame

    def theta(self, k: float, size: int, src_h: int, src_w: int) -> torch.Tensor:
        """affine_grid matrix for frame k: output pixel offsets d map to centre_k + R(a) d / m."""
        m = (1.0 + self.zoom_rate) ** k
        a = self.rotation_rate * k
        cx = self.centre[0] + self.velocity[0] * k
        cy = self.centre[1] + self.velocity[1] * k
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) / m
        lin = np.diag([2 / src_w, 2 / src_h]) @ rot * (size / 2)
        t = [(2 * cx + 1) / src_w - 1, (2 * cy + 1) / src_h - 1]
        return torch.tensor([[lin[0, 0], lin[0, 1], t[0]], [lin[1, 0], lin[1, 1], t[1]]], dtype=torch.float32)


def render(src: torch.Tensor, camera: Camera, frames: int, size: int, start: float = 0.0) -> torch.Tensor:
    """src [3, H, W] float -> frames [T, 3, size, size] along the camera path, frame k at time start + k.

    At integer positions with no zoom or rotation, bicubic sampling returns the source pixels exactly,
    so a still camera gives exact crops."""
    h, w = src.shape[-2:]
    theta = torch.stack([camera.theta(start + k, size, h, w) for k in range(frames)])
    grid = F.affine_grid(theta, (frames, 3, size, size), align_corners=False)
    out = F.grid_sample(src.expand(frames, -1, -1, -1), grid, mode="bicubic", padding_mode="reflection", align_corners=False)
    return out.clamp(0, 1)


def shrink(src: torch.Tensor, factor: float) -> torch.Tensor:
    if factor == 1.0:
        return src
    return F.interpolate(src[None], scale_factor=factor, mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)


def random_camera(rng: np.random.Generator, centre, max_speed: float = 4.0) -> Camera:
    return Camera(
        centre=tuple(centre),
        velocity=tuple(rng.uniform(-max_speed, max_speed, 2) * (rng.random() < 0.85)),
        zoom_rate=float(rng.uniform(-0.015, 0.015) * (rng.random() < 0.3)),
        rotation_rate=float(rng.uniform(-0.01, 0.01) * (rng.random() < 0.3)),
    )


@dataclass
class Clip:
    frames: torch.Tensor  # [T, 3, S, S] float in [0, 1], 8-bit quantised
    cuts: list[int]  # indices of frames that start a new shot (0 excluded)
    magnifications: list[float]  # per shot: 1.0 = close-up at the still's resolution

    def shot_of(self, t: int) -> int:
        return sum(1 for c in self.cuts if c <= t)


def multi_shot_clip(still: torch.Tensor, rng: np.random.Generator, frames: int = 24, size: int = 128,
                    shots: int = 3, distant: tuple[float, float] = (0.3, 0.6), closeup_first: bool = False) -> Clip:
    """One scene in several shots: a close-up and distant shots of the same region, cuts between them.

    still: [3, H, W] float. The region is chosen at the still's centre of detail; a distant shot at
    magnification m shows it shrunk by m (so the close-up holds the detail the distant shots lack).
    The shots come in random order, or the close-up first (the memory test)."""
    h, w = still.shape[-2:]
    mags = [1.0] + [float(rng.uniform(*distant)) for _ in range(shots - 1)]
    order = np.arange(shots) if closeup_first else rng.permutation(shots)
    mags = [mags[i] for i in order]
    bounds = np.linspace(0, frames, shots + 1).round().astype(int)
    centre = np.array([rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h])
    out, cuts = [], []
    for s, m in enumerate(mags):
        n = int(bounds[s + 1] - bounds[s])
        level = shrink(still, m)
        cam = random_camera(rng, centre * m + rng.normal(0, 4, 2))
        out.append(render(level, cam, n, size))
        if s:
            cuts.append(int(bounds[s]))
    frames_t = torch.cat(out)
    return Clip((frames_t * 255).round() / 255, cuts, mags)
