"""The vsrt family (engine/networks/vsrt.py): STCSA, the positional encoding, flow warping, the network over
the SPAN backbone (the single-frame SPAN at step 0, features once per frame), and the whole network through
the paths users run (LoRA, export, VapourSynth)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hypersr.engine.lora import lora_applied, lora_layers
from hypersr.engine.networks import build_model
from hypersr.engine.networks.vsrt import STCSA, flow_warp, positional_encoding, positional_parts, with_position

ARCH = {"type": "vsrt", "scale": 2, "window": 5, "channels": 12, "blocks": 1, "dim": 12, "patch": 4, "region": 16, "flow_width": 8}


def random_network(**overrides) -> torch.nn.Module:
    """A vsrt network whose zero-initialised outputs (merge, flow levels) are random too, so that every part
    reaches the output."""
    torch.manual_seed(0)
    model = build_model({**ARCH, **overrides}).eval()
    with torch.no_grad():
        for conv in [model.merge] + ([level[-1] for level in model.flow.levels] if model.flow is not None else []):
            conv.weight.normal_(0, 0.05)
    return model


def smooth_frames(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Frames like pictures rather than noise (SPAN's output on uniform noise reaches +-200)."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(frames, 3, height // 4, width // 4, generator=g), size=(height, width), mode="bicubic").clamp(0, 1)


def test_position_added_by_parts_equals_the_whole_encoding():
    n, t, h, w, c, region = 2, 5, 20, 36, 24, 16
    x = torch.rand(n * t, c, h, w)
    whole = positional_encoding(t, h, w, c, region).repeat(n, 1, 1, 1)
    torch.testing.assert_close(with_position(x, positional_parts(t, h, w, c, region), n), x + whole, rtol=0, atol=0)


def test_stcsa_shapes_and_tokens_round_trip():
    block = STCSA(channels=12, patch=4, region=16)
    n, t = 2, 5
    x = torch.rand(n * t, 12, 32, 48)
    tokens = block.tokens(x, n, t)
    # 2x3 attention squares per frame pair; in each, 4x4 patches of every one of the 5 frames; C*p*p values
    assert tokens.shape == (n * 2 * 3, t * 16, 12 * 16)
    torch.testing.assert_close(block.untokens(tokens, n, t, 12, 32, 48), x, rtol=0, atol=0)
    assert block(x, None, n, t).shape == x.shape


def test_stcsa_attends_across_all_frames_of_the_window():
    torch.manual_seed(1)
    block = STCSA(channels=12, patch=4, region=16).eval()
    n, t = 1, 5
    x = torch.rand(n * t, 12, 16, 16)
    centre = t // 2
    with torch.no_grad():
        ref = block(x, None, n, t)[centre]
        for frame in range(t):
            if frame == centre:
                continue
            moved = x.clone()
            moved[frame, :, 4:8, 4:8] += 1.0  # one patch of one other frame
            out = block(moved, None, n, t)
            assert (out[centre] - ref).abs().max() > 1e-3, f"frame {frame} does not reach the centre frame"
            others = [f for f in range(t) if f != frame]
            # the changed frame itself changes; attention is the only path between frames here
            assert (out[others] - block(x, None, n, t)[others]).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_attention_stays_inside_its_square():
    torch.manual_seed(2)
    block = STCSA(channels=12, patch=4, region=16).eval()
    x = torch.rand(5, 12, 16, 32)  # two squares side by side
    moved = x.clone()
    moved[:, :, :, 24:] += 1.0  # the right square of every frame
    with torch.no_grad():
        a, b = block(x, None, 1, 5), block(moved, None, 1, 5)
    # the left square is unchanged except for the 3x3 convs' reach (1 pixel each for Q/K/V and the output conv)
    torch.testing.assert_close(a[..., :14], b[..., :14])


def test_positional_encoding_layout():
    t, h, w, c, region = 5, 20, 36, 24, 16
    pe = positional_encoding(t, h, w, c, region)
    assert pe.shape == (t, c, h, w)
    d = c // 3
    time_part, y_part, x_part = pe[:, :d], pe[:, d : 2 * d], pe[:, 2 * d :]
    # each third depends on its own coordinate only
    assert (time_part - time_part[:, :, :1, :1]).abs().max() == 0
    assert (y_part - y_part[:1, :, :, :1]).abs().max() == 0
    assert (x_part - x_part[:1, :, :1, :]).abs().max() == 0
    # sin of d/2 frequencies then cos of the same; frequency k is 1/1000^(2k/d)
    freq = 1000.0 ** (-torch.arange(0, d, 2).float() / d)
    torch.testing.assert_close(time_part[3, : d // 2, 0, 0], torch.sin(3 * freq))
    torch.testing.assert_close(time_part[3, d // 2 :, 0, 0], torch.cos(3 * freq))
    torch.testing.assert_close(x_part[0, : d // 2, 0, 7], torch.sin(7 * freq))
    # positions count inside the attention square: column 16 is encoded like column 0
    torch.testing.assert_close(x_part[..., 16 + 5], x_part[..., 5])
    torch.testing.assert_close(y_part[:, :, 16 + 3], y_part[:, :, 3])
    with pytest.raises(ValueError, match="divisible by 6"):
        positional_encoding(t, h, w, 20, region)


def test_flow_warp_follows_a_known_shift():
    torch.manual_seed(3)
    image = F.avg_pool2d(torch.rand(1, 3, 48, 64), 3, 1, 1)
    shifted = torch.roll(image, shifts=(2, -3), dims=(2, 3))  # content moves 2 down, 3 left
    flow = torch.zeros(1, 2, 48, 64)
    flow[:, 0], flow[:, 1] = -3.0, 2.0  # image's pixel p is at p + (-3, +2) in `shifted`
    warped = flow_warp(shifted, flow)
    inner = (..., slice(4, -4), slice(4, -4))
    torch.testing.assert_close(warped[inner], image[inner], atol=1e-5, rtol=0)
    half = flow_warp(shifted, flow / 2)  # a wrong flow does not match
    assert (half[inner] - image[inner]).abs().mean() > 1e-3
    torch.testing.assert_close(flow_warp(image, torch.zeros(1, 2, 48, 64)), image, atol=1e-5, rtol=0)


def test_flow_loss_teaches_the_flow_network_a_known_shift():
    """The self-supervised flow loss alone (training adds it while `merge` is still near zero) finds the motion."""
    torch.manual_seed(5)
    model = build_model({**ARCH, "window": 3})
    image = F.avg_pool2d(torch.rand(1, 3, 40, 40), 3, 1, 1)
    window = torch.stack([torch.roll(image, s, 3) for s in (-1, 0, 1)], 1)[..., 4:-4, 4:-4]  # content moves 1 pixel right a frame
    opt = torch.optim.Adam(model.flow.parameters(), 3e-3)
    first = model.flow_loss(window).item()
    for _ in range(60):
        loss = model.flow_loss(window)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first
    with torch.no_grad():
        flow = model.flow(window[:, 1], window[:, 2])[..., 6:-6, 6:-6]  # the centre's pixel p is at p + (1, 0) in the next frame
    assert abs(flow[:, 0].mean().item() - 1) < 0.1 and abs(flow[:, 1].mean().item()) < 0.1, flow.mean((0, 2, 3))


def test_network_interface_odd_sizes_and_every_frame_counts():
    model = random_network()
    window = torch.rand(2, 5, 3, 21, 35)  # not multiples of the attention square: padded inside, cropped after
    with torch.no_grad():
        out = model(window)
        assert out.shape == (2, 3, 42, 70)
        for frame in (0, 1, 3, 4):
            moved = window.clone()
            moved[:, frame] = moved[:, frame].flip(-1)
            assert (model(moved) - out).abs().max() > 1e-4, f"frame {frame} of the window is ignored"


@pytest.mark.parametrize("part", ["stcsa", "boff", "posenc"])
def test_ablations_build_and_run(part):
    model = random_network(**{part: False})
    with torch.no_grad():
        assert model(torch.rand(1, 5, 3, 16, 16)).shape == (1, 3, 32, 32)
    if part == "boff":
        assert model.flow is None
    if part == "stcsa":
        assert not any(isinstance(m, STCSA) for m in model.modules())


def test_lora_adapts_the_network_and_merges_exactly():
    model = random_network()
    layers = lora_layers(model)
    assert {"backbone.conv_1", "backbone.upsampler", "entry", "attention.0.q", "attention.0.out", "feed_forward.0.backward_net.merge",
            "merge"} <= set(layers)
    assert not any(name.startswith("flow.") for name in layers)  # the flow network is not adapted
    g = torch.Generator().manual_seed(4)
    factors = {name: (torch.randn(2, m.fan_in, generator=g) * 0.05, torch.randn(m.out_channels, 2, generator=g) * 0.05) for name, m in layers.items()}
    window = torch.rand(1, 5, 3, 16, 32)
    with torch.no_grad():
        base = model(window)
        with lora_applied(model, factors):
            unmerged = model(window)
        for name, layer in layers.items():
            layer.set_lora(*factors[name])
            layer.merge()
        merged = model(window)
    assert (unmerged - base).abs().max() > 1e-3
    # float32 rounding differs with the CPU's kernels (2.3e-5 seen on an AMD EPYC with AVX-512); a wrong merge is > 1e-3
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=0)


def test_hypernet_drives_a_vsrt_base():
    from hypersr.engine.hypernet import build_hypernet
    from hypersr.training.train import HYPERNET_ARCH

    model = random_network()
    hypernet = build_hypernet(model, HYPERNET_ARCH)
    clip = torch.rand(4, 3, 40, 56)
    factors = hypernet.factors(hypernet.summarise(clip, model))
    assert set(factors) == set(lora_layers(model))
    with lora_applied(model, factors), torch.no_grad():
        assert model(clip[None, [0, 0, 1, 2, 3]]).shape == (1, 3, 80, 112)


def test_export_dynamic_sizes_match(tmp_path):
    """The traced network (what ONNX and TorchScript exports are made from) generalises to other sizes."""
    import warnings

    model = random_network()
    for p in model.parameters():
        p.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.rand(1, 5, 3, 32, 48))
    x = torch.rand(1, 5, 3, 36, 44)
    torch.testing.assert_close(traced(x), model(x), atol=1e-5, rtol=0)
    assert np.isfinite(traced(x).numpy()).all()


def test_step_zero_is_the_single_frame_backbone():
    """Started from quality-x2 (the official SPAN), an untrained vsrt-x2 gives SPAN's picture exactly: training
    learns only what the neighbouring frames add."""
    from hypersr.engine import preset_registry

    span = preset_registry.load_model("quality-x2")
    model = build_model(preset_registry.get("vsrt-x2").card.architecture.as_dict()).eval()
    model.backbone.load_state_dict(span.state_dict())
    window = smooth_frames(5, 36, 52)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(window), span(window[:, 2:3]), atol=1e-5, rtol=0)
        window[:, 0] = window[:, 0].flip(-1)  # and no neighbour reaches the output yet
        torch.testing.assert_close(model(window), span(window[:, 2:3]), atol=1e-5, rtol=0)


def test_features_once_per_frame_in_training_equal_every_window():
    from hypersr.engine.window import window_indices
    from hypersr.training.train import upscale_clip

    model = random_network()
    clip = smooth_frames(7, 24, 40, seed=1)
    with torch.no_grad():
        once = upscale_clip(model, clip, batch=3)
        every = torch.cat([model(clip[row][None]).clamp(0, 1) for row in torch.from_numpy(window_indices(range(7), 7, 5))])
    torch.testing.assert_close(once, every, atol=1e-4, rtol=0)  # float32 rounding differs with batching and the CPU (1.1e-5 seen)


def test_runtime_keeps_each_frames_features_for_the_next_windows():
    """Pass two computes the backbone once per frame and stream (a window of 5 would otherwise run it 5 times
    per frame), with the same result as a window on its own; tiles keep their own features."""
    from hypersr.engine.backends import CPU
    from hypersr.engine.runtime import Upscaler
    from hypersr.engine.window import window_indices

    clip = smooth_frames(8, 40, 56, seed=2).numpy()
    upscaler = Upscaler("vsrt-x2", backend=CPU())
    assert upscaler.caches_features
    with torch.no_grad():
        upscaler.model.merge.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))  # every neighbour counts
    cached = upscaler.clip(clip)
    alone = np.stack([upscaler(clip[list(row)]) for row in window_indices(range(8), 8, 5)])
    np.testing.assert_array_equal(cached, alone)
    assert upscaler._all_slots[0].featured == 8
    assert len(upscaler._all_slots[0].features) <= 5  # only the frames the next window can still read

    tiled = Upscaler("vsrt-x2", backend=CPU(), tile=20, tile_pad=8)
    tiled.model.load_state_dict(upscaler.model.state_dict())
    tiled_cached = tiled.clip(clip)
    tiled_alone = np.stack([tiled(clip[list(row)]) for row in window_indices(range(8), 8, 5)])
    np.testing.assert_array_equal(tiled_cached, tiled_alone)
    assert tiled._all_slots[0].featured == 8


# --- the shipped vsrt-x2 preset through the paths users run ---------------------------------------------

def test_vsrt_x2_onnx_in_vs_mlrt_matches_hypersr(tmp_path):
    import vapoursynth as vs
    from helpers import run_hypersr

    from hypersr.vsplugin import Backend, upscale, window_clips
    from hypersr.vsplugin.io import clip_from_array, clip_to_array

    if not hasattr(vs.core, "ort"):
        pytest.fail("vs-mlrt's ORT plugin is missing: pip install vapoursynth-mlrt-ort (part of hypersr[dev])")
    onnx = tmp_path / "vsrt.onnx"
    proc = run_hypersr("export", "onnx", "--preset", "vsrt-x2", "-o", onnx)
    assert proc.returncode == 0, proc.stderr.decode()
    frames = smooth_frames(6, 36, 52, seed=8).numpy()
    clip = clip_from_array(frames)
    ours = clip_to_array(upscale(clip, preset="vsrt-x2", backend=Backend.CPU(bf16=False)))  # ORT's precision
    theirs = clip_to_array(vs.core.ort.Model(window_clips(clip, 2), network_path=str(onnx), provider="CPU"))
    assert ours.shape == theirs.shape == (6, 3, 72, 104)
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_vsrt_x2_torchscript_for_ffmpeg(tmp_path):
    from helpers import run_hypersr

    from hypersr.engine import preset_registry

    path = tmp_path / "vsrt.pt"
    assert run_hypersr("export", "torchscript", "--preset", "vsrt-x2", "-o", path).returncode == 0
    module = torch.jit.load(str(path))
    model = preset_registry.load_model("vsrt-x2")
    frames = smooth_frames(3, 40, 48, seed=9)
    with torch.inference_mode():
        module(torch.rand(1, 3, 40, 48))  # FFmpeg's trial call
        for n in range(3):
            out = module(frames[n][None])
            causal = [max(n - 2, 0), max(n - 1, 0), n, n, n]  # two previous, current, current again
            torch.testing.assert_close(out, model(frames[causal][None]).clamp(0, 1), atol=1e-5, rtol=0)


def test_the_ablation_times_every_part_switched_off():
    """`bench speed --ablation`: each variant is built and run as pass two runs it; its arithmetic says what was removed."""
    from hypersr.engine.errors import HypersrError
    from hypersr.training.bench_speed import ABLATION, ablation, ablation_table

    rows = {r["variant"]: r for r in ablation("vsrt-x2", 64, 48, 1)}
    assert list(rows)[1:] == list(ABLATION) and all(r["ms_per_frame"] > 0 for r in rows.values())
    macs = {k: r["macs"] for k, r in rows.items()}
    backbone = macs["the backbone alone, one frame at a time"]
    assert macs["full"] == macs["without positional encoding"]  # the encoding is added, not multiplied
    assert backbone < macs["without STCSA and BOFF"] < min(macs["without STCSA"], macs["without BOFF (a per-frame feed-forward, no flow)"])
    assert max(macs["without STCSA"], macs["without BOFF (a per-frame feed-forward, no flow)"]) < macs["full"]
    assert "| full |" in ablation_table(list(rows.values()))
    with pytest.raises(HypersrError, match="quality-x2 is a span network"):
        ablation("quality-x2", 64, 48, 1)
