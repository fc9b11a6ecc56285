"""The clean blend of the real-source presets (engine/hypernet.py: CleanBlend; training/blend.py): the move
it carries in the LoRA is exactly the clean network's weights, an unfitted head moves nothing, its LoRA
files are ordinary LoRA files, and its fit finds the alpha the clips ask for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import assert_clean_error, run_hypersr
from test_training import tiny_pack

from hypersr.engine import preset_registry
from hypersr.engine.hypernet import build_hypernet
from hypersr.engine.lora import LoRA, load_lora, lora_layers, save_lora
from hypersr.training.blend import GRID, fit_head, moves, psnr_at


@pytest.fixture(scope="module")
def pair():
    """real-x2's base, its clean twin (the same network trained on clean input) and a hypernet with a blend toward it."""
    real = preset_registry.get("real-x2")
    base = preset_registry.load_model(real)
    clean = preset_registry.load_model(real.card.clean_twin)  # quality-x2, the preset it was fine-tuned from
    arch = {**real.card.hypernet.architecture, "blend": True}
    hypernet = build_hypernet(base, arch).eval()
    hypernet.blend.set_moves(moves(base, clean))
    return real, base, clean, hypernet


def merged_weights(preset, factors) -> dict[str, torch.Tensor]:
    rank = next(iter(factors.values()))[0].shape[0]
    lora = LoRA(preset.name, preset.sha256, preset.scale, rank, factors)
    model = preset_registry.load_model(preset, lora)
    return {name: layer.weight.detach().clone() for name, layer in lora_layers(model).items()}


def test_the_full_move_is_the_clean_network_and_no_move_is_the_base(pair):
    real, base, clean, hypernet = pair
    frames = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        summary = hypernet.summarise(frames, base)
        assert hypernet.clean_share(summary) == 0.0  # an unfitted head: alpha 0
        full = merged_weights(real, hypernet.factors(summary, torch.tensor(1.0)))
        none = merged_weights(real, hypernet.factors(summary))
    clean_layers, base_layers = lora_layers(clean), lora_layers(base)
    for name in full:
        torch.testing.assert_close(full[name], clean_layers[name].weight, atol=1e-5, rtol=0)
        torch.testing.assert_close(none[name], base_layers[name].weight, atol=0, rtol=0)  # the generator starts at zero too


def test_a_blended_lora_is_an_ordinary_lora_file(pair, tmp_path):
    real, base, _, hypernet = pair
    with torch.no_grad():
        factors = hypernet.factors(hypernet.summarise(torch.rand(3, 3, 40, 56), base), torch.tensor(0.6))
    lora = LoRA(real.name, real.sha256, real.scale, hypernet.lora_rank, factors)
    save_lora(lora, tmp_path / "c.lora")
    back = load_lora(tmp_path / "c.lora")
    assert back.rank == hypernet.rank + max(layer.out_channels for layer in lora_layers(base).values())  # the move: exact, full rank
    a = merged_weights(real, factors)
    b = {n: w for n, w in merged_weights(real, back.factors).items()}
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_psnr_between_grid_points_is_read_linearly():
    table = torch.tensor([[30.0, 31.0, 33.0, 32.0, 30.0]])
    for alpha, expected in ((0.0, 30.0), (0.5, 33.0), (0.125, 30.5), (0.625, 32.5), (1.0, 30.0), (1.7, 30.0), (-1.0, 30.0)):
        assert psnr_at(torch.tensor([alpha]), table).item() == pytest.approx(expected)


def test_the_fit_moves_clean_clips_and_keeps_degraded_ones():
    # feature 0 says "clean"; clean clips score best at alpha 1, degraded ones at alpha 0; the other features are noise
    rng = np.random.default_rng(0)
    clean = rng.random(200) < 0.3
    x = torch.tensor(np.c_[clean * 2.0 - 1 + rng.normal(0, 0.2, 200), rng.normal(size=(200, 20))], dtype=torch.float32)
    grid = torch.tensor(GRID)
    table = torch.where(torch.tensor(clean)[:, None], 35 + 2 * grid, 33 - 1.5 * grid)
    w, b = fit_head(x, table, penalty=1e-3)
    alpha = (x @ w + b).clamp(0, 1)
    assert alpha[clean].mean() > 0.9 and alpha[~clean].mean() < 0.1
    assert psnr_at(alpha, table).mean() > table.max(1).values.mean() - 0.1


def test_train_blend_fits_on_sampled_clips_and_refuses_bad_requests(tmp_path):
    pack = tiny_pack(tmp_path / "pack.npz")
    (tmp_path / "a-file").write_text("x")
    for args, words in ((("--out", tmp_path / "a-file" / "run"), ("not a writable folder",)),
                        (("--clean", "fast-x4"), ("not real-x2's",)), (("--clips", "5"), ("too few",)),
                        (("--clean", "nope"), ("unknown preset",)), (("--device", "tpu"), ("tpu",)),
                        (("--clean", "real-x2"), ("not trained on clean input",)), (("--preset", "fast-x2"), ("clean input already",)),
                        (("--pack", tmp_path / "nope.npz"), ("is missing", "hypersr data pack"))):
        proc = run_hypersr("train", "blend", "--preset", "real-x2", "--pack", pack, "--out", tmp_path / "bad", *args)
        assert_clean_error(proc, *words)
        assert not (tmp_path / "bad").exists()
    proc = run_hypersr("train", "blend", "--preset", "real-x2", "--pack", pack, "--clips", "20", "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads((tmp_path / "run" / "blend.json").read_text())
    assert report["clips"] == 20 and report["held_out_clips"] == 4
    scores = report["held_out_y_psnr"]
    predicted = [report[k]["y_psnr"] for k in ("predicted alpha", "predicted alpha, fitted without the harm weight")]
    assert scores["best grid alpha (oracle)"] >= max(*scores.values(), *predicted) - 1e-6
    assert (tmp_path / "run" / "measured.safetensors").is_file()


def test_the_harm_weight_makes_fewer_clips_worse():
    # feature 0 tells clean from degraded only roughly: a fit for the mean blends some degraded clips, which
    # lose more than the clean ones gain; weighing losses more keeps more of them at alpha 0
    rng = np.random.default_rng(1)
    n = 1000
    clean = rng.random(n) < 0.5
    x = torch.tensor(np.c_[clean * 1.0 + rng.normal(0, 0.6, n)], dtype=torch.float32)
    grid = torch.tensor(GRID)
    table = torch.where(torch.tensor(clean)[:, None], 35 + 1.0 * grid, 35 - 1.0 * grid)

    def worse(harm):
        w, b = fit_head(x, table, penalty=1e-4, harm_weight=harm)
        gain = psnr_at((x @ w + b).clamp(0, 1), table) - table[:, 0]
        return int((gain < -0.1).sum()), float(gain.mean())

    (harmed_sym, gain_sym), (harmed, gain) = worse(0.0), worse(4.0)
    assert harmed < 0.7 * harmed_sym, (harmed, harmed_sym)
    assert gain > 0 and gain < gain_sym + 1e-6  # the safety costs some mean gain, and still gains
