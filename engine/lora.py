"""LoRA: convolution layers that carry low-rank factors, and the LoRA file format.

A LoRA for a clip is a pair of factors per adapted layer: A (rank x in*kh*kw) and B (out x rank).
The layer's effective weight is W + strength * (B @ A) reshaped to the kernel. `merge()` folds that into W
so that pass two costs exactly the base model; `unmerge()` restores W bit for bit (it keeps a copy).

The LoRA file (`hypersr analyse -o clip.lora`) is a safetensors file:
- tensors `LAYER.A` (rank x fan-in) and `LAYER.B` (out x rank), float32, for every adapted layer;
- metadata: format "hypersr-lora", format_version, preset, base_sha256, scale (the preset's upscaling
  factor), rank, strength, layers (JSON list), clip_fingerprint, made_by (JSON);
- the JSON header's keys sorted, so the same clip gives a byte-identical file.
Readers refuse a file whose values are not finite, and one whose update to any layer is out of
proportion: ||strength * B @ A|| (Frobenius) may be at most MAX_UPDATE_RATIO times ||W|| of the layer it
adapts. A LoRA adapts a network; it does not replace its weights (measured: predicted and refined LoRAs
stay below 0.16 x ||W|| on every preset, even with --refine 50).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from .errors import HypersrError
from .files import atomic_write, readable_file

LORA_FORMAT_VERSION = 1
MAX_UPDATE_RATIO = 1.0  # the largest ||strength * B @ A|| / ||W|| a LoRA file may ask for, per layer
# hypersr writes float32; the other full floating-point types convert exactly enough (float8 and integers do not)
READABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class LoRAConv2d(nn.Conv2d):
    """A Conv2d that may carry LoRA factors (A, B, strength) on top of its frozen base weight."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lora_A: torch.Tensor | None = None
        self.lora_B: torch.Tensor | None = None
        self.lora_strength = 1.0
        self._base_weight: torch.Tensor | None = None  # set while merged

    @property
    def fan_in(self) -> int:
        return self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]

    @property
    def merged(self) -> bool:
        return self._base_weight is not None

    def set_lora(self, A: torch.Tensor | None, B: torch.Tensor | None, strength: float = 1.0) -> None:
        if self.merged:
            raise RuntimeError("unmerge() before changing the LoRA of a merged layer")
        if A is not None:
            if A.dim() != 2 or A.shape[1] != self.fan_in or B.dim() != 2 or B.shape != (self.out_channels, A.shape[0]):
                raise ValueError(
                    f"LoRA factors A{tuple(A.shape)} B{tuple(B.shape)} do not fit a conv with "
                    f"{self.out_channels} outputs and fan-in {self.fan_in}"
                )
        self.lora_A, self.lora_B, self.lora_strength = A, B, float(strength)

    def effective_weight(self) -> torch.Tensor:
        """The weight this layer applies: base + LoRA (already so when merged)."""
        if self.lora_A is None or self.merged:
            return self.weight
        return self.weight + self.delta_weight()

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_strength * (self.lora_B @ self.lora_A)).view_as(self.weight)

    def merge(self) -> None:
        if self.merged or self.lora_A is None:
            return
        self._base_weight = self.weight.data.clone()
        self.weight.data += self.delta_weight().to(self.weight.dtype)

    def unmerge(self) -> None:
        if not self.merged:
            return
        self.weight.data.copy_(self._base_weight)
        self._base_weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.lora_A is None or self.merged:
            return y
        # Unmerged path: x -> (A as a kxk conv to `rank` channels) -> (B as a 1x1 conv) -> scaled.
        rank = self.lora_A.shape[0]
        a = self.lora_A.view(rank, self.in_channels // self.groups, *self.kernel_size)
        b = self.lora_B.view(self.out_channels, rank, 1, 1)
        h = F.conv2d(x, a, None, self.stride, self.padding, self.dilation)
        return y + self.lora_strength * F.conv2d(h, b)


def lora_layers(model: nn.Module) -> dict[str, LoRAConv2d]:
    """The adapted layers of a model, by their module name (the names a LoRA file uses)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRAConv2d)}


@contextlib.contextmanager
def lora_applied(model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """The factors on the model's layers, unmerged, for the duration of the block (gradients flow into
    them); the layers carry no LoRA afterwards."""
    layers = lora_layers(model)
    for name, layer in layers.items():
        layer.set_lora(*factors[name])
    try:
        yield model
    finally:
        for layer in layers.values():
            layer.set_lora(None, None)


def merge_all(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_all(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


@dataclass
class LoRA:
    """LoRA factors for every adapted layer of one base model, with where they came from."""

    preset: str
    base_sha256: str
    upscale_factor: int  # the preset's (x2, x4); the file's metadata calls it `scale`
    rank: int
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer name -> (A, B)
    strength: float = 1.0
    clip_fingerprint: str = ""
    made_by: dict = field(default_factory=dict)  # how it was made: tool, hypernet, refine steps, ...

    def apply_to(self, model: nn.Module) -> None:
        layers = lora_layers(model)
        missing = sorted(set(layers) - set(self.factors))
        extra = sorted(set(self.factors) - set(layers))
        if missing or extra:
            raise HypersrError(
                f"this LoRA's layers do not match the model (missing {missing[:3]}, unknown {extra[:3]}); "
                "make the LoRA again with `hypersr analyse` for this preset"
            )
        for name, layer in layers.items():
            A, B = self.factors[name]
            ratio = update_ratio(layer.weight, A, B, self.strength)
            if not ratio <= MAX_UPDATE_RATIO:
                raise HypersrError(
                    f"this LoRA would change layer {name} by {ratio:.3g} times its own weights (at most {MAX_UPDATE_RATIO:g} is "
                    "allowed): the file is damaged or was not made by hypersr; make it again with `hypersr analyse`"
                )
        for name, layer in layers.items():
            A, B = self.factors[name]
            dev, dt = layer.weight.device, layer.weight.dtype
            layer.set_lora(A.to(dev, dt), B.to(dev, dt), self.strength)


def update_ratio(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, strength: float) -> float:
    """||strength * B @ A|| / ||W||, in float64 so that absurd factors give a large number, not inf or NaN."""
    delta = strength * (B.detach().double().cpu() @ A.detach().double().cpu())
    return float(delta.norm() / weight.detach().double().cpu().norm().clamp_min(1e-12))


def save_lora(lora: LoRA, path: str | os.PathLike) -> None:
    tensors = {}
    for name, (A, B) in lora.factors.items():
        tensors[f"{name}.A"] = A.detach().float().contiguous().cpu()
        tensors[f"{name}.B"] = B.detach().float().contiguous().cpu()
    metadata = {
        "format": "hypersr-lora",
        "format_version": str(LORA_FORMAT_VERSION),
        "preset": lora.preset,
        "base_sha256": lora.base_sha256,
        "scale": str(lora.upscale_factor),
        "rank": str(lora.rank),
        "strength": repr(lora.strength),
        "layers": json.dumps(sorted(lora.factors)),
        "clip_fingerprint": lora.clip_fingerprint,
        "made_by": json.dumps(lora.made_by),
    }
    blob = _canonical_header(save(tensors, metadata=metadata))
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))


def _canonical_header(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted: safetensors writes metadata in a
    random order per process, and the same clip should give a byte-identical LoRA file. Tensor offsets
    are relative to the end of the header, so rewriting it leaves the data valid."""
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # safetensors aligns the data to 8 bytes
    return len(header).to_bytes(8, "little") + header + blob[8 + n :]


