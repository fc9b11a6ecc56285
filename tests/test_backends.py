"""Pass two's backends (engine/backends.py): selection, the same output from every backend this machine
has (LoRA merged), the TensorRT engine cache. GPU-only paths run where torch sees CUDA (and TensorRT)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from helpers import SAMPLE, assert_clean_error, ffmpeg_y4m, preset_lora, run_hypersr

from hypersr.engine import preset_registry
from hypersr.engine.backends import (
    Backend,
    EngineCache,
    backend_from_names,
    native_bf16,
    resolve_backend,
    trt_engine_key,
    trt_profile,
)
from hypersr.engine.errors import HypersrError
from hypersr.engine.lora import lora_applied
from hypersr.engine.runtime import Upscaler

CUDA = torch.cuda.is_available()
try:
    import torch_tensorrt  # noqa: F401

    TRT = CUDA
except ImportError:
    TRT = False
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU")
needs_trt = pytest.mark.skipif(not TRT, reason="needs an NVIDIA GPU with TensorRT and Torch-TensorRT")


@pytest.fixture(scope="module")
def window():
    return np.random.default_rng(7).random((3, 3, 40, 52), dtype=np.float32)


@pytest.fixture(scope="module")
def lora():
    return preset_lora(preset_registry.get("fast-x2"))


def reference(window: np.ndarray, lora, preset: str = "fast-x2") -> np.ndarray:
    """The preset's network in fp32 with the LoRA applied unmerged (the definition of the right output)."""
    model = preset_registry.load_model(preset)
    with torch.no_grad(), lora_applied(model, {k: (A * lora.strength, B) for k, (A, B) in lora.factors.items()}):
        return model(torch.from_numpy(window)[None])[0].clamp(0, 1).numpy()


def test_auto_picks_what_the_machine_has():
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    assert resolve_backend(None, torch.device("cpu")) == "cpu"
    assert Upscaler("fast-x2").options.name == ("cuda" if CUDA else "cpu")


@pytest.mark.parametrize("backend, words", [("tensorflow", ["unknown backend", "cpu", "cuda", "trt"])])
def test_unknown_backend(backend, words):
    with pytest.raises(HypersrError) as e:
        resolve_backend(backend, torch.device("cpu"))
    for w in words:
        assert w in str(e.value)


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
def test_cuda_backend_without_a_gpu_is_refused():
    with pytest.raises(HypersrError, match="no CUDA GPU|sees none"):
        Upscaler("fast-x2", backend=Backend.CUDA())


@pytest.mark.skipif(TRT, reason="TensorRT is installed here")
def test_trt_without_tensorrt_says_how_to_install(tmp_path):
    with pytest.raises(HypersrError, match=r"pip install 'hypersr\[trt\]'"):
        Upscaler("fast-x2", backend=Backend.TRT(), frame_size=(64, 48))
    y4m = ffmpeg_y4m(tmp_path / "in.y4m")
    assert_clean_error(run_hypersr("upscale", y4m, "-o", tmp_path / "o.y4m", "--backend", "trt"), "hypersr[trt]")
    assert not (tmp_path / "o.y4m").exists()


def test_cpu_backend_merged_lora_equals_unmerged(window, lora):
    out = Upscaler("fast-x2", lora, backend=Backend.CPU())(window)
    np.testing.assert_allclose(out, reference(window, lora), atol=2e-5)
    assert np.abs(out - Upscaler("fast-x2", backend=Backend.CPU())(window)).max() > 1e-3  # the LoRA does change the output


@needs_cuda
@pytest.mark.parametrize("cuda_graphs", [False, True])
@pytest.mark.parametrize("preset", ["fast-x2", "quality-x2"])  # quality-x2: SPAN scales its input by 255, a range fp16 must hold
def test_cuda_backend_matches_cpu(window, preset, cuda_graphs):
    lora = preset_lora(preset_registry.get(preset))
    engine = Upscaler(preset, lora, backend=Backend.CUDA(num_streams=2, cuda_graphs=cuda_graphs))
    ref = reference(window, lora, preset)
    np.testing.assert_allclose(engine(window), ref, atol=3e-3)  # fp16
    results = {}

    def run(i):  # two callers at once, each on its own stream
        results[i] = engine(np.roll(window, i, axis=-1))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_allclose(results[i], engine(np.roll(window, i, axis=-1)), atol=0)


