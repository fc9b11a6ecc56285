"""The degradation probe of `hypersr bench real` on a small pack of smooth synthetic scenes."""

from __future__ import annotations

import numpy as np

from hypersr.training import bench_real
from hypersr.training.data import Pack


def test_probe_reports_every_parameter():
    rng = np.random.default_rng(0)
    y, x = np.meshgrid(np.arange(320), np.arange(320), indexing="ij")
    scenes = np.stack([(127 + 100 * np.sin(x / f + p) * np.cos(y / (f + 2))).astype(np.uint8)[..., None].repeat(3, -1)
                       for f, p in zip(rng.uniform(3, 12, 6), rng.uniform(0, 6, 6))])
    probe = bench_real.degradation_probe("fast-x2", Pack(scenes, [], {}, {}), n_train=40, n_test=20, frames=3, size=64)
    assert set(probe) == {"noise sigma (x255)", "blur sigma (HR px)", "H.264 CRF", "codec (none/H.264/MPEG-2/MJPEG)", "point-sampled downscale"}
    for what in ("noise sigma (x255)", "blur sigma (HR px)"):
        r = probe[what]
        assert r["test_clips"] == 20 and np.isfinite(r["probe_mae"]) and r["mean_guess_mae"] > 0
    assert 0 < probe["H.264 CRF"]["test_clips"] < 20  # scored on the H.264 clips alone
    codec = probe["codec (none/H.264/MPEG-2/MJPEG)"]
    assert 0 <= codec["accuracy"] <= 1 and 0.25 <= codec["majority_guess"] <= 1 and codec["test_clips"] == 20
    point = probe["point-sampled downscale"]
    assert point["test_clips"] == 20 and 0 <= point["share"] < 1
    assert np.isnan(point["roc_auc"]) if point["share"] == 0 else 0 <= point["roc_auc"] <= 1


def test_roc_auc_counts_ordered_pairs():
    positive = np.array([True, True, False, False, False])
    assert bench_real.roc_auc(np.array([0.9, 0.8, 0.1, 0.2, 0.3]), positive) == 1.0
    assert bench_real.roc_auc(np.array([0.0, 0.1, 0.5, 0.6, 0.7]), positive) == 0.0
    assert bench_real.roc_auc(np.array([0.5, 0.2, 0.5, 0.1, 0.3]), positive) == (1 + 0.5 + 2 + 0 + 0 + 0) / 6  # 0.5 ties 0.5
    assert np.isnan(bench_real.roc_auc(np.array([0.1, 0.2]), np.array([False, False])))
