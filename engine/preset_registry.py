"""The preset registry: presets/NAME.json (the model card) beside presets/NAME.safetensors (the weights).

A card holds the architecture, scale, window, minimum frame size, the weights' SHA-256, how the weights
were trained and their validation scores with the command that measured them. Loading checks the
weights against the card, so a preset is exactly what its card describes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import HypersrError
from .files import atomic_write, sha256_file
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
    card: dict
    card_path: Path
    weights_path: Path

    @property
    def scale(self) -> int:
        return int(self.card["architecture"]["scale"])

    @property
    def window(self) -> int:
        return int(self.card["architecture"]["window"])

    @property
    def min_size(self) -> int:
        return int(self.card.get("min_size", 16))

    @property
    def refine_refused(self) -> str | None:
        """Why this preset's pass one takes no --refine (its card's "refine_refused"), or None."""
        return self.card.get("refine_refused")

    @property
    def sha256(self) -> str:
        if "weights" not in self.card:  # a card written before its first training run
            raise HypersrError(f"preset {self.name} has no trained weights yet; train them with `hypersr train base --preset {self.name} --install`")
        return self.card["weights"]["sha256"]

    def files(self) -> list[Path]:
        """The files the preset is made of (card, weights, hypernet): inputs that no output may replace."""
        hypernet = (self.card.get("hypernet") or {}).get("weights")
        return [self.card_path, self.weights_path] + ([presets_dir() / hypernet["file"]] if hypernet else [])

    def build(self) -> torch.nn.Module:
        try:
            return build_model(self.card["architecture"])
        except (TypeError, ValueError) as e:  # an argument the network does not take, or a value it refuses
            raise HypersrError(f"the model card {self.card_path} has an architecture hypersr cannot build ({e}); reinstall hypersr") from None


def get(name: str | None) -> Preset:
    name = name or DEFAULT_PRESET
    card_path = presets_dir() / f"{name}.json"
    if not card_path.is_file():
        raise HypersrError(f"unknown preset {name!r}; available: {', '.join(available()) or 'none'}")
    card = read_card(card_path)
    return Preset(name, card, card_path, presets_dir() / card.get("weights", {}).get("file", f"{name}.safetensors"))


def read_card(path: Path) -> dict:
    """A model card, checked for every entry the runtime reads: a damaged card is one line, not a KeyError later."""
    def damaged(why: str) -> HypersrError:
        return HypersrError(f"the model card {path} is damaged ({why}); reinstall hypersr")

    try:
        card = json.loads(path.read_bytes())
    except OSError as e:
        raise HypersrError(f"cannot read the model card {path}: {e.strerror}") from None
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise damaged(f"not JSON: {str(e).splitlines()[0][:80]}") from None
    if not isinstance(card, dict):
        raise damaged("not a JSON object")

    def section(parent: dict, key: str, where: str, required: bool = True) -> dict | None:
        if key not in parent and not required:
            return None
        value = parent.get(key)
        if not isinstance(value, dict):
            raise damaged(f"{where}{key} is missing or not an object")
        return value

    def weights_entry(parent: dict, where: str) -> None:
        w = section(parent, "weights", where, required=False)
        if w is None:
            return
        file, sha = w.get("file"), w.get("sha256")
        if not isinstance(file, str) or not file or Path(file).name != file:
            raise damaged(f"{where}weights.file is not a file name")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise damaged(f"{where}weights.sha256 is not a SHA-256")

    arch = section(card, "architecture", "")
    if not isinstance(arch.get("type"), str):
        raise damaged("architecture.type is not a name")
    for key, low in (("scale", 1), ("window", 1)):
        if type(arch.get(key)) is not int or not low <= arch[key] <= 16:
            raise damaged(f"architecture.{key} is not a small whole number")
    if "min_size" in card and (type(card["min_size"]) is not int or not 1 <= card["min_size"] <= 4096):
        raise damaged("min_size is not a small whole number")
    if card.get("refine_refused") is not None and not isinstance(card["refine_refused"], str):
        raise damaged("refine_refused is not text")
    weights_entry(card, "")
    hypernet = section(card, "hypernet", "", required=False)
    if hypernet is not None:
        section(hypernet, "architecture", "hypernet.")
        weights_entry(hypernet, "hypernet.")
    return card


def load_model(preset: Preset | str | None, lora: LoRA | str | Path | None = None, device: str = "cpu") -> torch.nn.Module:
    """The preset's network with verified weights, the LoRA applied and merged, in eval mode."""
    if not isinstance(preset, Preset):
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


def hypernet_path(preset: Preset) -> Path:
    return presets_dir() / f"{preset.name}.hypernet.safetensors"


def load_hypernet(preset: Preset, base: torch.nn.Module, device: str = "cpu"):
    """The preset's trained hypernet (frozen, eval) and its weights' SHA-256."""
    from .hypernet import build_hypernet

    card = preset.card.get("hypernet") or {}
    if "weights" not in card:
        raise HypersrError(
            f"preset {preset.name} has no trained hypernet, so it cannot analyse clips; "
            f"train one with `hypersr train hypernet --preset {preset.name} --install` or use another preset"
        )
    net = build_hypernet(base, card["architecture"])
    net.load_state_dict(_verified_weights(preset, presets_dir() / card["weights"]["file"], card["weights"]["sha256"]))
    net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, card["weights"]["sha256"]


def complexity(preset: Preset) -> dict:
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


def write_card(preset: Preset, card: dict) -> None:
    text = json.dumps(card, indent=2) + "\n"
    atomic_write(preset.card_path, lambda tmp: Path(tmp).write_text(text))
    preset.card = card


def install_weights(preset: Preset, weights: Path, record: dict) -> None:
    """Copy trained weights into presets/ and record their hash and how they were made in the card."""
    import shutil

    atomic_write(preset.weights_path, lambda tmp: shutil.copyfile(weights, tmp))
    card = json.loads(preset.card_path.read_text())  # as it is now: it may have been edited during a long run
    card["weights"] = {"file": preset.weights_path.name, "sha256": sha256_file(preset.weights_path)}
    card["training"] = {**card.get("training", {}), **record}
    card.pop("validation", None)  # scores belong to the old weights; `hypersr bench quality --update-card`
    write_card(preset, card)


def install_hypernet(preset: Preset, weights: Path, arch: dict, record: dict, extra: dict | None = None) -> None:
    import shutil

    target = hypernet_path(preset)
    atomic_write(target, lambda tmp: shutil.copyfile(weights, tmp))
    card = json.loads(preset.card_path.read_text())  # as it is now: it may have been edited during a long run
    card["hypernet"] = {"architecture": arch, "weights": {"file": target.name, "sha256": sha256_file(target)}, "training": record, **(extra or {})}
    write_card(preset, card)
