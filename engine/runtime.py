"""Pass two's engine: a preset's network (LoRA merged) on a device, upscaling one window at a time.

Integrations (VapourSynth, the y4m pipe) hand it windows of RGB float frames and get the upscaled
centre frame back; they never touch torch themselves.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from . import presets
from .errors import HypersrError
from .lora import LoRA


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HypersrError("--device cuda was asked for, but torch sees no CUDA GPU here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise HypersrError(f"unknown device {device!r}; use cpu or cuda")
    return dev


class Upscaler:
    """Thread-safe: concurrent callers (VapourSynth's threads) take turns on the model."""

    def __init__(self, preset: str | None = None, lora: LoRA | str | None = None, device: str | None = None):
        self.preset = presets.get(preset)
        self.device = resolve_device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = presets.load_model(self.preset, lora, device=str(self.device)).to(self.dtype)
        self.scale, self.window = self.preset.scale, self.preset.window
        self._lock = threading.Lock()

    def check_size(self, width: int, height: int) -> None:
        m = self.preset.min_size
        if width < m or height < m:
            raise HypersrError(f"frames of {width}x{height} are smaller than preset {self.preset.name}'s minimum of {m}x{m}; upscale larger video")

    @torch.inference_mode()
    def __call__(self, window: list[np.ndarray]) -> np.ndarray:
        """window: 2k+1 arrays [3, H, W] float32 RGB -> the centre frame upscaled, [3, sH, sW] float32."""
        x = torch.from_numpy(np.stack(window))[None].to(self.device, self.dtype)
        with self._lock:
            y = self.model(x)[0]
        return y.clamp_(0, 1).float().cpu().numpy()
