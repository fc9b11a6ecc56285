"""The real-source benchmark's parts: the HR-fitted ceiling, the tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hypersr.engine import degradation as deg
from hypersr.engine import preset_registry
from hypersr.engine.lora import lora_applied
from hypersr.training import bench_real
from hypersr.training.metrics import y_psnr


@pytest.fixture(scope="module")
def hr() -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(96.0), torch.arange(128.0), indexing="ij")
    frame = torch.stack([0.5 + 0.4 * torch.sin(x / 6) * torch.cos(y / 5), 0.5 + 0.3 * torch.sin((x + y) / 9), 0.5 + 0.2 * torch.cos(x / 4)])
    return torch.stack([frame.roll(i, -1) for i in range(4)])


def test_ceiling_fits_the_clip_better_than_the_prediction(hr):
    p = preset_registry.get("fast-x2")
    base = preset_registry.load_model(p)
    hypernet, _ = preset_registry.load_hypernet(p, base)
    lr = deg.apply(hr, 2, deg.CHAINS["h264-crf33"], np.random.default_rng(0))
    from hypersr.engine.lora import lora_applied
    from hypersr.training.train import upscale_clip

    with torch.no_grad():
        predicted = hypernet.factors(hypernet.summarise(lr, base))
        with lora_applied(base, predicted):
            before = y_psnr(deg.quantise(upscale_clip(base, lr)), hr)
    fitted = bench_real.fit_lora_with_hr(base, hypernet, lr, hr, 2, steps=60)
    with torch.no_grad(), lora_applied(base, fitted):
        after = y_psnr(deg.quantise(upscale_clip(base, lr)), hr)
    assert after > before + 0.2


def test_bench_tables(hr):
    results, picture = bench_real.bench_real(["fast-x2"], {"pattern": hr}, ["bi", "h264-crf33"], refine=0, ceiling=False, progress=lambda s: None)
    assert set(results) == {"bi", "h264-crf33"} and {"lanczos", "fast-x2"} <= set(results["bi"]["pattern"])
    for chain in results.values():
        for r in chain["pattern"].values():
            assert isinstance(r, str) or (20 < r["y_psnr"] < 80 and 0 < r["ssim"] <= 1)
    assert results["bi"]["pattern"]["fast-x2"]["y_psnr"] > results["h264-crf33"]["pattern"]["fast-x2"]["y_psnr"]  # the codec costs
    table = bench_real.summarise(results)
    assert table["mean (degraded)"]["fast-x2"] == table["h264-crf33"]["fast-x2"]
    assert abs(table["mean"]["lanczos"]["y_psnr"] - np.mean([table[c]["lanczos"]["y_psnr"] for c in ("bi", "h264-crf33")])) < 1e-9
    text = bench_real.format_table(table)
    assert "| mean (degraded)" in text and "fast-x2" in text.splitlines()[0]
    assert picture["chain"] == "h264-crf33" and "original" in picture["columns"]


def test_chain_lora_learns_the_chain_on_clips_it_never_saw():
    from test_training import waves

    from hypersr.training.data import ClipSampler, Pack

    p = preset_registry.get("fast-x2")
    base = preset_registry.load_model(p)
    hypernet, _ = preset_registry.load_hypernet(p, base)
    pack = Pack(waves(np.random.default_rng(0), 8, 192), [], {}, {})
    fitted = bench_real.fit_chain_lora(base, hypernet, pack, "blur-noise", 2, clips=16, steps=80)
    rng = np.random.default_rng(99)  # other clips, the same chain
    hr = torch.stack([ClipSampler(pack.scenes, [], 3, 128, multi_shot_fraction=0.0).sample(rng)[0] for _ in range(4)])
    lr = torch.stack([deg.apply(h, 2, deg.CHAINS["blur-noise"], rng) for h in hr])
    with torch.no_grad():
        before = y_psnr(deg.quantise(base(lr)), hr[:, 1])
        with lora_applied(base, fitted):
            after = y_psnr(deg.quantise(base(lr)), hr[:, 1])
    assert after > before + 0.3