@needs_cuda
def test_cuda_tiled_equals_untiled(window):
    whole = Upscaler("fast-x2", backend=Backend.CUDA())(window)
    tiled = Upscaler("fast-x2", backend=Backend.CUDA(), tile=16, tile_pad=16)(window)
    np.testing.assert_allclose(tiled, whole, atol=2e-3)


BASE_KEY = dict(arch={"type": "fast", "scale": 2}, base_sha256="a" * 64, profile={"min": (16, 16), "opt": (512, 768), "max": (512, 768)},
                precision="fp16", gpu="NVIDIA H100", tensorrt_version="10.9", torch_tensorrt_version="2.9", torch_version="2.9")


@pytest.mark.parametrize("field, other", [
    ("arch", {"type": "fast", "scale": 4}), ("base_sha256", "b" * 64), ("profile", {"min": (16, 16), "opt": (1024, 1024), "max": (1024, 1024)}),
    ("precision", "fp32"), ("gpu", "NVIDIA H200"), ("tensorrt_version", "10.10"), ("torch_tensorrt_version", "2.10"), ("torch_version", "2.10"),
])
def test_engine_key_covers_everything_that_changes_an_engine(field, other):
    key = trt_engine_key(**BASE_KEY)
    assert key == trt_engine_key(**BASE_KEY)
    assert trt_engine_key(**{**BASE_KEY, field: other}) != key


def test_profile_buckets_nearby_sizes():
    assert trt_profile(1920, 1080, 16) == {"min": (16, 16), "opt": (1280, 2048), "max": (1280, 2048)}
    assert trt_profile(1920, 1040, 16) == trt_profile(1920, 1080, 16)
    assert trt_profile(960, 540, 16)["max"] == (768, 1024)


def test_engine_cache_round_trip_and_damage(tmp_path, capsys):
    cache = EngineCache(tmp_path / "trt")
    payload = {"w": torch.arange(1000, dtype=torch.float32)}
    builds = []

    def load(path):
        return torch.load(path, weights_only=True)

    def get_or_build():
        got = cache.get("k1", load)
        if got is None:
            builds.append(1)
            cache.put("k1", lambda tmp: torch.save(payload, tmp), {"preset": "fast-x2"})
            got = cache.get("k1", load)
        return got

    torch.testing.assert_close(get_or_build()["w"], payload["w"])
    torch.testing.assert_close(get_or_build()["w"], payload["w"])
    assert len(builds) == 1  # the second time comes from the cache
    engine, record = cache.paths("k1")
    assert json.loads(record.read_text())["preset"] == "fast-x2"
    assert sorted(p.name for p in (tmp_path / "trt").iterdir()) == ["k1.engine", "k1.json"]  # no temporary files left

    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    torch.testing.assert_close(get_or_build()["w"], payload["w"])
    assert len(builds) == 2 and "damaged" in capsys.readouterr().err

    engine.write_bytes(b"")  # truncated, record still claims the old hash
    get_or_build()
    record.write_text("{not json")
    get_or_build()
    assert len(builds) == 4


@needs_trt
def test_trt_engine_is_cached_and_refitted(tmp_path, window, lora):
    cold = Upscaler("fast-x2", backend=Backend.TRT(cache_dir=str(tmp_path)), frame_size=(52, 40))
    assert cold.runner.build_s is not None
    np.testing.assert_allclose(cold(window), Upscaler("fast-x2", backend=Backend.CPU())(window), atol=3e-3)
    warm = Upscaler("fast-x2", lora, backend=Backend.TRT(cache_dir=str(tmp_path)), frame_size=(52, 40))
    assert warm.runner.build_s is None and warm.runner.refit_s is not None  # from the cache, refitted with the LoRA
    np.testing.assert_allclose(warm(window), reference(window, lora), atol=3e-3)


@pytest.mark.parametrize("backend", [Backend.CPU(), *([Backend.CUDA()] if CUDA else [])], ids=lambda b: b.name)
def test_each_frame_is_fetched_once_per_stream(backend):
    """fast-x2 reads windows of three frames: every frame is in three windows, and is fetched (and uploaded)
    once; the result equals upscaling each window on its own."""
    from hypersr.engine.window import window_indices

    lr = np.random.default_rng(3).random((6, 3, 24, 32), dtype=np.float32)
    engine = Upscaler("fast-x2", backend=backend)
    fetched = []

    def fetch(m):
        fetched.append(m)
        return lr[m]

    rows = window_indices(range(len(lr)), len(lr), 3, cuts=(4,))
    out = [engine.upscale(list(row), fetch) for row in rows]
    assert sorted(fetched) == list(range(len(lr))) and engine.fetched == len(lr)
    for row, o in zip(rows, out):
        np.testing.assert_allclose(o, engine(lr[row]), atol=1e-6)


