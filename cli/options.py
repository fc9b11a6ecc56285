"""What several command groups share: argparse types, the data folder, the options of every training run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..engine.errors import HypersrError

DEFAULT_DATA_DIR = Path(os.environ.get("HYPERSR_DATA", Path.home() / ".cache" / "hypersr" / "data"))


def training_parser(train, name: str, text: str, default_out: str) -> argparse.ArgumentParser:
    """A `hypersr train` subcommand with the options every training run has."""
    t = train.add_parser(name, help=text)
    t.add_argument("--preset", default="fast-x2")
    t.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where sources are fetched to (default %(default)s)")
    t.add_argument("--out", help=f"run directory (checkpoints, log); default {default_out}")
    t.add_argument("--pack", type=Path, help="training pack (default DATA_DIR/train-pack.npz)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--max-minutes", type=positive_minutes, metavar="M", help="stop after about M minutes, validated and checkpointed "
                   "(the same command resumes; --install installs what it has, its card saying how many steps)")
    return t


def positive(unit: str = ""):
    """An argparse type: a positive, finite number (of `unit`, where one is named in its messages)."""
    of = f" of {unit}" if unit else ""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number{of}, not {text!r}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive number{of}, not {text}")
        return value

    return number


positive_minutes = positive("minutes")  # --max-minutes
positive_number = positive()  # a step size or a weight


def at_least(least: int):
    """An argparse type: a whole number no smaller than `least` (a count of frames, steps, clips), so that
    0 or -3 is refused before any work instead of failing deep inside it."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least} or more, not {value}")
        return value

    return whole_number



def with_overrides(arch: dict, items: list[str] | None) -> dict:
    """An architecture with --arch KEY=VALUE overrides (--arch channels=48 --arch evidence=true)."""
    arch = dict(arch)
    for item in items or []:
        key, _, value = item.partition("=")
        arch[key] = int(value) if value.isdigit() else {"true": True, "false": False}.get(value, value)
    return arch


def check_training_side(option: str, side: int, preset) -> None:
    """An HR training side the preset's network can take: a multiple of its scale, its minimum LR frame or more."""
    least = preset.min_size * preset.scale
    if side % preset.scale or side < least:
        raise HypersrError(f"{option} {side}: {preset.name} needs a multiple of {preset.scale} (its scale), {least} or more")


