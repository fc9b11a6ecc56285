"""Degradation and a short training run on a tiny pack: the loss goes down and validation goes up."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hypersr.training import data
from hypersr.training.metrics import clip_psnr
from hypersr.training.train import train_base


def test_bi_degradation_is_antialiased_bicubic_in_8_bits():
    hr = torch.rand(2, 3, 3, 32, 48)
    lr = data.degrade_bi(hr, 2)
    assert lr.shape == (2, 3, 3, 16, 24)
    assert torch.equal(lr, (lr * 255).round() / 255)
    ref = F.interpolate(hr.reshape(6, 3, 32, 48), scale_factor=0.5, mode="bicubic", antialias=True, align_corners=False)
    assert (lr.reshape(6, 3, 16, 24) - ref.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert torch.allclose(data.degrade_bi(flat, 4), torch.full((1, 3, 4, 4), round(0.4 * 255) / 255))


def waves(rng, n: int, side: int) -> np.ndarray:
    """Sums of random plane waves at frequencies bicubic blurs: detail a small network can restore."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    out = np.zeros((n, side, side, 3))
    for i in range(n):
        for _ in range(12):
            f = rng.uniform(0.1, 0.22) * 2 * np.pi  # below the LR Nyquist limit (0.25 cycles per HR pixel)
            a = rng.uniform(0, np.pi)
            wave = np.sin(f * (x * np.cos(a) + y * np.sin(a)) + rng.uniform(0, 2 * np.pi))
            out[i] += wave[..., None] * rng.uniform(0.2, 1.0, 3)
    out = (out - out.min()) / (out.max() - out.min())
    return (out * 255).round().astype(np.uint8)


def tiny_pack(path):
    rng = np.random.default_rng(0)
    data.write_pack(path, list(waves(rng, 8, 192)), {}, {"waves": waves(rng, 2, 96)}, {"val_stride": 1})
    return path


def test_short_training_run_learns(tmp_path):
    pack = tiny_pack(tmp_path / "pack.npz")
    arch = {"type": "fast", "scale": 2, "window": 3, "channels": 16, "blocks": 1}
    # (lr 1e-3, batch 16: learns from every seed tried; lr 5e-3 with batch 8 stalled for one of five)
    weights = train_base(arch, "tiny", tmp_path, tmp_path / "run", pack, steps=200, batch=16, patch=32, lr=1e-3, val_every=100)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [0, 100, 200]
    assert log[2]["loss"] < log[1]["loss"]
    assert log[2]["val_y_psnr"]["waves"] > log[0]["val_y_psnr"]["waves"] + 3  # well above where it started (bicubic)
    assert weights.exists() and (tmp_path / "run" / "checkpoint.pt").exists()


def test_bf16_training_run_learns_and_keeps_fp32_weights(tmp_path):
    """Mixed precision: the forward in bf16 autocast, the weights, optimiser and validation fp32; the run's
    config says so (and how its gradients were clipped), so a checkpoint is never resumed in the other precision."""
    from safetensors.torch import load_file

    from hypersr.engine.errors import HypersrError

    pack = tiny_pack(tmp_path / "pack.npz")
    arch = {"type": "fast", "scale": 2, "window": 3, "channels": 16, "blocks": 1}
    weights = train_base(arch, "tiny", tmp_path, tmp_path / "run", pack, steps=200, batch=16, patch=32, lr=1e-3, val_every=100, bf16=True,
                         clip_grad=1.0)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[2]["val_y_psnr"]["waves"] > log[0]["val_y_psnr"]["waves"] + 3
    assert {t.dtype for t in load_file(str(weights)).values()} == {torch.float32}
    config = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["config"]
    assert config["bf16"] is True and config["clip_grad"] == 1.0
    with pytest.raises(HypersrError, match="other settings .*bf16"):
        train_base(arch, "tiny", tmp_path, tmp_path / "run", pack, steps=300, batch=16, patch=32, lr=1e-3, val_every=100)


def test_resume_continues_a_run_and_refuses_another(tmp_path):
    """The one training loop resumes from its checkpoint (a longer run continues where the shorter one
    stopped), and a checkpoint made with other settings is one line, not a run quietly mixing them."""
    from hypersr.engine.errors import HypersrError

    pack = tiny_pack(tmp_path / "pack.npz")
    arch = {"type": "span", "scale": 2, "window": 3, "channels": 4, "blocks": 1}
    train_base(arch, "tiny", tmp_path, tmp_path / "run", pack, steps=4, batch=2, patch=32, lr=1e-3, val_every=2)
    train_base(arch, "tiny", tmp_path, tmp_path / "run", pack, steps=6, batch=2, patch=32, lr=1e-3, val_every=2)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [0, 2, 4, 6]
    with pytest.raises(HypersrError, match="other settings .*lr"):
        train_base(arch, "tiny", tmp_path, tmp_path / "run", pack, steps=8, batch=2, patch=32, lr=5e-4, val_every=2)
    with pytest.raises(HypersrError, match="--trainable nope: .*conv_1"):  # before any run folder is made
        train_base(arch, "tiny", tmp_path, tmp_path / "other", pack, steps=2, batch=2, patch=32, trainable=["nope"])
    assert not (tmp_path / "other").exists()


