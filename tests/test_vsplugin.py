"""hypersr.vsplugin.upscale in a real VapourSynth core: formats, windows, scene cuts, frame properties."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import vapoursynth as vs

from hypersr.engine import preset_registry
from hypersr.vsplugin import Backend, analyse, upscale
from hypersr.vsplugin.io import clip_from_array, clip_to_array

core = vs.core


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).random((5, 3, 24, 32), dtype=np.float32)


def reference(frames: np.ndarray, windows: list[list[int]]) -> np.ndarray:
    model = preset_registry.load_model("fast-x2")
    with torch.inference_mode():
        return np.stack([model(torch.from_numpy(frames[w])[None])[0].clamp(0, 1).numpy() for w in windows])


def test_windows_repeat_at_clip_ends(frames):
    out = clip_to_array(upscale(clip_from_array(frames), backend=Backend.CPU()))
    windows = [[max(n - 1, 0), n, min(n + 1, 4)] for n in range(5)]
    np.testing.assert_allclose(out, reference(frames, windows), atol=1e-5)


def test_windows_stop_at_scene_changes(frames):
    clip = clip_from_array(frames)
    clip = core.std.SetFrameProps(clip[:2], _SceneChangeNext=0) + core.std.SetFrameProps(clip[2], _SceneChangePrev=1) + clip[3:]
    clip = core.std.SetFrameProps(clip[:1], _SceneChangeNext=0) + core.std.SetFrameProps(clip[1], _SceneChangeNext=1) + clip[2:]
    out = clip_to_array(upscale(clip, backend=Backend.CPU()))
    windows = [[0, 0, 1], [0, 1, 1], [2, 2, 3], [2, 3, 4], [3, 4, 4]]
    np.testing.assert_allclose(out, reference(frames, windows), atol=1e-5)


def test_frame_properties_and_size(frames):
    clip = core.std.SetFrameProps(clip_from_array(frames), MyTag=7)
    out = upscale(clip, backend=Backend.CPU())
    assert (out.width, out.height, out.num_frames, out.format.id) == (64, 48, 5, vs.RGBS)
    assert out.get_frame(3).props["MyTag"] == 7


def test_rgbh_in_and_out(frames):
    clip = core.resize.Point(clip_from_array(frames), format=vs.RGBH)
    out = upscale(clip, backend=Backend.CPU())
    assert out.format.id == vs.RGBH
    ref = clip_to_array(upscale(clip_from_array(frames), backend=Backend.CPU()))
    np.testing.assert_allclose(clip_to_array(out), ref, atol=2e-3)  # fp16 storage


def test_wrong_format_names_the_conversion():
    yuv = core.std.BlankClip(format=vs.YUV420P8, width=64, height=48, length=2)
    with pytest.raises(vs.Error, match=r"core\.resize\.Bicubic\(clip, format=vs\.RGBS"):
        upscale(yuv)


def test_too_small_frames():
    tiny = core.std.BlankClip(format=vs.RGBS, width=8, height=8, length=2)
    with pytest.raises(vs.Error, match="minimum"):
        upscale(tiny)


@pytest.mark.parametrize("preset", ["fast-x2", "quality-x2"])  # quality-x2's receptive radius (21) is beyond the old fixed pad of 16
def test_tiled_output_equals_untiled(frames, preset):
    from hypersr.training.span_import import smooth_tiles

    # image-like input: on white noise SPAN's activations grow large enough that the convolution algorithm
    # a tile's size picks changes the output by ~1e-3 (pads of 22 and 24 match exactly, 23 does not)
    big = np.stack(smooth_tiles(3, 40, 52, seed=1))
    whole = clip_to_array(upscale(clip_from_array(big), preset=preset, backend=Backend.CPU()))
    tiled = clip_to_array(upscale(clip_from_array(big), preset=preset, backend=Backend.CPU(), tile=16))  # the default pad
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    seams = clip_to_array(upscale(clip_from_array(big), preset=preset, backend=Backend.CPU(), tile=16, tile_pad=0))
    assert np.abs(seams - whole).max() > 1e-3  # without overlap the seams show: the check can fail


def test_any_order_any_threads_same_output(frames):
    seq = clip_to_array(upscale(clip_from_array(frames), backend=Backend.CPU()))
    old_threads = core.num_threads
    try:
        core.num_threads = 4
        out = upscale(clip_from_array(frames), backend=Backend.CPU(num_streams=3))
        order = [4, 0, 3, 1, 2, 2, 0]
        for n in order:  # out of order, repeated, and concurrently below
            np.testing.assert_allclose(np.stack([np.asarray(out.get_frame(n)[p]) for p in range(3)]), seq[n], atol=0)
        futures = [out.get_frame_async(n) for n in reversed(range(5))]
        for n, fut in zip(reversed(range(5)), futures):
            f = fut.result()
            np.testing.assert_allclose(np.stack([np.asarray(f[p]) for p in range(3)]), seq[n], atol=0)
    finally:
        core.num_threads = old_threads


def test_source_frames_are_not_fetched_again_and_again(frames):
    fetched = []

    def count(n, f):
        fetched.append(n)
        return f

    src = clip_from_array(frames)
    counted = core.std.ModifyFrame(src, src, count)
    clip_to_array(upscale(counted, backend=Backend.CPU()))
    assert sorted(set(fetched)) == list(range(5))
    assert len(fetched) <= 2 * len(frames)  # three windows share each frame through VapourSynth's cache


def test_each_source_frame_is_fetched_once_per_stream(frames):
    """Three windows read each frame; the engine fetches and uploads it once per stream, at any thread count."""
    from hypersr.vsplugin.passes import upscale_clip, upscaler_for

    clip = clip_from_array(frames)
    for streams in (1, 2):
        engine = upscaler_for(clip, backend=Backend.CPU(num_streams=streams))
        out = clip_to_array(upscale_clip(clip, engine))
        np.testing.assert_allclose(out, clip_to_array(upscale(clip, backend=Backend.CPU())), atol=1e-6)
        assert len(frames) <= engine.fetched <= streams * len(frames)


def test_trt_without_tensorrt_says_how_to_install():
    clip = core.std.BlankClip(format=vs.RGBS, width=32, height=32, length=2)
    with pytest.raises(vs.Error, match=r"hypersr\[trt\]"):
        upscale(clip, backend=Backend.TRT())


def test_vspipe_with_any_request_count_gives_the_same_video(tmp_path):
    """A real .vpy under the real vspipe: bestsource -> RGBS -> upscale -> YUV; stdout carries only video."""
    import subprocess
    import sys
    from pathlib import Path

    from helpers import SAMPLE

    script = tmp_path / "up.vpy"
    script.write_text(
        "import vapoursynth as vs\n"
        "from hypersr import vsplugin as hsr\n"
        "core = vs.core\n"
        f"src = core.bs.VideoSource({str(SAMPLE)!r})[:6]\n"
        "src = core.resize.Bicubic(src, 160, 90)\n"
        'rgb = core.resize.Bicubic(src, format=vs.RGBS, matrix_in_s="709")\n'
        'out = hsr.upscale(rgb, backend=hsr.Backend.CPU())\n'
        'core.resize.Bicubic(out, format=vs.YUV420P8, matrix_s="709").set_output()\n'
    )
    vspipe = str(Path(sys.executable).parent / "vspipe")
    outs = []
    for requests in ("1", "8"):
        proc = subprocess.run([vspipe, "-c", "y4m", "-r", requests, str(script), "-"], capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
    import io

    from hypersr.ffmpeg_filter.y4m import Y4MReader

    reader = Y4MReader(io.BytesIO(outs[0]))
    frames = 0
    while reader.read() is not None:
        frames += 1
    assert (reader.header.width, reader.header.height, frames, reader.truncated) == (320, 180, 6, None)


def test_bad_inputs_raise_vapoursynth_errors(tmp_path):
    a = core.std.BlankClip(format=vs.RGBS, width=32, height=32, length=2)
    b = core.std.BlankClip(format=vs.RGBS, width=48, height=32, length=2)
    with pytest.raises(vs.Error, match="variable"):
        upscale(core.std.Splice([a, b], mismatch=True))
    with pytest.raises(vs.Error, match="RGBS or RGBH"):
        upscale(core.std.BlankClip(format=vs.RGB24, width=32, height=32, length=2))
    from helpers import preset_lora

    from hypersr.engine.lora import save_lora

    save_lora(preset_lora(preset_registry.get("fast-x2"), preset="fast-x4", upscale_factor=4), tmp_path / "x4.lora")
    with pytest.raises(vs.Error, match="fast-x4"):
        upscale(a, lora=str(tmp_path / "x4.lora"))
    save_lora(preset_lora(preset_registry.get("fast-x2")), tmp_path / "bad.lora")
    (tmp_path / "bad.lora").write_bytes(b"nonsense")
    with pytest.raises(vs.Error, match="bad.lora"):
        upscale(a, lora=str(tmp_path / "bad.lora"))


@pytest.mark.parametrize("call, words", [
    (lambda c: upscale(c, lora=5), "lora must be a LoRA file's path or a LoRA that analyse returned, not int"),
    (lambda c: upscale(c, lora={"a": 1}), "not dict"),
    (lambda c: analyse(c, refine=1.5, progress=False), "refine must be a whole number of steps, 0 or more, not 1.5"),
    (lambda c: analyse(c, refine="10", progress=False), "not '10'"),
    (lambda c: analyse(c, refine=-1, progress=False), "0 or more, not -1"),
])
def test_wrong_types_from_a_script_are_vapoursynth_errors(call, words):
    """What a .vpy script can pass that the CLI's parser never would: a number as the LoRA, 1.5 refine steps."""
    clip = core.std.BlankClip(format=vs.RGBS, width=32, height=32, length=2)
    with pytest.raises(vs.Error, match=re.escape(words)):
        call(clip)
