"""The one writer of model cards and preset files (the runtime's preset registry only reads them): install
trained weights and hypernets into presets/, and record how they were made and what they scored.

Every change re-reads the card from disk first (a long run may finish after someone edited it), and
files are written atomically."""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..engine.card import ModelCard
from ..engine.files import atomic_write, sha256_file
from ..engine.preset_registry import Preset

PACK_DATA = ("training pack (`hypersr data pack`): detail-rich crops of the Debian wallpaper and photograph stills "
             "(train split, DATA.md) filmed by a simulated camera, 30% as shrunk 'distant' shots, plus the training clips at least "
             "as large as the patch (carphone_pristine, 176x144); validation: bigbuckbunny (halved), bikes")
REAL_WINDOWS = ("; every training window degraded by its own sampled real-source chain (training/degradation.py: optical blur, "
                "one of six downscalers, Gaussian noise or grain, 4:2:0, H.264 / MPEG-2 / MJPEG through PyAV), a fifth clean BI; "
                "{bank} degraded windows made once at the start (the bank) and drawn from with random flips")
HYPERNET_DATA = ("meta-training on the training pack: single-shot clips (simulated camera over the scenes, carphone_pristine) "
                 "and two-shot clips of one scene (close-up + distant shot); base weights frozen")
REAL_CLIPS = ("; each clip degraded by its own sampled real-source chain (the base's mixture); an auxiliary linear head "
              "reads the standardised summary and predicts the clip's degradation parameters (weight {aux}), "
              "and is discarded after training")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str = "cpu") -> str:
    """The machine a measurement or a training run used, as cards record it."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU: {cpu_name()}, {torch.get_num_threads()} threads"


def command() -> str:
    """The command line that is running, as cards record it."""
    return "hypersr " + shlex.join(sys.argv[1:])


def training_record(device: str, hp: dict, pack: Path, t0: float, data: str, out: Path | None = None) -> dict:
    """How a training run made its weights: hyperparameters, data, hardware, wall time, the command."""
    record = {"hyperparameters": hp, "data": data, "pack_sha256": sha256_file(pack), "wall_time_s": round(time.time() - t0),
              "hardware": hardware(device), "torch": torch.__version__, "command": command()}
    log = Path(out) / "log.jsonl" if out is not None else None
    if log is not None and log.is_file():  # a run that stopped at --max-minutes, or resumed: the steps it really made
        record["steps_done"] = json.loads(log.read_text().splitlines()[-1])["step"]
    return record


def update_card(preset: Preset, change: Callable[[dict], None]) -> None:
    """Apply `change` to the card as it is on disk now, check the result and write it atomically."""
    raw = json.loads(preset.card_path.read_text())
    change(raw)
    card = ModelCard.from_dict(raw, preset.card_path)  # never write a card the registry would refuse
    text = json.dumps(raw, indent=2) + "\n"
    atomic_write(preset.card_path, lambda tmp: Path(tmp).write_text(text))
    preset.card = card


def install_weights(preset: Preset, weights: Path, record: dict) -> None:
    """Copy trained weights into presets/ and record their hash and how they were made in the card."""
    atomic_write(preset.weights_path, lambda tmp: shutil.copyfile(weights, tmp))

    def change(card: dict) -> None:
        card["weights"] = {"file": preset.weights_path.name, "sha256": sha256_file(preset.weights_path)}
        card["training"] = {**card.get("training", {}), **record}
        card.pop("validation", None)  # scores belong to the old weights; `hypersr bench quality --update-card`

    update_card(preset, change)


def install_hypernet(preset: Preset, weights: Path, arch: dict, record: dict, extra: dict | None = None) -> None:
    """Copy a trained hypernet into presets/ and describe it in the card (what was recorded of the old one goes)."""
    target = preset.hypernet_path
    atomic_write(target, lambda tmp: shutil.copyfile(weights, tmp))

    def change(card: dict) -> None:
        card["hypernet"] = {"architecture": arch, "weights": {"file": target.name, "sha256": sha256_file(target)}, "training": record,
                            **(extra or {})}

    update_card(preset, change)
