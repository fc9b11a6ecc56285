"""Exported models (LoRA merged) for other runtimes.

- ONNX for vs-mlrt (`core.ort.Model` etc.): input the window's frames concatenated along channels,
  [1, 3*(2k+1), H, W] (the order vs-mlrt uses when given the clips n-k..n+k), output [1, 3, sH, sW];
  H and W are dynamic.
- TorchScript for FFmpeg's `dnn_processing=dnn_backend=torch`: FFmpeg calls forward once per frame, in
  order, with [1, 3, H, W] RGB in 0..1 and no look-ahead, so the module keeps the previous frame as state
  (reset when the frame size changes) and uses a causal window: previous, current, current again.
  FFmpeg's first call is a trial on a frame of uninitialised memory, so the first call never becomes
  history. `single` mode uses the current frame alone.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from . import preset_registry
from .errors import HypersrError
from .files import atomic_write, check_output


class ChannelWindow(nn.Module):
    """[1, 3*T, H, W] -> the base model's [1, T, 3, H, W] -> [1, 3, sH, sW], clamped to 0..1."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.window = model.window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return self.model(x.reshape(n, self.window, 3, h, w)).clamp(0, 1)


class CausalWindow(nn.Module):
    """One frame in, one frame out, in order: the window is (previous k frames, current, current...)."""

    def __init__(self, model: nn.Module, single: bool = False):
        super().__init__()
        self.model = model
        self.k: int = model.window // 2
        self.single = single
        self.trial_pending: bool = True  # FFmpeg's trial call: its frame is garbage, never history
        self.register_buffer("history", torch.zeros(0, 3, 0, 0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frame = x[0]
        if self.single or self.history.shape[0] == 0 or self.history.shape[-2:] != frame.shape[-2:]:
            past = frame.unsqueeze(0).expand(self.k, -1, -1, -1)  # a new stream or size: start over
        else:
            past = self.history
        if self.trial_pending:
            self.trial_pending = False
        elif not self.single:
            self.history = torch.cat([past, frame.unsqueeze(0)])[1:].clone()
        window = torch.cat([past, frame.unsqueeze(0).expand(self.k + 1, -1, -1, -1)])
        return self.model(window.unsqueeze(0)).clamp(0, 1)


def _merged_model(out: str | Path, preset: str | None, lora: str | None) -> nn.Module:
    if str(out) == "-":
        raise HypersrError("an exported model is a file, not a stream: give -o a file name")
    check_output(out, lora, *preset_registry.get(preset).files())
    model = preset_registry.load_model(preset, lora, device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def export_onnx(out: str | Path, preset: str | None = None, lora: str | None = None, opset: int = 17) -> Path:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise HypersrError("ONNX export needs the onnx package: pip install 'hypersr[onnx]'") from None
    model = ChannelWindow(_merged_model(out, preset, lora)).eval()
    example = torch.rand(1, 3 * model.window, 32, 48)

    def write(tmp: str) -> None:
        torch.onnx.export(
            model, (example,), tmp, input_names=["window"], output_names=["upscaled"], opset_version=opset,
            dynamic_axes={"window": {2: "height", 3: "width"}, "upscaled": {2: "out_height", 3: "out_width"}}, dynamo=False,
        )

    atomic_write(out, write)
    return Path(out)


def export_torchscript(out: str | Path, preset: str | None = None, lora: str | None = None, single: bool = False) -> Path:
    base = _merged_model(out, preset, lora)
    window = base.window
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(base, torch.rand(1, window, 3, 32, 48))  # the merged network: plain convolutions
        traced.window = window
        scripted = torch.jit.script(CausalWindow(traced, single).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch, but it is what FFmpeg loads
        buffer = io.BytesIO()  # torch.jit.save aborts the whole process when a file write fails (e.g. a full disk)
        torch.jit.save(scripted, buffer)
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    return Path(out)
