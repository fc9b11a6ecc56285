"""The real-source degradation model: each operation does what it says, measured."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hypersr.engine import degradation as deg
from hypersr.training.degradation import degrade_windows


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of the luma (4:2:0 chroma loss would hide what the codec's quality setting does)."""
    return float(10 * torch.log10(1 / ((deg.to_ycc(a)[:, 0] - deg.to_ycc(b)[:, 0]) ** 2).mean()))


@pytest.fixture(scope="module")
def textured_clip() -> torch.Tensor:
    """8 frames of a smooth, detailed pattern panning 1 px per frame: [8, 3, 128, 128]."""
    y, x = torch.meshgrid(torch.arange(128.0), torch.arange(160.0), indexing="ij")
    base = torch.stack([0.5 + 0.4 * torch.sin(x / 5) * torch.cos(y / 7), 0.5 + 0.3 * torch.sin((x + y) / 9), 0.5 + 0.2 * torch.cos(x / 3)])
    return torch.stack([base[:, :, i : i + 128] for i in range(8)])


@pytest.mark.parametrize("sigma", [0.5, 1.2, 2.5])
def test_blur_width_is_its_sigma(sigma):
    impulse = torch.zeros(1, 3, 41, 41)
    impulse[..., 20, 20] = 1
    out = deg.blur(impulse, sigma, sigma, 0.0)[0, 0]
    assert abs(float(out.sum()) - 1) < 1e-4
    r = torch.arange(41.0) - 20
    measured = math.sqrt(float((out.sum(0) * r**2).sum()))  # the standard deviation along x
    assert abs(measured - sigma) < 0.08 * sigma  # a sampled Gaussian is a little narrower at small sigma


def test_anisotropic_blur_follows_theta():
    impulse = torch.zeros(1, 3, 41, 41)
    impulse[..., 20, 20] = 1
    along_x = deg.blur(impulse, 2.0, 0.5, 0.0)[0, 0]
    along_y = deg.blur(impulse, 2.0, 0.5, math.pi / 2)[0, 0]
    r = torch.arange(41.0) - 20
    sx = math.sqrt(float((along_x.sum(0) * r**2).sum()))
    sy = math.sqrt(float((along_x.sum(1) * r**2).sum()))
    assert abs(sx - 2.0) < 0.1 and abs(sy - 0.5) < 0.05
    torch.testing.assert_close(along_y, along_x.T, atol=1e-6, rtol=0)


def test_downscalers():
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2).float().expand(1, 3, 64, 64)  # 1-pixel checkerboard
    point = deg.downscale(checker, 2, "point")
    assert point.shape == (1, 3, 32, 32) and float(point.std()) == 0.0 and float(point.mean()) in (0.0, 1.0)  # aliased: all one colour
    for method in ("bicubic-aa", "area", "lanczos"):  # antialiased: the pattern becomes grey
        out = deg.downscale(checker, 2, method)
        assert abs(float(out.mean()) - 0.5) < 0.01 and float(out.std()) < 0.02, method
    ramp = torch.linspace(0, 1, 64).expand(1, 3, 64, 64).contiguous()
    area = deg.downscale(ramp, 2, "area")
    torch.testing.assert_close(area[0, 0, 0], ramp[0, 0, 0].reshape(32, 2).mean(1))  # area: means of 2x2 blocks
    for method in deg.DOWNSCALERS:  # every method keeps a smooth ramp (no shift, no gain)
        out = deg.downscale(ramp, 2, method)
        assert (out[0, 0, 0, 1:-1] - ramp[0, 0, 0, 2:-2:2] - (0.5 / 63 if method != "point" else 1 / 63)).abs().max() < 0.02, method
    with pytest.raises(ValueError, match="unknown downscaler"):
        deg.downscale(ramp, 2, "cubic-spline")


