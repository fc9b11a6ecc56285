"""Training's use of the real-source model (engine/degradation.py): windows each with their own sampled
degradation, a model card's `degradation` (TrainingDegradation), and the auxiliary head's targets."""

from __future__ import annotations

import numpy as np
import torch

from ..engine.bi import bi_downscale_8bit
from ..engine.degradation import BI, CHAINS, Degradation, apply, sample


def degrade_windows(hr: torch.Tensor, scale: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[Degradation]]:
    """Training windows [N, T, 3, H, W]: each window a clip with its own sampled degradation."""
    degradations = [sample(rng) for _ in range(hr.shape[0])]
    return torch.stack([apply(clip, scale, d, rng) for clip, d in zip(hr, degradations)]), degradations


class TrainingDegradation:
    """A model card's `degradation`: how training makes LR from HR, and the fixed chains it validates on.

    "bi": the BI degradation only (the clean presets). "real": every training clip (or window) gets its
    own sampled degradation; validation runs four of the benchmark's chains."""

    VALIDATION = {"bi": ("bi",), "real": ("bi", "h264-crf33", "mpeg2-q8", "blur-noise")}

    def __init__(self, name: str):
        if name not in self.VALIDATION:
            raise ValueError(f"unknown degradation {name!r}; one of {', '.join(self.VALIDATION)}")
        self.name = name

    def __call__(self, hr: torch.Tensor, scale: int, rng: np.random.Generator) -> torch.Tensor:
        """HR windows [N, T, 3, H, W] (each its own clip) or one clip [T, 3, H, W] -> LR."""
        if self.name == "bi":
            return apply_bi(hr, scale)
        if hr.dim() == 5:
            return degrade_windows(hr, scale, rng)[0]
        return apply(hr, scale, sample(rng), rng)

    def clip(self, hr: torch.Tensor, scale: int, rng: np.random.Generator) -> tuple[torch.Tensor, Degradation]:
        """One clip [T, 3, H, W] -> (LR, the degradation it got)."""
        d = BI if self.name == "bi" else sample(rng)
        return (apply_bi(hr, scale) if d.is_bi else apply(hr, scale, d, rng)), d

    def validation(self, hr: torch.Tensor, scale: int) -> dict[str, torch.Tensor]:
        """One validation clip [T, 3, H, W] -> {chain: LR}, the same every time."""
        return {c: apply(hr, scale, CHAINS[c], np.random.default_rng(0)) for c in self.VALIDATION[self.name]}


AUX_TARGETS = 7


def aux_target(d: Degradation) -> torch.Tensor:
    """The degradation as what the hypernet's auxiliary head predicts during meta-training, each in about
    0..1: noise, chroma noise, blur (mean sigma), the codec (H.264, MPEG-2, MJPEG; all 0: none), its quality."""
    blur = 0.0 if d.blur is None else (d.blur[0] + d.blur[1]) / 2
    quality = {"h264": (d.quality - 18) / 20, "mpeg2": (d.quality - 2) / 13, "mjpeg": (d.quality - 2) / 13}.get(d.codec, 0.0)
    codec = [float(d.codec == c) for c in (None, "h264", "mpeg2", "mjpeg")]
    return torch.tensor([d.noise * 25.5, d.chroma_noise * 25.5, blur / 2.5, *codec[1:], quality])


def apply_bi(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The BI degradation of any [..., 3, H, W] (engine/bi.py), 8-bit quantised."""
    return bi_downscale_8bit(hr, scale)
