"""Losses shared by training and by pass one's test-time refinement."""

from __future__ import annotations

import torch


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """A smooth L1: sqrt((pred - target)^2 + eps^2), averaged."""
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()
