"""The model card, typed: presets/NAME.json read into dataclasses (the way BasicSR's and spandrel's model
descriptions are), every entry the runtime reads checked once, so that a damaged card is one line, not a
KeyError later. The runtime only reads cards; training/cards.py is their one writer.

    {"architecture": {"type": "span", "scale": 2, "window": 1, ...},   -> Architecture
     "min_size": 16, "refine_refused": "...", "refine_lr": 0.0003, "refine_kinds": ["clean", ...],
     "weights": {"file": "quality-x2.safetensors", "sha256": "..."},   -> WeightsRef
     "training": {"degradation": "real", "hyperparameters": {...}, ...},
     "hypernet": {"architecture": {...}, "weights": {...}, "training": {...}},   -> HypernetCard
     "validation": ..., "backbone": ..., ...}                         (kept as they are, in `raw`)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HypersrError

DEGRADATIONS = ("bi", "real")  # training/degradation.py: clean BI input, or the real-source mixture


@dataclass(frozen=True)
class WeightsRef:
    file: str  # a file name in presets/
    sha256: str


@dataclass(frozen=True)
class Architecture:
    type: str  # a registered network (engine/networks)
    scale: int
    window: int  # frames the network reads, 2k+1
    options: dict[str, Any]  # the network's own arguments (channels, blocks, ...)

    def as_dict(self) -> dict[str, Any]:
        """What engine.networks.build_model takes, and what the card holds."""
        return {"type": self.type, "scale": self.scale, "window": self.window, **self.options}


@dataclass(frozen=True)
class HypernetCard:
    architecture: dict[str, Any]  # engine/hypernet.py: build_hypernet's arguments
    weights: WeightsRef | None  # None until its first training run is installed
    training: dict[str, Any]  # how it was trained (a record, not read by the runtime)


@dataclass(frozen=True)
class ModelCard:
    architecture: Architecture
    min_size: int
    refine_refused: str | None  # why pass one takes no --refine with this preset
    refine_lr: float | None  # refine's step size where the engine's default does not suit the network
    refine_kinds: tuple[str, ...] | None  # real-source presets: the declared source kinds refine was measured never worse for
    weights: WeightsRef | None  # None: a card written before its first training run
    hypernet: HypernetCard | None
    training: dict[str, Any]  # how the weights were made: degradation, hyperparameters, data, ...
    raw: dict[str, Any]  # the whole card as read, records included

    @property
    def trained(self) -> bool:
        return self.weights is not None

    @property
    def has_hypernet(self) -> bool:
        """Whether pass one can run: a hypernet with trained weights."""
        return self.hypernet is not None and self.hypernet.weights is not None

    @property
    def degradation(self) -> str:
        return self.training.get("degradation", "bi")

    @property
    def is_real_source(self) -> bool:
        """Trained on the real-source degradation mixture (blur, scalers, noise, codecs) instead of clean BI."""
        return self.degradation == "real"

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.training.get("hyperparameters", {}))

    @property
    def clean_twin(self) -> str | None:
        """A real-source preset's clean twin, the preset its clean blend moves toward (the same convolutions
        trained on clean input), as the card names it; None where it names none."""
        return self.raw.get("clean_twin")

    @classmethod
    def from_dict(cls, card: Any, where: str | Path = "the model card") -> ModelCard:
        def damaged(why: str) -> HypersrError:
            return HypersrError(f"the model card {where} is damaged ({why}); reinstall hypersr")

        if not isinstance(card, dict):
            raise damaged("not a JSON object")

        def section(parent: dict, key: str, at: str, required: bool = True) -> dict | None:
            if key not in parent and not required:
                return None
            value = parent.get(key)
            if not isinstance(value, dict):
                raise damaged(f"{at}{key} is missing or not an object")
            return value

        def weights_entry(parent: dict, at: str) -> WeightsRef | None:
            w = section(parent, "weights", at, required=False)
            if w is None:
                return None
            file, sha = w.get("file"), w.get("sha256")
            if not isinstance(file, str) or not file or Path(file).name != file:
                raise damaged(f"{at}weights.file is not a file name")
            if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise damaged(f"{at}weights.sha256 is not a SHA-256")
            return WeightsRef(file, sha)

        arch = section(card, "architecture", "")
        if not isinstance(arch.get("type"), str):
            raise damaged("architecture.type is not a name")
        for key in ("scale", "window"):
            if type(arch.get(key)) is not int or not 1 <= arch[key] <= 16:
                raise damaged(f"architecture.{key} is not a small whole number")
        if "min_size" in card and (type(card["min_size"]) is not int or not 1 <= card["min_size"] <= 4096):
            raise damaged("min_size is not a small whole number")
        if card.get("refine_refused") is not None and not isinstance(card["refine_refused"], str):
            raise damaged("refine_refused is not text")
        if "refine_lr" in card and (type(card["refine_lr"]) is not float or not 0 < card["refine_lr"] <= 0.1):
            raise damaged("refine_lr is not a step size between 0 and 0.1")
        kinds = card.get("refine_kinds")
        if kinds is not None and (not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds)):
            raise damaged("refine_kinds is not a list of source kinds")
        training = section(card, "training", "", required=False) or {}
        if training.get("degradation", "bi") not in DEGRADATIONS:
            raise damaged(f"training.degradation is not one of {', '.join(DEGRADATIONS)}")
        if "hyperparameters" in training:
            section(training, "hyperparameters", "training.")
        hypernet = None
        if (h := section(card, "hypernet", "", required=False)) is not None:
            record = section(h, "training", "hypernet.", required=False) or {}
            hypernet = HypernetCard(dict(section(h, "architecture", "hypernet.")), weights_entry(h, "hypernet."), record)
        options = {k: v for k, v in arch.items() if k not in ("type", "scale", "window")}
        return cls(Architecture(arch["type"], arch["scale"], arch["window"], options), card.get("min_size", 16),
                   card.get("refine_refused"), card.get("refine_lr"),
                   None if kinds is None else tuple(kinds), weights_entry(card, ""), hypernet, training, card)


def read_card(path: Path) -> ModelCard:
    """presets/NAME.json as a ModelCard, or one line that says what is wrong with it."""
    where = path
    try:
        raw = json.loads(Path(path).read_bytes())
    except OSError as e:
        raise HypersrError(f"cannot read the model card {where}: {e.strerror}") from None
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise HypersrError(f"the model card {where} is damaged (not JSON: {str(e).splitlines()[0][:80]}); reinstall hypersr") from None
    return ModelCard.from_dict(raw, where)
