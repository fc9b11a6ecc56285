"""`hypersr bench bank` (training/bench_bank.py): family twins and the analysis-by-synthesis chooser, at toy size."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from test_training import tiny_pack, waves

from hypersr.engine import degradation as deg
from hypersr.engine import preset_registry
from hypersr.engine.errors import HypersrError
from hypersr.training import bench_bank, require_extras
from hypersr.training.data import load_pack


def test_each_family_draws_only_its_own_degradations():
    rng = np.random.default_rng(0)
    for family in bench_bank.FAMILIES:
        draws = [bench_bank.sample_family(family, rng) for _ in range(40)]
        assert {bench_bank.family_of(d) for d in draws} == {family}
    assert bench_bank.family_of(deg.CHAINS["point-h264"]) == "aliased"
    assert bench_bank.family_of(deg.CHAINS["blur-noise"]) == "blur-noise"
    assert bench_bank.family_of(deg.CHAINS["mpeg2-q8"]) == "compressed"
    assert bench_bank.family_of(deg.CHAINS["bi"]) == "clean"


def test_twins_fit_and_the_probe_scores_every_chain_and_clip(tmp_path):
    base = preset_registry.load_model("real-x2")
    for p in base.parameters():
        p.requires_grad_(False)
    pack = load_pack(tiny_pack(tmp_path / "pack.npz"))
    twin = bench_bank.fit_family_lora(base, pack, "blur-noise", steps=4, clips=8, lr=1e-4)
    layers = {n: m for n, m in base.named_modules() if hasattr(m, "fan_in")}
    assert set(twin) == set(layers)
    assert all(a.shape == (8, layers[n].fan_in) and b.shape == (layers[n].out_channels, 8) for n, (a, b) in twin.items())
    # a twin that moves the base (B no longer zero) changes its output: the gains are measured, not assumed
    moved = {n: (a, b + 1e-3) for n, (a, b) in twin.items()}
    hr = torch.from_numpy(waves(np.random.default_rng(1), 2, 64)).permute(0, 3, 1, 2).float() / 255
    rows = bench_bank.probe(base, {"blur-noise": moved}, {"waves": hr}, ["bi", "point-h264"], progress=lambda _: None)
    assert [(r["chain"], r["clip"]) for r in rows] == [("bi", "waves"), ("point-h264", "waves")]
    assert all(r["gain"]["blur-noise"] != 0 and set(r["synth"]) == {"blur-noise", "clean"} for r in rows)


def test_the_refine_probe_scores_every_way_on_every_chain_and_clip():
    base = preset_registry.load_model("real-x2")
    for p in base.parameters():
        p.requires_grad_(False)
    hr = torch.from_numpy(waves(np.random.default_rng(1), 4, 64)).permute(0, 3, 1, 2).float() / 255
    rows = bench_bank.probe_refine(base, {"waves": hr}, ["bi", "point-h264"], steps=2, progress=lambda _: None)
    assert [(r["chain"], r["clip"]) for r in rows] == [("bi", "waves"), ("point-h264", "waves")]
    assert all(set(r["gain"]) == set(r["seen"]) == set(bench_bank.REFINE_WAYS) for r in rows)
    assert rows[0]["gain"]["bi"] == rows[0]["gain"]["chain"]  # on clean input the chain is BI: the same pairs, the same fit
    table = bench_bank.refine_table(rows)
    assert "| point-h264 | waves |" in table and "| the chain itself |" in table


def test_the_summary_compares_ways_to_pick_on_the_same_rows():
    rows = [{"chain": "bi", "clip": "a", "base": 40.0, "gain": {"aliased": -1.0, "compressed": 0.5},
             "synth": {"aliased": {"aliased": 0.9, "compressed": 0.0}, "compressed": {"aliased": 0.0, "compressed": 0.1}}},
            {"chain": "point-h264", "clip": "a", "base": 30.0, "gain": {"aliased": 1.2, "compressed": -0.2},
             "synth": {"aliased": {"aliased": 0.3, "compressed": 0.0}, "compressed": {"aliased": 0.0, "compressed": 0.4}}},
            {"chain": "mpeg2-q8", "clip": "a", "base": 31.0, "gain": {"aliased": -0.4, "compressed": -0.1},
             "synth": {"aliased": {"aliased": -0.1, "compressed": 0.0}, "compressed": {"aliased": 0.0, "compressed": -0.2}}}]
    assert [bench_bank.choose(r) for r in rows] == ["aliased", "compressed", None]
    s = bench_bank.summary(rows)
    assert s["best twin or base (knowing HR)"] == {"degraded": (1.2 + 0.0) / 2, "bi": 0.5}
    assert s["the chain's family (knowing the chain)"] == {"degraded": (1.2 - 0.1) / 2, "bi": 0.0}
    assert s["analysis by synthesis"] == {"degraded": (-0.2 + 0.0) / 2, "bi": -1.0}
    assert s["always aliased"]["degraded"] == (1.2 - 0.4) / 2
    assert "| analysis by synthesis | -0.10 | -1.00 |" in bench_bank.table(rows)


def test_a_missing_encoder_library_is_named_before_any_work(monkeypatch):
    """The real-source degradations encode through PyAV; without it the training commands say what to install."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "av" else real(name, *a))
    with pytest.raises(HypersrError, match=r"`hypersr bench bank` needs av: pip install 'hypersr\[train\]'"):
        require_extras("bench bank")
