"""Quality floors for the shipped x2 presets' weights and hypernets on the bundled clip (held out from training),
through the same path as `make demo`: BI x1/2 -> y4m -> `hypersr analyse --refine 10` (no --refine for a preset
that takes none) and `hypersr upscale`
(with and without the LoRA) -> compare with the original."""

from __future__ import annotations

import pytest
from helpers import SAMPLE

from hypersr.cli.demo import run_demo

# Measured with `hypersr demo --preset NAME` (README): one pass's Y-PSNR gain over bicubic, and two passes
# (`analyse --refine 10`, `upscale --lora`) over one pass. fast-x2 (pack-v2 weights): bicubic 33.45, one pass
# 35.77, two passes 35.84 dB; vsrt-x2 (the transformer on quality-x2's backbone, 2026-12-07; no --refine): one pass
# 36.49, two passes 36.49 dB; quality-x2 (the official SPAN weights,
# 2026-11-30; it takes no --refine since 2026-12-06, so its pass one is the hypernet alone): one pass 36.49, two
# passes 36.49 dB. The margins leave room for other CPUs and library versions; the floors fail if the weights or
# the hypernet regress.
MEASURED = {"fast-x2": (2.32, 0.07), "vsrt-x2": (3.04, 0.00), "quality-x2": (3.04, 0.00)}
MARGIN_DB = 0.3
TWO_PASS_MARGIN_DB = 0.05


@pytest.mark.parametrize("preset", list(MEASURED))
def test_preset_beats_bicubic_and_lanczos_on_the_bundled_clip(tmp_path, preset):
    gain, two_pass_gain = MEASURED[preset]
    scores = run_demo(str(SAMPLE), str(tmp_path), preset, "cpu")
    one = scores[f"hypersr {preset}"]
    assert one - scores["bicubic"] >= gain - MARGIN_DB, scores
    assert one > scores["lanczos"], scores
    assert scores[f"hypersr {preset} two-pass"] - one >= two_pass_gain - TWO_PASS_MARGIN_DB, scores
    assert (tmp_path / "bbb_640x360.lora").stat().st_size > 0
    assert (tmp_path / "bbb_640x360_compare.png").stat().st_size > 10_000
    assert (tmp_path / "bbb_640x360_x2.y4m").stat().st_size > 0
