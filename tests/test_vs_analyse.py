"""Both passes in VapourSynth: hypersr.vsplugin.analyse (with its cache) and upscale(lora=...), in the real
core and under the real vspipe, on a real video read with vapoursynth-bestsource."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import vapoursynth as vs
from helpers import SAMPLE

from hypersr.engine.analyse import fingerprint_indices
from hypersr.engine.lora import load_lora
from hypersr.ffmpeg_filter.y4m import Y4MReader
from hypersr.vsplugin import Backend, analyse, upscale
from hypersr.vsplugin.io import clip_to_array

core = vs.core


@pytest.fixture(scope="module")
def rgb():
    src = core.resize.Bicubic(core.bs.VideoSource(str(SAMPLE))[:10], 160, 96)
    return core.resize.Bicubic(src, format=vs.RGBS, matrix_in_s="709")


def counting(clip, fetched: list):
    def count(n, f):
        fetched.append(n)
        return f

    return core.std.ModifyFrame(clip, clip, count)


def test_two_passes_under_vspipe(tmp_path):
    script = tmp_path / "movie.vpy"
    script.write_text(
        "import vapoursynth as vs\n"
        "from hypersr import vsplugin as hsr\n"
        "core = vs.core\n"
        f"src = core.resize.Bicubic(core.bs.VideoSource({str(SAMPLE)!r})[:8], 160, 96)\n"
        'rgb = core.resize.Bicubic(src, format=vs.RGBS, matrix_in_s="709")\n'
        f"lora = hsr.analyse(rgb, cache={str(tmp_path / 'movie.lora')!r})\n"
        'out = hsr.upscale(rgb, lora=lora, backend=hsr.Backend.CPU())\n'
        'core.resize.Bicubic(out, format=vs.YUV420P10, matrix_s="709").set_output()\n'
    )
    vspipe = str(Path(sys.executable).parent / "vspipe")
    runs = []
    for requests in ("1", "8", "8"):
        proc = subprocess.run([vspipe, "-c", "y4m", "-r", requests, str(script), "-"], capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        runs.append(proc)
    assert b"hypersr analyse" in runs[0].stderr  # pass one ran (progress on stderr) ...
    assert b"hypersr analyse" not in runs[1].stderr  # ... once: later runs take the cache
    assert runs[0].stdout == runs[1].stdout == runs[2].stdout
    reader = Y4MReader(io.BytesIO(runs[0].stdout))  # stdout is nothing but the video
    n = 0
    while reader.read() is not None:
        n += 1
    assert (reader.header.width, reader.header.height, n, reader.truncated) == (320, 192, 8, None)
    assert load_lora(tmp_path / "movie.lora").made_by["frames"] == 8


def test_cache_is_reused_reading_only_the_fingerprint_frames(rgb, tmp_path):
    cache = str(tmp_path / "c.lora")
    fetched: list[int] = []
    first = analyse(counting(rgb, fetched), cache=cache, progress=False)
    assert sorted(set(fetched)) == list(range(10))
    fetched.clear()
    again = analyse(counting(rgb, fetched), cache=cache, progress=False)
    assert set(fetched) <= set(fingerprint_indices(10))
    assert again.clip_fingerprint == first.clip_fingerprint
    a = clip_to_array(upscale(rgb[:3], lora=first, backend=Backend.CPU()))
    b = clip_to_array(upscale(rgb[:3], lora=cache, backend=Backend.CPU()))
    np.testing.assert_array_equal(a, b)  # a LoRA object and its file give the same video


@pytest.mark.parametrize("change, words", [
    ("clip", "another clip"),
    ("refine", "refine"),
    ("corrupt", "unreadable"),
])
def test_cache_for_something_else_is_rebuilt_with_a_notice(rgb, tmp_path, capfd, change, words):
    cache = tmp_path / "c.lora"
    made = analyse(rgb, cache=str(cache), progress=False)
    capfd.readouterr()
    clip, refine = rgb, 0
    if change == "clip":
        clip = core.std.Invert(rgb)  # same size and length, other content
    elif change == "refine":
        refine = 2
    else:
        cache.write_bytes(cache.read_bytes()[:100])
    rebuilt = analyse(clip, cache=str(cache), refine=refine, progress=False)
    notice = [line for line in capfd.readouterr().err.splitlines() if line.startswith("hypersr.analyse:")]
    assert len(notice) == 1 and words in notice[0] and "analysing again" in notice[0]
    assert load_lora(cache).clip_fingerprint == rebuilt.clip_fingerprint
    assert load_lora(cache).made_by["refine"] == refine
    if change == "clip":
        assert rebuilt.clip_fingerprint != made.clip_fingerprint


def test_a_cache_refined_for_another_kind_of_source_is_rebuilt(rgb, tmp_path, capfd):
    """real-x2 refines for the source kind the script declares; a cache refined for another kind is not it."""
    from hypersr.engine.analyse import analyse_frames
    from hypersr.engine.lora import save_lora

    cache = tmp_path / "r.lora"
    with pytest.raises(vs.Error, match="declared kind of source"):
        analyse(rgb, cache=str(cache), preset="real-x2", refine=2, progress=False)
    with pytest.raises(vs.Error, match="does not refine for mjpeg sources"):
        analyse(rgb, cache=str(cache), preset="real-x2", refine=2, source_kind="mjpeg", progress=False)
    assert not cache.exists()
    # refined for an MJPEG source the way only the benchmarks may (the preset refuses that kind)
    save_lora(analyse_frames(clip_to_array(rgb), "real-x2", refine=2, measure_refused_refine=True, source_kind="mjpeg"), cache)
    rebuilt = analyse(rgb, cache=str(cache), preset="real-x2", refine=2, source_kind="aliased", progress=False)
    notice = [line for line in capfd.readouterr().err.splitlines() if line.startswith("hypersr.analyse:")]
    assert len(notice) == 1 and "another kind of source (mjpeg)" in notice[0]
    assert rebuilt.made_by["source_kind"] == load_lora(cache).made_by["source_kind"] == "aliased"
    again = analyse(rgb, cache=str(cache), preset="real-x2", refine=2, source_kind="aliased", progress=False)
    assert not capfd.readouterr().err  # the same settings: the cache as it is
    assert all(np.array_equal(again.factors[k][1].numpy(), rebuilt.factors[k][1].numpy()) for k in rebuilt.factors)


def test_analyse_bad_input(rgb, tmp_path):
    with pytest.raises(vs.Error, match=r"hypersr\.analyse: clip is YUV420P8.*core\.resize\.Bicubic"):
        analyse(core.std.BlankClip(format=vs.YUV420P8, width=64, height=48, length=2))
    a = core.std.BlankClip(format=vs.RGBS, width=32, height=32, length=2)
    with pytest.raises(vs.Error, match="variable"):
        analyse(core.std.Splice([a, core.std.BlankClip(a, width=48)], mismatch=True))
    with pytest.raises(vs.Error, match="RGBS or RGBH"):
        analyse(core.std.BlankClip(format=vs.RGB24, width=32, height=32, length=2))
    with pytest.raises(vs.Error, match="smaller than"):
        analyse(core.std.BlankClip(format=vs.RGBS, width=12, height=12, length=2))
    with pytest.raises(vs.Error, match="unknown preset"):
        analyse(rgb, preset="nope")
    with pytest.raises(vs.Error, match="cannot write"):
        analyse(rgb[:2], cache=str(tmp_path / "missing" / "c.lora"), progress=False)
    lora = analyse(rgb[:2], progress=False)
    with pytest.raises(vs.Error, match="made for preset fast-x2"):
        upscale(rgb, lora=lora, preset="fast-x4")


def test_a_refused_refine_is_refused_even_with_a_cache_that_matches(rgb, tmp_path):
    """A cache made before a preset came to refuse --refine (here: made by the benchmarks' way around the
    refusal) must not be handed back for refine=3: the refusal comes first, and the cache is left as it is."""
    from hypersr.engine.analyse import analyse_frames
    from hypersr.engine.lora import save_lora

    cache = tmp_path / "old.lora"
    save_lora(analyse_frames(clip_to_array(rgb), "quality-x2", refine=3, measure_refused_refine=True), cache)
    before = cache.read_bytes()
    with pytest.raises(vs.Error, match="takes no --refine"):
        analyse(rgb, cache=str(cache), preset="quality-x2", refine=3, progress=False)
    assert cache.read_bytes() == before
    assert analyse(rgb, cache=str(cache), preset="quality-x2", progress=False).made_by["refine"] == 0  # without it: analysed again