def test_bench_runs_scores_a_finished_run(tmp_path):
    """`hypersr bench runs` rebuilds a run from arch.json and its weights; on the data the run validated
    on, it reproduces the run's own last score."""
    from hypersr.engine.errors import HypersrError
    from hypersr.training.evaluate import evaluate_runs, runs_table

    pack = tiny_pack(tmp_path / "pack.npz")
    arch = {"type": "fast", "scale": 2, "window": 3, "channels": 8, "blocks": 1}
    train_base(arch, "tiny", tmp_path, tmp_path / "run", pack, steps=20, batch=4, patch=32, val_every=20)
    last = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    [row] = evaluate_runs([tmp_path / "run"], data.load_pack(pack).validation)
    assert row["arch"] == arch and abs(row["val_y_psnr"]["waves"] - last["val_y_psnr"]["waves"]) < 1e-6
    assert "| run |" in runs_table([row])
    # beside a preset, through the real-source chains: the run's BI column is the BI score above
    preset, real = evaluate_runs([tmp_path / "run"], data.load_pack(pack).validation, degradation="real", presets=["fast-x2"])
    assert preset["run"] == "fast-x2" and set(real["val_y_psnr"]) == {f"waves/{c}" for c in ("bi", "h264-crf33", "mpeg2-q8", "blur-noise")}
    assert real["val_y_psnr"]["waves/bi"] == pytest.approx(row["val_y_psnr"]["waves"], abs=1e-6)
    assert real["mean, degraded"] == pytest.approx(np.mean([v for k, v in real["val_y_psnr"].items() if k != "waves/bi"]))
    assert "| mean | mean, degraded |" in runs_table([preset, real])
    # through bench real's nine chains: the same four among them, scored the same
    [nine] = evaluate_runs([tmp_path / "run"], data.load_pack(pack).validation, degradation="chains")
    from hypersr.engine.degradation import CHAINS

    assert set(nine["val_y_psnr"]) == {f"waves/{c}" for c in CHAINS} and len(CHAINS) == 9
    assert all(nine["val_y_psnr"][k] == pytest.approx(v, abs=1e-6) for k, v in real["val_y_psnr"].items())
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(HypersrError, match="not a finished run"):
        evaluate_runs([tmp_path / "unfinished"], {})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "arch.json").write_text("not json")
    (tmp_path / "broken" / "tiny.safetensors").write_bytes(b"\0" * 4)
    with pytest.raises(HypersrError, match="cannot be read as a network"):
        evaluate_runs([tmp_path / "broken"], {})
    (tmp_path / "broken" / "arch.json").write_text(json.dumps(arch))  # a network, with weights that are not a file of them
    with pytest.raises(HypersrError, match="cannot be read as a network"):
        evaluate_runs([tmp_path / "broken"], {})


def test_train_hypernet_refuses_an_init_it_cannot_start_from(tmp_path):
    from helpers import assert_clean_error, run_hypersr

    pack = tiny_pack(tmp_path / "pack.npz")
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not weights")
    for init, words in ((junk, ("is not a hypernet",)), ("presets/fast-x4.hypernet.safetensors", ("does not fit",)),
                        (tmp_path / "missing.safetensors", ("does not exist",))):
        proc = run_hypersr("train", "hypernet", "--preset", "fast-x2", "--pack", pack, "--size", "64", "--init", init, "--out", tmp_path / "run")
        assert_clean_error(proc, *words)
        assert not (tmp_path / "run").exists()  # nothing half-made


def test_train_base_refuses_an_init_of_another_network(tmp_path):
    from helpers import assert_clean_error, run_hypersr

    pack = tiny_pack(tmp_path / "pack.npz")
    for init, words in (("vsrt-x2", ("neither fast-x2's", "nor its backbone")), ("nope", ("no preset and no run folder",))):
        proc = run_hypersr("train", "base", "--preset", "fast-x2", "--pack", pack, "--init", init, "--out", tmp_path / "run")
        assert_clean_error(proc, *words)
        assert not (tmp_path / "run").exists()
    proc = run_hypersr("train", "base", "--preset", "fast-x2", "--pack", pack, "--init", "fast-x2", "--arch", "channels=16",
                       "--out", tmp_path / "run")
    assert_clean_error(proc, "with --arch")
    for arch, words in (("fusion=bogus", ("--arch", "fusion", "bogus")), ("colour=1", ("--arch", "colour"))):
        proc = run_hypersr("train", "base", "--preset", "fast-x2", "--pack", pack, "--arch", arch, "--out", tmp_path / "run")
        assert_clean_error(proc, *words)
        assert not (tmp_path / "run").exists()


