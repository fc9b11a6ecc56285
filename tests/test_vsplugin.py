"""hypersr.vsplugin.upscale in a real VapourSynth core: formats, windows, scene cuts, frame properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import vapoursynth as vs

from hypersr.engine import presets
from hypersr.vsplugin import upscale
from hypersr.vsplugin.io import clip_from_array, clip_to_array

core = vs.core


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).random((5, 3, 24, 32), dtype=np.float32)


def reference(frames: np.ndarray, windows: list[list[int]]) -> np.ndarray:
    model = presets.load_model("fast-x2")
    with torch.inference_mode():
        return np.stack([model(torch.from_numpy(frames[w])[None])[0].clamp(0, 1).numpy() for w in windows])


def test_windows_repeat_at_clip_ends(frames):
    out = clip_to_array(upscale(clip_from_array(frames), device="cpu"))
    windows = [[max(n - 1, 0), n, min(n + 1, 4)] for n in range(5)]
    np.testing.assert_allclose(out, reference(frames, windows), atol=1e-5)


def test_windows_stop_at_scene_changes(frames):
    clip = clip_from_array(frames)
    clip = core.std.SetFrameProps(clip[:2], _SceneChangeNext=0) + core.std.SetFrameProps(clip[2], _SceneChangePrev=1) + clip[3:]
    clip = core.std.SetFrameProps(clip[:1], _SceneChangeNext=0) + core.std.SetFrameProps(clip[1], _SceneChangeNext=1) + clip[2:]
    out = clip_to_array(upscale(clip, device="cpu"))
    windows = [[0, 0, 1], [0, 1, 1], [2, 2, 3], [2, 3, 4], [3, 4, 4]]
    np.testing.assert_allclose(out, reference(frames, windows), atol=1e-5)


def test_frame_properties_and_size(frames):
    clip = core.std.SetFrameProps(clip_from_array(frames), MyTag=7)
    out = upscale(clip, device="cpu")
    assert (out.width, out.height, out.num_frames, out.format.id) == (64, 48, 5, vs.RGBS)
    assert out.get_frame(3).props["MyTag"] == 7


def test_rgbh_in_and_out(frames):
    clip = core.resize.Point(clip_from_array(frames), format=vs.RGBH)
    out = upscale(clip, device="cpu")
    assert out.format.id == vs.RGBH
    ref = clip_to_array(upscale(clip_from_array(frames), device="cpu"))
    np.testing.assert_allclose(clip_to_array(out), ref, atol=2e-3)  # fp16 storage


def test_wrong_format_names_the_conversion():
    yuv = core.std.BlankClip(format=vs.YUV420P8, width=64, height=48, length=2)
    with pytest.raises(vs.Error, match=r"core\.resize\.Bicubic\(clip, format=vs\.RGBS"):
        upscale(yuv)


def test_too_small_frames():
    tiny = core.std.BlankClip(format=vs.RGBS, width=8, height=8, length=2)
    with pytest.raises(vs.Error, match="minimum"):
        upscale(tiny)
