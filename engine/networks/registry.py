"""The registry of base-network architectures: a model card's `architecture` entry names its `type`, and
build_model() makes that network. Every base network has the same interface: `forward(window)` takes a
window of 2k+1 consecutive LR frames, [N, 2k+1, 3, H, W] RGB in [0, 1], and returns the centre frame
upscaled, [N, 3, sH, sW]; it has `scale` and `window` attributes.

    @register("fast")
    class FastVSR(nn.Module): ...
"""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES: dict[str, type[nn.Module]] = {}


def register(name: str):
    """Class decorator: make the network buildable as {"type": name, ...its keyword arguments}."""
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is registered twice")
        ARCHITECTURES[name] = cls
        return cls
    return add


def build_model(arch: dict) -> nn.Module:
    """Build a base network from a model card's `architecture` entry: {"type": "fast", ...kwargs}."""
    arch = dict(arch)
    kind = arch.pop("type")
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {kind!r}; registered: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[kind](**arch)


def backbone_of(arch: dict) -> dict | None:
    """The architecture entry of the pretrained network inside the network `arch` describes (vsrt's SPAN, in
    its attribute `backbone`), or None: a training run may start that part from a preset of this architecture."""
    cls = ARCHITECTURES.get(arch.get("type"))
    return cls.backbone_architecture(arch) if hasattr(cls, "backbone_architecture") else None


def one_frame_of(arch: dict) -> dict | None:
    """The architecture entry of the same network reading one frame, when `arch` is a span network (a window's
    per-frame conv and fusion start from those weights: span_import.for_window), or None. One frame has no
    fusion: the entry leaves out the fusion's keys."""
    if arch.get("type") != "span":
        return None
    return {k: v for k, v in arch.items() if k not in ("fuse_kernel", "fusion")} | {"window": 1}


def macs_per_lr_pixel(model: nn.Module, size: int = 32) -> int:
    """Multiply-accumulates per LR input pixel of the convolutions and matrix products (attention),
    counted by torch's FlopCounterMode on a real forward pass: for a network with per-frame features (vsrt),
    one frame's features and one window's aggregation, as pass two runs it."""
    from torch.utils.flop_counter import FlopCounterMode

    window = torch.zeros(1, model.window, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        if hasattr(model, "aggregate"):
            partial, deep = model.frame_features(window[:, 0])
            model.aggregate(window, partial, torch.stack([deep] * model.window, 1))
        else:
            model(window)
    return round(counter.get_total_flops() / 2 / (size * size))