def test_a_window_starts_as_the_single_frame_preset_it_is_initialised_from(tmp_path):
    """`train base --init quality-x2 --arch window=3`: the window network starts as quality-x2's weights
    with the fusion passing the centre frame through, so step 0 scores exactly what quality-x2 scores."""
    from hypersr.engine import preset_registry
    from hypersr.engine.networks import one_frame_of
    from hypersr.training.train import upscale_clip

    pack = tiny_pack(tmp_path / "pack.npz")
    single = preset_registry.get("quality-x2").card.architecture.as_dict()
    arch = {**single, "window": 3}
    assert one_frame_of(arch) == single and one_frame_of(single) == single
    assert one_frame_of({**arch, "fusion": "average", "window": 1}) == single  # one frame has no fusion
    train_base(arch, "w3", tmp_path, tmp_path / "run", pack, steps=1, batch=2, patch=32, lr=1e-6, init="quality-x2", trainable=["fuse"])
    step0 = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    hr = data.load_pack(pack).validation["waves"]
    clip = data.degrade_bi(hr, 2)
    with torch.inference_mode():
        expect = clip_psnr(data.quantise(upscale_clip(preset_registry.load_model("quality-x2"), clip)), hr)
    assert step0["step"] == 0 and step0["val_y_psnr"]["waves"] == pytest.approx(expect, abs=1e-3)


def test_a_recipe_in_two_stages_starts_its_second_from_the_first_run(tmp_path):
    """real-x2's recipe: the network one frame at a time (stage 1, `--out RUN`), then its window's average
    alone (`--init RUN --trainable fuse`): stage 2 keeps stage 1's convolutions exactly; a run folder that
    is not a finished run, or holds another network, is one line before any work."""
    from safetensors.torch import load_file

    from hypersr.engine import preset_registry
    from hypersr.engine.networks import one_frame_of
    from hypersr.training.train import init_network

    pack = tiny_pack(tmp_path / "pack.npz")
    window = {**preset_registry.get("quality-x2").card.architecture.as_dict(), "window": 3, "fusion": "average"}
    one = train_base(one_frame_of(window), "one", tmp_path, tmp_path / "one", pack, steps=2, batch=2, patch=32, lr=1e-3, init="quality-x2")
    arch, state = init_network(str(tmp_path / "one"))
    assert arch == one_frame_of(window) and all(torch.equal(v, load_file(str(one))[k]) for k, v in state.items())
    two = load_file(str(train_base(window, "two", tmp_path, tmp_path / "two", pack, steps=2, batch=2, patch=32, lr=1e-3,
                                   init=str(tmp_path / "one"), trainable=["fuse"])))
    assert all(torch.equal(two[k], v) for k, v in state.items())  # the convolutions as stage 1 made them
    assert not torch.equal(two["fuse.strength"], torch.ones_like(two["fuse.strength"]))  # and the average trained

    from helpers import assert_clean_error, run_hypersr

    (tmp_path / "half").mkdir()
    for init, words in ((tmp_path / "half", ("is not a finished run",)), (tmp_path / "missing", ("no such run folder",)),
                        (one, ("no such run folder", "not a file")), ("nope", ("no preset and no run folder", "fast-x2")),
                        (tmp_path / "one", ("neither fast-x2's",))):
        proc = run_hypersr("train", "base", "--preset", "fast-x2", "--pack", pack, "--init", init, "--out", tmp_path / "run")
        assert_clean_error(proc, *words)
        assert not (tmp_path / "run").exists()
    for options, words in ((("--init", tmp_path / "one", "--out", tmp_path / "one"), ("--init", "would write", "another --out")),
                           (("--init", ""), ("--init is empty",)),
                           (("--trainable", "all", "--trainable", "fuse"), ("all", "alone"))):
        assert_clean_error(run_hypersr("train", "base", "--preset", "real-x2", "--pack", pack, "--no-bf16", *options), *words)
    assert all(torch.equal(load_file(str(one))[k], v) for k, v in state.items())  # stage 1 untouched
    assert json.loads((tmp_path / "one" / "arch.json").read_text()) == one_frame_of(window)
    # real-x2's card starts stage 2 from runs/real-x2-one-frame: where that is not made yet, the line says how
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_hypersr("train", "base", "--preset", "real-x2", "--pack", pack, "--no-bf16", cwd=elsewhere)
    assert_clean_error(proc, "runs/real-x2-one-frame", "make it first", "--arch window=1")
    assert not (elsewhere / "runs").exists()