@pytest.mark.parametrize("sigma", [2 / 255, 5 / 255, 10 / 255])
def test_noise_level_and_grain(sigma):
    grey = torch.full((4, 3, 96, 96), 0.5)
    rng = np.random.default_rng(0)
    noisy = deg.add_noise(grey, sigma, 0.0, False, rng)
    y = deg.to_ycc(noisy)
    assert abs(float(y[:, 0].std()) - sigma) < 0.05 * sigma  # luma noise at its sigma
    assert float(y[:, 1:].std()) < 1e-4  # no chroma noise asked for
    assert abs(float((noisy[1] - noisy[0]).std()) - math.sqrt(2) * float(noisy[0].std())) < 0.1 * float(noisy[0].std())  # new per frame
    grain = deg.add_noise(grey, sigma, sigma, True, rng)
    assert float((grain[1] - grain[0]).abs().max()) == 0.0 and abs(float(deg.to_ycc(grain)[:, 1].std()) - sigma) < 0.05 * sigma


def test_chroma_420_keeps_luma_and_loses_chroma_detail():
    ycc = torch.full((1, 3, 32, 32), 0.5)
    ycc[0, 0] = torch.rand(32, 32)  # luma detail
    ycc[0, 1] = 0.5 + 0.2 * ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2 - 0.5)  # chroma checkerboard
    out = deg.to_ycc(deg.chroma_420(deg.to_rgb(ycc)))
    assert float((out[0, 0] - ycc[0, 0]).abs().max()) < 1e-5
    assert float(ycc[0, 1].std()) > 0.09 and float(out[0, 1].std()) < 0.01


@pytest.mark.parametrize("codec, good, bad", [("h264", 18, 38), ("mpeg2", 2, 15), ("mjpeg", 2, 15)])
def test_codec_decodes_and_follows_its_quality(textured_clip, codec, good, bad):
    lr = deg.downscale(textured_clip, 2, "bicubic-aa")
    hi, lo = deg.encode(lr, codec, good), deg.encode(lr, codec, bad)
    assert hi.shape == lo.shape == lr.shape
    assert _psnr(hi, lr) > _psnr(lo, lr) + 3  # the quality setting does what it says
    assert _psnr(lo, lr) > 18  # still the same picture
    assert float((hi - lr).abs().max()) > 0  # and really encoded
    torch.testing.assert_close(deg.encode(lr, codec, good), hi, atol=0, rtol=0)  # deterministic


def test_codec_handles_odd_sizes(textured_clip):
    lr = deg.downscale(textured_clip[:3, :, :66, :62], 2, "area")  # 31 x 33
    assert deg.encode(lr, "h264", 20).shape == lr.shape


def test_apply_every_chain(textured_clip):
    for name, d in deg.CHAINS.items():
        lr = deg.apply(textured_clip[:4], 2, d, np.random.default_rng(1))
        assert lr.shape == (4, 3, 64, 64), name
        assert torch.equal(lr, deg.quantise(lr)), name  # 8-bit
        assert _psnr(deg.downscale(lr, 1, "area"), deg.downscale(textured_clip[:4], 2, "bicubic-aa")) > 20, name
    assert len(deg.CHAINS) >= 8 and deg.CHAINS["bi"].is_bi


def test_sampling_is_reproducible_and_mixed():
    a = [deg.sample(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    drawn = [deg.sample(rng) for _ in range(400)]
    assert 0.12 < sum(d.is_bi for d in drawn) / 400 < 0.3  # the clean case stays in the mixture
    assert {d.codec for d in drawn} == {None, "h264", "mpeg2", "mjpeg"}
    assert {d.downscaler for d in drawn} == set(deg.DOWNSCALERS)
    assert any(d.static_noise for d in drawn) and any(d.blur and d.blur[0] != d.blur[1] for d in drawn)
    assert all(0 <= d.noise <= 10 / 255 and (d.blur is None or max(d.blur[:2]) <= 2.5) for d in drawn)


def test_windows_carry_their_degradation(textured_clip):
    windows = textured_clip[:6].reshape(2, 3, 3, 128, 128)
    lr, ds = degrade_windows(windows, 2, np.random.default_rng(3))
    assert lr.shape == (2, 3, 3, 64, 64) and len(ds) == 2 and all(isinstance(d, deg.Degradation) for d in ds)
    assert set(ds[0].to_dict()) >= {"blur", "downscaler", "noise", "codec", "quality"}
