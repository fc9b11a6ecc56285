"""Exported networks agree with hypersr's own output: ONNX inside VapourSynth with vs-mlrt's ORT
plugin, TorchScript called the way FFmpeg's dnn_processing LibTorch backend calls it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import vapoursynth as vs
from helpers import assert_clean_error, preset_lora, run_hypersr

from hypersr.engine import preset_registry
from hypersr.engine.lora import save_lora
from hypersr.vsplugin import Backend, upscale, window_clips
from hypersr.vsplugin.io import clip_from_array, clip_to_array

core = vs.core


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(5).random((4, 3, 36, 44), dtype=np.float32)


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora") / "clip.lora"
    save_lora(preset_lora(preset_registry.get("fast-x2")), path)
    return path


@pytest.mark.parametrize("with_lora", [False, True])
def test_onnx_in_vs_mlrt_matches_hypersr(tmp_path, frames, lora_file, with_lora):
    if not hasattr(core, "ort"):
        pytest.fail("vs-mlrt's ORT plugin is missing: pip install vapoursynth-mlrt-ort (part of hypersr[dev])")
    onnx = tmp_path / "m.onnx"
    extra = ["--lora", lora_file] if with_lora else []
    proc = run_hypersr("export", "onnx", "-o", onnx, *extra)
    assert proc.returncode == 0, proc.stderr.decode()
    clip = clip_from_array(frames)
    ours = clip_to_array(upscale(clip, lora=str(lora_file) if with_lora else None, backend=Backend.CPU()))
    theirs = clip_to_array(core.ort.Model(window_clips(clip, 1), network_path=str(onnx), provider="CPU"))
    assert theirs.shape == ours.shape == (4, 3, 72, 88)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_torchscript_called_like_ffmpeg(tmp_path, frames):
    path = tmp_path / "m.pt"
    assert run_hypersr("export", "torchscript", "-o", path).returncode == 0
    module = torch.jit.load(str(path))
    assert next(module.parameters()).device.type == "cpu"  # FFmpeg takes the device from the first parameter
    model = preset_registry.load_model("fast-x2")
    with torch.inference_mode():
        module(torch.rand(1, 3, *frames.shape[-2:]) * 1e6)  # FFmpeg's trial call: uninitialised memory, same size
        for n in range(len(frames)):
            out = module(torch.from_numpy(frames[n])[None])
            causal = [max(n - 1, 0), n, n]  # previous, current, current again
            ref = model(torch.from_numpy(frames[causal])[None]).clamp(0, 1)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
        small = torch.from_numpy(frames[:, :, :20, :24])
        for n, causal in ((0, [0, 0, 0]), (1, [0, 1, 1])):  # a new frame size starts the window over
            torch.testing.assert_close(module(small[n][None]), model(small[causal][None]).clamp(0, 1), atol=1e-5, rtol=0)


def test_torchscript_single_frame_variant(tmp_path, frames):
    path = tmp_path / "s.pt"
    assert run_hypersr("export", "torchscript", "-o", path, "--single").returncode == 0
    module = torch.jit.load(str(path))
    model = preset_registry.load_model("fast-x2")
    with torch.inference_mode():
        for n in (2, 0):
            ref = model(torch.from_numpy(frames[[n, n, n]])[None]).clamp(0, 1)
            torch.testing.assert_close(module(torch.from_numpy(frames[n])[None]), ref, atol=1e-5, rtol=0)


def test_export_bad_input(tmp_path, lora_file):
    assert_clean_error(run_hypersr("export", "onnx", "-o", tmp_path / "m.onnx", "--preset", "nope"), "unknown preset")
    save_lora(preset_lora(preset_registry.get("fast-x2"), preset="fast-x4", upscale_factor=4), tmp_path / "x4.lora")
    assert_clean_error(run_hypersr("export", "torchscript", "-o", tmp_path / "m.pt", "--lora", tmp_path / "x4.lora"), "fast-x4")
    assert_clean_error(run_hypersr("export", "onnx", "-o", tmp_path / "no" / "m.onnx"), "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x4.lora"]