def load_lora(path: str | os.PathLike) -> LoRA:
    """Read and check a LoRA file's own consistency (not yet against a model: see preset_registry.load_model)."""
    path = readable_file(path, "LoRA file", "make one with `hypersr analyse`")
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(header_len)).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError, AttributeError) as e:
        raise HypersrError(f"{path} is not a readable LoRA file ({e}); make it again with `hypersr analyse`") from None
    if meta.get("format") != "hypersr-lora":
        raise HypersrError(f"{path} is a safetensors file but not a hypersr LoRA; make one with `hypersr analyse`")

    def entry(key: str, kind: type, default=None):
        """A metadata entry as the type save_lora wrote it (numbers and JSON are stored as text)."""
        text = meta.get(key, default)
        if text is None:
            raise KeyError(key)
        value = json.loads(text) if kind in (list, dict) else kind(text)
        if not isinstance(value, kind) or (kind is list and not all(isinstance(v, str) for v in value)):
            raise ValueError(f"{key} is not a {kind.__name__}")
        return value

    try:
        if entry("format_version", int, "0") > LORA_FORMAT_VERSION:
            raise HypersrError(f"{path} uses LoRA format {meta['format_version']}, newer than this hypersr; upgrade hypersr")
        layers = entry("layers", list)
        factors = {name: (tensors[f"{name}.A"], tensors[f"{name}.B"]) for name in layers}
        rank = entry("rank", int)
        lora = LoRA(
            preset=entry("preset", str),
            base_sha256=entry("base_sha256", str),
            upscale_factor=entry("scale", int),
            rank=rank,
            factors=factors,
            strength=entry("strength", float, "1.0"),
            clip_fingerprint=entry("clip_fingerprint", str, ""),
            made_by=entry("made_by", dict, "{}"),
        )
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise HypersrError(f"{path} is a damaged LoRA file (missing or bad entry {str(e)[:80]}); make it again with `hypersr analyse`") from None
    for name, (A, B) in factors.items():
        if A.dtype not in READABLE_DTYPES or B.dtype not in READABLE_DTYPES:
            bad = A.dtype if A.dtype not in READABLE_DTYPES else B.dtype
            raise HypersrError(f"{path} is not a LoRA hypersr can use (layer {name} is stored as {str(bad).removeprefix('torch.')}; "
                               "hypersr writes float32); make it again with `hypersr analyse`")
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != rank or B.shape[1] != rank:
            raise HypersrError(f"{path} is a damaged LoRA file (layer {name} has bad factor shapes)")
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            raise HypersrError(f"{path} is a damaged LoRA file (layer {name} holds NaN or infinite values); make it again with `hypersr analyse`")
    if not math.isfinite(lora.strength):
        raise HypersrError(f"{path} is a damaged LoRA file (its strength is {lora.strength}); make it again with `hypersr analyse`")
    return lora
