"""The preset registry: presets/NAME.json (the model card, engine/card.py) beside presets/NAME.safetensors
(the weights). It only reads: training/cards.py writes cards and installs weights.

A card holds the architecture, scale, window, minimum frame size, the weights' SHA-256, how the weights
were trained and their validation scores with the command that measured them. Loading checks the
weights against the card, so a preset is exactly what its card describes. Resolve a preset once with
get() and pass the Preset on: every function here takes either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file

from .card import ModelCard, read_card
from .errors import HypersrError
from .files import sha256_file
from .lora import LoRA, load_lora, merge_all
from .networks import build_model, macs_per_lr_pixel

DEFAULT_PRESET = "fast-x2"


def presets_dir() -> Path:
    return Path(str(resources.files("hypersr.presets")))


def available() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.json"))


@dataclass
class Preset:
    name: str
    card: ModelCard
    card_path: Path
    weights_path: Path

    @property
    def scale(self) -> int:
        return self.card.architecture.scale

    @property
    def window(self) -> int:
        return self.card.architecture.window

    @property
    def min_size(self) -> int:
        return self.card.min_size

    @property
    def refine_refused(self) -> str | None:
        """Why this preset's pass one takes no --refine (its card's "refine_refused"), or None."""
        return self.card.refine_refused

    @property
    def sha256(self) -> str:
        if self.card.weights is None:  # a card written before its first training run
            raise HypersrError(f"preset {self.name} has no trained weights yet; train them with `hypersr train base --preset {self.name} --install`")
        return self.card.weights.sha256

    @property
    def hypernet_path(self) -> Path:
        return presets_dir() / f"{self.name}.hypernet.safetensors"

    def files(self) -> list[Path]:
        """The files the preset is made of (card, weights, hypernet): inputs that no output may replace."""
        hypernet = self.card.hypernet.weights if self.card.hypernet else None
        return [self.card_path, self.weights_path] + ([presets_dir() / hypernet.file] if hypernet else [])

    def build(self) -> torch.nn.Module:
        try:
            return build_model(self.card.architecture.as_dict())
        except (TypeError, ValueError) as e:  # an argument the network does not take, or a value it refuses
            raise HypersrError(f"the model card {self.card_path} has an architecture hypersr cannot build ({e}); reinstall hypersr") from None


def get(preset: Preset | str | None) -> Preset:
    """The preset of that name (None: the default), its card read and checked; a Preset is returned as it is."""
    if isinstance(preset, Preset):
        return preset
    name = preset or DEFAULT_PRESET
    card_path = presets_dir() / f"{name}.json"
    if not card_path.is_file():
        raise HypersrError(f"unknown preset {name!r}; available: {', '.join(available()) or 'none'}")
    card = read_card(card_path)
    return Preset(name, card, card_path, presets_dir() / (card.weights.file if card.weights else f"{name}.safetensors"))


def load_model(preset: Preset | str | None, lora: LoRA | str | Path | None = None, device: str = "cpu") -> torch.nn.Module:
    """The preset's network with verified weights, the LoRA applied and merged, in eval mode."""
    preset = get(preset)
    model = preset.build()
    model.load_state_dict(_verified_weights(preset, preset.weights_path, preset.sha256))
    if lora is not None:
        source = None if isinstance(lora, LoRA) else lora
        if source is not None:
            if not isinstance(source, (str, os.PathLike)):  # e.g. lora=5 from a .vpy script
                raise HypersrError(f"lora must be a LoRA file's path or a LoRA that analyse returned, not {type(source).__name__}")
            lora = load_lora(source)
        try:
            check_lora(lora, preset)
            lora.apply_to(model)
        except HypersrError as e:
            raise HypersrError(f"{source}: {e}" if source is not None else str(e)) from None
    model.to(device).eval()
    merge_all(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _verified_weights(preset: Preset, path: Path, sha256: str) -> dict:
    if not path.is_file():
        raise HypersrError(f"preset {preset.name}: weights {path} are missing; reinstall hypersr")
    digest = sha256_file(path)
    if digest != sha256:
        raise HypersrError(
            f"preset {preset.name}: weights {path.name} have SHA-256 {digest[:12]}…, the card says "
            f"{sha256[:12]}…; reinstall hypersr or retrain the preset"
        )
    return load_file(str(path))


def load_hypernet(preset: Preset | str | None, base: torch.nn.Module, device: str = "cpu"):
    """The preset's trained hypernet (frozen, eval) and its weights' SHA-256."""
    from .hypernet import build_hypernet

    preset = get(preset)
    if not preset.card.has_hypernet:
        raise HypersrError(
            f"preset {preset.name} has no trained hypernet, so it cannot analyse clips; "
            f"train one with `hypersr train hypernet --preset {preset.name} --install` or use another preset"
        )
    card = preset.card.hypernet
    net = build_hypernet(base, card.architecture)
    net.load_state_dict(_verified_weights(preset, presets_dir() / card.weights.file, card.weights.sha256))
    net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, card.weights.sha256


def complexity(preset: Preset | str | None) -> dict:
    preset = get(preset)
    model = preset.build()
    macs = macs_per_lr_pixel(model)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs_per_input_pixel": macs,
        "flops_per_output_pixel": round(2 * macs / preset.scale**2),
    }


def check_lora(lora: LoRA, preset: Preset) -> None:
    """Refuse a LoRA made for another preset, scale or base weights, naming both sides."""
    if lora.preset != preset.name or lora.upscale_factor != preset.scale:
        raise HypersrError(
            f"this LoRA was made for preset {lora.preset} (x{lora.upscale_factor}), not {preset.name} (x{preset.scale}); "
            f"use --preset {lora.preset} or make a new LoRA with `hypersr analyse --preset {preset.name}`"
        )
    if lora.base_sha256 != preset.sha256:
        raise HypersrError(
            f"this LoRA was made for other {preset.name} weights (base SHA-256 {lora.base_sha256[:12]}…, installed "
            f"{preset.sha256[:12]}…); make it again with `hypersr analyse`"
        )
