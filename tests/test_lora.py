"""LoRA layers: exact merging, the LoRA file format and its validation against a preset."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import preset_lora, random_lora
from safetensors.torch import save_file

from hypersr.engine import preset_registry
from hypersr.engine.errors import HypersrError
from hypersr.engine.lora import LoRAConv2d, load_lora, merge_all, save_lora, unmerge_all
from hypersr.engine.networks import build_model


def test_merge_is_exact_to_fp32_rounding():
    torch.manual_seed(1)
    model = build_model({"type": "fast", "scale": 2, "window": 3, "channels": 16, "blocks": 2})
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 3, 20, 24)
    with torch.no_grad():
        plain = model(x)
        for name, (A, B) in random_lora(model).items():
            dict(model.named_modules())[name].set_lora(A, B, 0.5)
        unmerged = model(x)
        merge_all(model)
        merged = model(x)
        unmerge_all(model)
        restored = model(x)
    assert (unmerged - plain).abs().max() > 1e-2  # the LoRA really changes the output
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(base[k], v) for k, v in model.state_dict().items())  # unmerge restores W bit for bit
    torch.testing.assert_close(restored, unmerged, rtol=0, atol=0)


def test_factor_shapes_are_checked():
    layer = LoRAConv2d(4, 8, 3, padding=1)
    with pytest.raises(ValueError, match="do not fit"):
        layer.set_lora(torch.zeros(2, 5), torch.zeros(8, 2))


def test_lora_file_round_trip_and_use(tmp_path):
    p = preset_registry.get("fast-x2")
    lora = preset_lora(p, clip_fingerprint="abc123", made_by={"tool": "test"})
    path = tmp_path / "clip.lora"
    save_lora(lora, path)
    back = load_lora(path)
    assert (back.preset, back.base_sha256, back.upscale_factor, back.rank, back.clip_fingerprint, back.made_by) == (
        p.name, p.sha256, p.scale, 4, "abc123", {"tool": "test"})
    for name, (A, B) in lora.factors.items():
        assert torch.equal(back.factors[name][0], A) and torch.equal(back.factors[name][1], B)
    x = torch.rand(1, 3, 3, 24, 24)
    with torch.no_grad():
        adapted = preset_registry.load_model(p, path)(x)
        base = preset_registry.load_model(p)(x)
    assert (adapted - base).abs().max() > 1e-3
    assert [f.name for f in tmp_path.iterdir()] == ["clip.lora"]  # no temp file left behind


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"preset": "fast-x4", "upscale_factor": 4}, ["fast-x4", "fast-x2"]),
        ({"upscale_factor": 4}, ["x4", "x2"]),
        ({"base_sha256": "0" * 64}, ["other fast-x2 weights", "000000000000"]),
    ],
)
def test_lora_for_another_preset_is_refused(tmp_path, overrides, words):
    p = preset_registry.get("fast-x2")
    path = tmp_path / "other.lora"
    save_lora(preset_lora(p, **overrides), path)
    with pytest.raises(HypersrError) as e:
        preset_registry.load_model(p, path)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "nan"])
def test_corrupt_lora_is_refused(tmp_path, damage):
    p = preset_registry.get("fast-x2")
    path = tmp_path / "bad.lora"
    save_lora(preset_lora(p), path)
    if damage == "garbage":
        path.write_bytes(b"\x00\x01not a safetensors file at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "foreign":
        save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "something-else"})
    elif damage == "nan":
        lora = preset_lora(p)
        name = next(iter(lora.factors))
        lora.factors[name][0][0, 0] = float("nan")
        save_lora(lora, path)
    with pytest.raises(HypersrError, match="LoRA"):
        load_lora(path)


def test_unknown_preset_names_the_available_ones():
    with pytest.raises(HypersrError, match="fast-x2"):
        preset_registry.get("no-such-preset")


def test_weights_are_checked_against_the_card(tmp_path, monkeypatch):
    p = preset_registry.get("fast-x2")
    (tmp_path / "fast-x2.json").write_text(p.card_path.read_text())
    data = bytearray(p.weights_path.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor
    (tmp_path / "fast-x2.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(preset_registry, "presets_dir", lambda: tmp_path)
    with pytest.raises(HypersrError, match="SHA-256"):
        preset_registry.load_model("fast-x2")


def test_card_describes_the_weights():
    p = preset_registry.get("fast-x2")
    card = json.loads(p.card_path.read_text())
    assert card["architecture"]["scale"] == 2 and card["architecture"]["window"] == 3
    assert len(card["weights"]["sha256"]) == 64


@pytest.mark.parametrize("damage", ["{not json", '{"architecture": {"type": "fast", "scale": "2", "window": 3}}', "[]"])
def test_damaged_card_is_one_line(tmp_path, monkeypatch, damage):
    (tmp_path / "fast-x2.json").write_text(damage)
    monkeypatch.setattr(preset_registry, "presets_dir", lambda: tmp_path)
    with pytest.raises(HypersrError, match="fast-x2.json is damaged .*reinstall hypersr"):
        preset_registry.get("fast-x2")
