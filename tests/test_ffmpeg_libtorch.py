"""FFmpeg's own dnn_processing filter (LibTorch backend) running `hypersr export torchscript`.

The FFmpeg is a real FFmpeg 7.1 built with --enable-libtorch against the torch hypersr installs
(ffmpeg_filter/build_ffmpeg.sh, cached under $HYPERSR_CACHE or ~/.cache/hypersr after the first build, a few minutes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SAMPLE, preset_lora, run_hypersr

from hypersr.engine import preset_registry
from hypersr.engine.lora import save_lora

BUILD = Path(__file__).parents[1] / "ffmpeg_filter" / "build_ffmpeg.sh"
W, H, FRAMES = 96, 64, 6


pytestmark = pytest.mark.timeout(3600)  # the first run builds FFmpeg

BUILD_TOOLS = ("apt-get", "gcc", "g++", "make", "tar", "xz")


@pytest.fixture(scope="module")
def ffmpeg_torch() -> str:
    missing = [t for t in BUILD_TOOLS if shutil.which(t) is None]
    if missing:  # .ci/run installs them; a bare `make test` elsewhere says what it left out
        pytest.skip(f"building FFmpeg with libtorch needs {', '.join(missing)} (apt-get install build-essential xz-utils)")
    proc = subprocess.run([str(BUILD), sys.executable], capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def rgb_frames(tmp_path_factory) -> np.ndarray:
    """Real video frames as rgb24, [T, H, W, 3] uint8."""
    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(SAMPLE), "-frames:v", str(FRAMES), "-vf", f"scale={W}:{H}",
                          "-pix_fmt", "rgb24", "-f", "rawvideo", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(FRAMES, H, W, 3)


def run_dnn_processing(ffmpeg: str, model: Path, frames: np.ndarray, scale: int) -> np.ndarray:
    cmd = [ffmpeg, "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-i", "-",
           "-vf", f"format=rgb24,dnn_processing=dnn_backend=torch:model={model}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return np.frombuffer(proc.stdout, np.uint8).reshape(len(frames), H * scale, W * scale, 3)


def hypersr_causal(model: Path, frames: np.ndarray) -> np.ndarray:
    """The same exported module run by hypersr's torch, frame by frame in order, as 8-bit RGB."""
    module = torch.jit.load(str(model))
    with torch.inference_mode():
        module(torch.rand(1, 3, H, W))  # FFmpeg's trial call
        outs = [module(torch.from_numpy(f.copy()).permute(2, 0, 1)[None].float() / 255)[0] for f in frames]
    return (torch.stack(outs).permute(0, 2, 3, 1) * 255).numpy()


@pytest.mark.parametrize("variant", ["causal", "single", "lora"])
def test_ffmpeg_dnn_processing_matches_hypersr(ffmpeg_torch, rgb_frames, tmp_path, variant):
    model = tmp_path / "model.pt"
    extra = {"causal": [], "single": ["--single"], "lora": ["--lora", tmp_path / "clip.lora"]}[variant]
    if variant == "lora":
        save_lora(preset_lora(preset_registry.get("fast-x2")), tmp_path / "clip.lora")
    proc = run_hypersr("export", "torchscript", "-o", model, *extra)
    assert proc.returncode == 0, proc.stderr.decode()
    theirs = run_dnn_processing(ffmpeg_torch, model, rgb_frames, 2).astype(np.float32)
    ours = hypersr_causal(model, rgb_frames)
    # FFmpeg converts its float output to 8 bits itself; the two agree to that rounding.
    assert np.abs(theirs - ours).max() <= 1.0
    # and the network really ran: FFmpeg's output is not its plain bicubic scaler's
    bicubic = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-i", "-",
                              "-vf", f"scale={2 * W}:{2 * H}:flags=bicubic", "-f", "rawvideo", "-"],
                             input=rgb_frames.tobytes(), capture_output=True, check=True).stdout
    assert np.abs(theirs - np.frombuffer(bicubic, np.uint8).reshape(theirs.shape)).mean() > 0.5
