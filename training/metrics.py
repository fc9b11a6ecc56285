"""Quality metrics as SR papers report them: on BT.601 luma (Y of YCbCr, 16..235), 4-pixel border cropped."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BORDER = 4


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] RGB in [0, 1] -> [..., H, W] BT.601 studio-range Y on the 0..255 scale."""
    r, g, b = rgb.unbind(-3)
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def _crop(y: torch.Tensor) -> torch.Tensor:
    return y[..., BORDER:-BORDER, BORDER:-BORDER]


def y_psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    mse = F.mse_loss(_crop(luma(pred.double())), _crop(luma(target.double()))).item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def y_ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5) on cropped luma."""
    x = _crop(luma(pred.double()))[None, None]
    y = _crop(luma(target.double()))[None, None]
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = (g / g.sum())[:, None] @ (g / g.sum())[None, :]
    win = g[None, None]
    mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mu_x**2
    syy = F.conv2d(y * y, win) - mu_y**2
    sxy = F.conv2d(x * y, win) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean().item()


def clip_psnr(sr, hr) -> float:
    """A clip's Y-PSNR: the mean over its frames ([T, 3, H, W] tensors or arrays, 0..1)."""
    return float(sum(y_psnr(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(sr, hr)) / len(hr))


def clip_scores(sr, hr) -> dict[str, float]:
    """A clip's Y-PSNR and SSIM, each the mean over its frames."""
    return {"y_psnr": clip_psnr(sr, hr),
            "ssim": float(sum(y_ssim(torch.as_tensor(a), torch.as_tensor(b)) for a, b in zip(sr, hr)) / len(hr))}