def test_train_base_cli_runs_a_cards_earlier_stage(tmp_path):
    """Stage 1 of real-x2 from the command line: `--arch window=1` drops the fusion, `--trainable all` and
    `--no-clip-grad` undo the card's stage-2 settings; stage 2 then starts from that run (--init RUN)."""
    from helpers import run_hypersr

    pack = tiny_pack(tmp_path / "pack.npz")
    common = ("--pack", pack, "--steps", "1", "--batch", "2", "--patch", "32", "--bank", "16", "--val-every", "1", "--no-bf16")
    proc = run_hypersr("train", "base", "--preset", "real-x2", "--arch", "window=1", "--init", "quality-x2", "--trainable", "all",
                       "--lr", "1e-5", "--no-clip-grad", "--out", tmp_path / "one", *common)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert json.loads((tmp_path / "one" / "arch.json").read_text()) == {"type": "span", "scale": 2, "window": 1, "channels": 48, "blocks": 6}
    config = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)["config"]
    assert config["trainable"] is None and "clip_grad" not in config and config["init"] == "quality-x2"
    proc = run_hypersr("train", "base", "--preset", "real-x2", "--init", tmp_path / "one", "--out", tmp_path / "two", *common)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert "from its card: trainable fuse, lr 0.005, clip_grad 1.0" in proc.stderr.decode()
    config = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)["config"]
    assert config["trainable"] == ["fuse"] and config["arch"]["fusion"] == "average" and config["init"] == str(tmp_path / "one")


# --- the training pack -------------------------------------------------------------------------------

def test_pack_round_trip_keeps_validation_exact_and_scenes_close(tmp_path):
    rng = np.random.default_rng(1)
    scenes, val, clip = list(waves(rng, 3, 64)), waves(rng, 2, 48), waves(rng, 4, 32)
    data.write_pack(tmp_path / "p.npz", scenes, {"c": clip}, {"v": val}, {"note": "x"})
    pack = data.load_pack(tmp_path / "p.npz")
    assert pack.meta["note"] == "x" and pack.meta["version"] == data.PACK_VERSION
    assert np.array_equal(pack.clips[0], clip)  # lossless: training clips
    assert torch.equal(pack.validation["v"], data.to_float(val))  # lossless: what validation scores against
    assert pack.scenes.shape == (3, 64, 64, 3)
    err = pack.scenes.astype(float) - np.stack(scenes)
    assert 10 * np.log10(255**2 / np.mean(err**2)) > 40  # AVIF at quality 90, 4:4:4


def test_a_pack_that_is_not_one_gets_one_line(tmp_path):
    from hypersr.engine.errors import HypersrError

    (tmp_path / "bad.npz").write_bytes(b"not a pack")
    with pytest.raises(HypersrError, match="not a readable training pack"):
        data.load_pack(tmp_path / "bad.npz")


def test_pick_crops_takes_distinct_detailed_cells_at_several_sizes():
    rng = np.random.default_rng(0)
    img = np.zeros((400, 700, 3), np.uint8)
    img[:, :350] = waves(rng, 1, 400)[0][:, :350]  # detail on the left, flat on the right
    crops = data.pick_crops(img, 200, 64, np.random.default_rng(0))
    assert 30 < len(crops) < 6 * 10 + 4 * 7 + 3 * 5  # every cell of the three sizes but the flat ones
    assert all(c.shape == (64, 64, 3) and data._detail(c) >= data.MIN_DETAIL for c in crops)
    assert len({c.tobytes() for c in crops}) == len(crops)
    full = {img[y : y + 64, x : x + 64].tobytes() for y in range(0, 337) for x in range(0, 637)}
    assert 0 < sum(c.tobytes() in full for c in crops) < len(crops)  # exact cells of the still, and shrunk ones
    few, again = (data.pick_crops(img, 20, 64, np.random.default_rng(5)) for _ in range(2))
    assert len(few) == 20 and all(np.array_equal(a, b) for a, b in zip(few, again))  # as many as asked, the same for a seed


def test_bench_runs_refuses_a_missing_gpu_in_one_line(tmp_path):
    import torch
    from helpers import assert_clean_error, run_hypersr

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_clean_error(run_hypersr("bench", "runs", tmp_path, "--device", "cuda"), "no CUDA GPU", "--device cpu")