@pytest.fixture(scope="module")
def sample_lr():
    """The bundled clip's first frames, BI x1/2 and x1/4: real content (on uniform noise SPAN's features blow up,
    in fp32 as in bf16)."""
    from hypersr.ffmpeg_filter.source import open_input
    from hypersr.training import data
    from hypersr.vsplugin.io import clip_to_array

    hr = torch.from_numpy(np.ascontiguousarray(clip_to_array(open_input(str(SAMPLE)).rgb()[:5])))
    return {s: data.degrade_bi(hr, s).numpy() for s in (2, 4)}


@pytest.mark.parametrize("preset", ["quality-x2", "real-x2", "vsrt-x2", "quality-x4", "fast-x2"])
def test_cpu_bf16_runs_the_span_blocks_in_bf16_within_a_hair_of_fp32(sample_lr, preset):
    fp32 = Upscaler(preset, backend=Backend.CPU(bf16=False))
    bf16 = Upscaler(preset, backend=Backend.CPU(bf16=True))
    from hypersr.engine.networks.span import SPAN

    trunks = [part for part in bf16.model.modules() if isinstance(part, SPAN)]
    assert all(part.trunk_dtype == torch.bfloat16 for part in trunks)
    assert getattr(bf16.model, "transformer_dtype", torch.bfloat16) == torch.bfloat16  # vsrt's transformer: autocast
    in_trunk = {id(p) for part in trunks for p in part.blocks.parameters()}
    assert {p.dtype for p in bf16.model.parameters() if id(p) in in_trunk} <= {torch.bfloat16}
    assert {p.dtype for p in bf16.model.parameters() if id(p) not in in_trunk} == {torch.float32}
    assert {p.dtype for p in fp32.model.parameters()} == {torch.float32}
    window = sample_lr[fp32.scale][: fp32.window]
    a, b = fp32(window), bf16(window)
    assert a.dtype == b.dtype == np.float32
    if not trunks:  # fast-x2: nothing in it takes bf16
        np.testing.assert_array_equal(a, b)
        return
    assert not np.array_equal(a, b)  # the bf16 path ran
    psnr = 10 * np.log10(1 / np.mean((a - b) ** 2))
    assert psnr >= 50, psnr  # measured 56.5 (x4) to 63.6 dB (x2) on these frames; fp32 vs HR is about 36 dB


def test_cpu_bf16_by_default_only_where_the_cpu_has_it():
    try:
        flags = {word for line in open("/proc/cpuinfo") if line.startswith("flags") for word in line.split()}
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    assert native_bf16() == bool({"avx512_bf16", "amx_tile"} & flags)
    assert Backend.CPU().uses_bf16() == native_bf16()
    assert Backend.CPU(bf16=True).uses_bf16() and not Backend.CPU(bf16=False).uses_bf16()
    assert backend_from_names("cpu", None, bf16=False) == Backend.CPU(1, False)
    assert backend_from_names(None, "cpu") == Backend.CPU()
    with pytest.raises(HypersrError, match="bf16 must be True, False or None"):
        Upscaler("fast-x2", backend=Backend.CPU(bf16="yes"))


def test_window_numbers_stop_at_ends_and_cuts():
    from hypersr.engine.window import window_indices

    assert window_indices(range(5), 5, 3, cuts=(2,)).tolist() == [[0, 0, 1], [0, 1, 1], [2, 2, 3], [2, 3, 4], [3, 4, 4]]
    assert window_indices([0, 3], 4, 5).tolist() == [[0, 0, 0, 1, 2], [1, 2, 3, 3, 3]]


def test_backend_options_are_checked():
    with pytest.raises(HypersrError, match="num_streams must be a whole number, at least 1, not 0"):
        Upscaler("fast-x2", backend=Backend.CPU(num_streams=0))
    with pytest.raises(HypersrError, match=r"backend must be Backend.CPU\(\)"):
        Upscaler("fast-x2", backend="cpu")
