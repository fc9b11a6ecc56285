"""Pass two's backends: the same network (LoRA merged), run three ways, each chosen by an options object
that carries its own settings (the way vs-mlrt's Backend.TRT(...) does):

    Backend.CPU(num_streams=1, bf16=None)                        PyTorch, channels_last, inference mode; fp32,
                 but the SPAN presets' blocks in bf16 where the CPU computes bf16 natively (None: decide by the
                 CPU; True / False: always / never), as OpenVINO's CPU plugin does by default.
    Backend.CUDA(device_index=0, num_streams=1, cuda_graphs=False)
                 PyTorch fp16 on an NVIDIA GPU, channels_last; each stream (a concurrent caller) has its own
                 CUDA stream and pinned host buffers, so one frame's copies overlap another's compute.
    Backend.TRT(device_index=0, num_streams=1, cache_dir=None)
                 Torch-TensorRT (dynamo): an fp16 engine with a dynamic-shape profile, cached on disk under a
                 key of everything that changes an engine. The engine is built refittable from the base
                 weights, so a clip's LoRA refits it instead of rebuilding it.

No backend given: CUDA when torch sees a GPU, else CPU (TRT is chosen explicitly: its first build takes
minutes). The Upscaler (runtime.py) owns one runner and the thread-safety, frame cache and tiling around it.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from .errors import HypersrError
from .files import atomic_write, sha256_file

BACKENDS = ("cpu", "cuda", "trt")
TRT_INSTALL = "pip install 'hypersr[trt]'"


def _whole(value, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise HypersrError(f"{name} must be a whole number, at least {least}, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class CPU:
    num_streams: int = 1  # frames in flight at once
    bf16: bool | None = None  # None: where the CPU has bf16 instructions (native_bf16)
    name: ClassVar[str] = "cpu"

    def device(self) -> torch.device:
        _whole(self.num_streams, "num_streams", 1)
        if self.bf16 not in (None, True, False):
            raise HypersrError(f"bf16 must be True, False or None (decide by the CPU), not {self.bf16!r}")
        return torch.device("cpu")

    def uses_bf16(self) -> bool:
        return native_bf16() if self.bf16 is None else self.bf16


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX): elsewhere oneDNN emulates it, slower
    than fp32."""
    return any(getattr(torch.cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


@dataclass(frozen=True)
class CUDA:
    device_index: int = 0
    num_streams: int = 1  # frames in flight at once, one CUDA stream each
    cuda_graphs: bool = False  # replay the network as a CUDA graph (not with tiles)
    name: ClassVar[str] = "cuda"

    def device(self) -> torch.device:
        _whole(self.num_streams, "num_streams", 1)
        return _gpu(self)


@dataclass(frozen=True)
class TRT:
    device_index: int = 0
    num_streams: int = 1
    cache_dir: str | None = None  # where built engines are kept (default ~/.cache/hypersr/trt)
    name: ClassVar[str] = "trt"

    def device(self) -> torch.device:
        import_torch_tensorrt()  # its install hint first: without it, nothing else matters
        _whole(self.num_streams, "num_streams", 1)
        return _gpu(self)


def _gpu(options: CUDA | TRT) -> torch.device:
    index = _whole(options.device_index, "device_index", 0)
    if not torch.cuda.is_available():
        raise HypersrError(f"Backend.{options.name.upper()} runs on an NVIDIA GPU, and torch sees none here; use Backend.CPU()")
    return resolve_device(f"cuda:{index}")


BackendOptions = CPU | CUDA | TRT


class Backend:
    """The backends' options, for scripts: hsr.upscale(rgb, backend=hsr.Backend.CUDA(num_streams=2))."""

    CPU, CUDA, TRT = CPU, CUDA, TRT


def default_backend() -> BackendOptions:
    return CUDA() if torch.cuda.is_available() else CPU()


def resolve_device(device: str | None) -> torch.device:
    """`None`/auto, cpu, cuda or cuda:N as a torch device, or a one-line error that says what to use."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise HypersrError(f"unknown device {device!r}; use cpu, cuda or cuda:N (e.g. cuda:0)") from None
    if dev.type not in ("cpu", "cuda"):
        raise HypersrError(f"unknown device {device!r}; use cpu, cuda or cuda:N (e.g. cuda:0)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise HypersrError(f"device {device} was asked for, but torch sees no CUDA GPU here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise HypersrError(f"device {device}: there are only {count} CUDA GPUs (cuda:0 .. cuda:{count - 1})")
    return dev


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend's name to run on `device` (already resolved), with a clear error for impossible choices."""
    if backend in (None, "auto"):
        return "cuda" if device.type == "cuda" else "cpu"
    if backend not in BACKENDS:
        raise HypersrError(f"unknown backend {backend!r}; use auto, {', '.join(BACKENDS)}")
    if backend in ("cuda", "trt") and device.type != "cuda":
        raise HypersrError(f"backend {backend} runs on an NVIDIA GPU, and torch sees none here (or device cpu was asked for); use backend cpu")
    if backend == "cpu" and device.type != "cpu":
        raise HypersrError(f"backend cpu cannot run on {device}; leave the device out or use backend cuda")
    return backend


def backend_from_names(backend: str | None, device: str | None, num_streams: int = 1, bf16: bool | None = None) -> BackendOptions:
    """The options the command line's --backend (auto, cpu, cuda, trt), --device (cpu, cuda, cuda:N) and
    --bf16 / --no-bf16 (None: decide by the CPU) name."""
    if backend == "trt":
        import_torch_tensorrt()
    if backend in ("cuda", "trt") and device in (None, "auto"):
        device = "cuda"
    dev = resolve_device(device)
    name = resolve_backend(backend, dev)
    index = dev.index or 0
    if bf16 is not None and name != "cpu":
        raise HypersrError(f"--bf16 / --no-bf16 choose the cpu backend's precision; the {name} backend runs fp16")
    return {"cpu": lambda: CPU(num_streams, bf16), "cuda": lambda: CUDA(index, num_streams), "trt": lambda: TRT(index, num_streams)}[name]()


def as_backend(backend) -> BackendOptions:
    """`backend` as given to the runtime: None (the default) or one of the options objects."""
    if backend is None:
        return default_backend()
    if not isinstance(backend, (CPU, CUDA, TRT)):
        raise HypersrError(f"backend must be Backend.CPU(), Backend.CUDA(...) or Backend.TRT(...), not {backend!r}")
    return backend


def import_torch_tensorrt():
    """torch_tensorrt, imported only when the trt backend is chosen."""
    try:
        import tensorrt  # noqa: F401
        import torch_tensorrt
    except ImportError as e:
        raise HypersrError(f"the trt backend needs TensorRT and Torch-TensorRT ({e.name} is missing): {TRT_INSTALL}, "
                           "or use backend cuda") from None
    return torch_tensorrt


class Runner(Protocol):
    """What the Upscaler asks of a backend's runner. A slot is one concurrent caller's own state (on a GPU:
    its CUDA stream and pinned buffers); the Upscaler hands each caller a slot of its own for the whole frame."""

    model: torch.nn.Module  # the network as this backend runs it (LoRA merged)
    device: torch.device
    dtype: torch.dtype

    def new_slot(self) -> Any: ...

    def to_device(self, frame: np.ndarray, slot: Any) -> torch.Tensor:
        """One LR frame [3, H, W] (float32, or float16 from RGBH clips) -> on the device, in the runner's dtype."""

    def stack(self, frames: list[torch.Tensor], slot: Any) -> torch.Tensor:
        """The window's frames (from to_device) -> [1, 2k+1, 3, H, W]."""

    def forward(self, x: torch.Tensor, slot: Any) -> torch.Tensor:
        """[1, 2k+1, 3, h, w] -> [1, 3, s*h, s*w] (a whole frame or one tile)."""

    # A runner with `splits` true also runs a network that has per-frame features (vsrt) in two parts, so
    # that the Upscaler can keep each frame's features for the next windows.
    splits: bool

    def frame_features(self, frame: torch.Tensor, slot: Any) -> tuple[torch.Tensor, ...]:
        """[1, 3, h, w] -> the network's frame_features."""

    def aggregate(self, x: torch.Tensor, partial: torch.Tensor, deep: torch.Tensor, slot: Any) -> torch.Tensor:
        """The window [1, 2k+1, 3, h, w] and its frames' features -> [1, 3, s*h, s*w]."""

    def to_host(self, y: torch.Tensor, slot: Any) -> np.ndarray:
        """[1, 3, H', W'] -> [3, H', W'] float32 on the host, clamped to 0..1."""


def bf16_parts(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The parts of a network that the cpu backend runs in bf16 where it may (low_precision: SPAN's blocks,
    vsrt's transformer)."""
    return [part for part in model.modules() if hasattr(part, "low_precision")]


class CpuRunner:
    """fp32 in channels_last, oneDNN's fast path; with bf16, the parts of the network that take it (bf16_parts)
    in bf16. torch.compile is not used: it gained little and costs seconds of compilation per frame size
    (README, "Speed")."""

    def __init__(self, model: torch.nn.Module, bf16: bool = False):
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.model = model.to(memory_format=torch.channels_last)
        if bf16:
            for part in bf16_parts(self.model):
                part.low_precision(torch.bfloat16)

    def new_slot(self):
        return None

    def to_device(self, frame: np.ndarray, slot) -> torch.Tensor:
        return torch.from_numpy(frame).float()

    def stack(self, frames: list[torch.Tensor], slot) -> torch.Tensor:
        return torch.stack(frames)[None]

    def forward(self, x: torch.Tensor, slot) -> torch.Tensor:
        return self.model(x)

    splits = True

    def frame_features(self, frame: torch.Tensor, slot) -> tuple[torch.Tensor, ...]:
        return self.model.frame_features(frame)

    def aggregate(self, x: torch.Tensor, partial: torch.Tensor, deep: torch.Tensor, slot) -> torch.Tensor:
        return self.model.aggregate(x, partial, deep)

    def to_host(self, y: torch.Tensor, slot) -> np.ndarray:
        return y[0].clamp_(0, 1).numpy()


@dataclass
class CudaSlot:
    """One concurrent caller's CUDA stream, pinned host buffers and captured graphs (all keyed by shape).
    A pinned input buffer is written again only once its last copy to the device has finished."""

    stream: torch.cuda.Stream
    pinned_in: dict = field(default_factory=dict)  # (shape, dtype) -> (buffer, event of its last copy)
    pinned_out: dict = field(default_factory=dict)
    graphs: dict = field(default_factory=dict)


class CudaRunner:
    def __init__(self, model: torch.nn.Module, device: torch.device, cuda_graphs: bool = False):
        self.device, self.dtype = device, torch.float16
        self.model = model.to(device, torch.float16, memory_format=torch.channels_last)
        self.cuda_graphs = cuda_graphs
        self.splits = not cuda_graphs  # a graph replays the whole-window network

    def new_slot(self) -> CudaSlot:
        return CudaSlot(torch.cuda.Stream(self.device))

    def to_device(self, frame: np.ndarray, slot: CudaSlot) -> torch.Tensor:
        key = (frame.shape, frame.dtype.str)
        if key not in slot.pinned_in:
            dtype = torch.float16 if frame.dtype == np.float16 else torch.float32
            slot.pinned_in[key] = (torch.empty(frame.shape, dtype=dtype, pin_memory=True), None)
        host, copied = slot.pinned_in[key]
        if copied is not None:
            copied.synchronize()
        host.numpy()[...] = frame  # RGBH stays half precision across the bus
        with torch.cuda.stream(slot.stream):
            on_device = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(slot.stream)
            slot.pinned_in[key] = (host, event)
            return on_device.to(self.dtype)

    def stack(self, frames: list[torch.Tensor], slot: CudaSlot) -> torch.Tensor:
        with torch.cuda.stream(slot.stream):
            return torch.stack(frames)[None]

    def forward(self, x: torch.Tensor, slot: CudaSlot) -> torch.Tensor:
        with torch.cuda.stream(slot.stream):
            if not self.cuda_graphs:
                return self.model(x)
            graph = slot.graphs.get(x.shape)
            if graph is None:  # capture once per shape: warm up on the slot's stream, then record
                static_in = x.clone()
                self.model(static_in)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, stream=slot.stream):
                    static_out = self.model(static_in)
                graph = slot.graphs[x.shape] = (g, static_in, static_out)
            g, static_in, static_out = graph
            static_in.copy_(x)
            g.replay()
            return static_out

    def frame_features(self, frame: torch.Tensor, slot: CudaSlot) -> tuple[torch.Tensor, ...]:
        with torch.cuda.stream(slot.stream):
            return self.model.frame_features(frame)

    def aggregate(self, x: torch.Tensor, partial: torch.Tensor, deep: torch.Tensor, slot: CudaSlot) -> torch.Tensor:
        with torch.cuda.stream(slot.stream):
            return self.model.aggregate(x, partial, deep)

    def to_host(self, y: torch.Tensor, slot: CudaSlot) -> np.ndarray:
        shape = tuple(y.shape[1:])
        host = slot.pinned_out.get(shape)
        if host is None:
            host = slot.pinned_out[shape] = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        with torch.cuda.stream(slot.stream):
            host.copy_(y[0].clamp(0, 1), non_blocking=True)
        slot.stream.synchronize()
        return host.numpy().copy()


# --- TensorRT ----------------------------------------------------------------------------------------

def trt_profile(width: int, height: int, min_size: int, bucket: int = 256) -> dict[str, tuple[int, int]]:
    """The engine's dynamic-shape profile (height, width) for frames of width x height: from the preset's
    minimum up to the frame size rounded up to `bucket`, so clips of nearby sizes share one engine."""
    top = (-(-height // bucket) * bucket, -(-width // bucket) * bucket)
    return {"min": (min_size, min_size), "opt": top, "max": top}


def trt_engine_key(arch: dict, base_sha256: str, profile: dict, precision: str, gpu: str, tensorrt_version: str,
                   torch_tensorrt_version: str, torch_version: str) -> str:
    """The cache key of a TensorRT engine: a hash of everything that changes the engine. A clip's LoRA is
    not part of it: engines are refittable and refitted with the merged weights."""
    fields = {"arch": arch, "base_sha256": base_sha256, "profile": {k: list(v) for k, v in profile.items()}, "precision": precision,
              "gpu": gpu, "tensorrt": tensorrt_version, "torch_tensorrt": torch_tensorrt_version, "torch": torch_version}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


class EngineCache:
    """Engines on disk: KEY.engine beside KEY.json (the engine's SHA-256 and what the key was made of).
    Both are written atomically; an entry whose engine does not match its record, or does not load, is
    removed and rebuilt."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.engine", self.root / f"{key}.json"

    def get(self, key: str, load):
        engine, record = self.paths(key)
        if not engine.exists() or not record.exists():
            return None
        try:
            if json.loads(record.read_text())["sha256"] != sha256_file(engine):
                raise ValueError("the engine does not match its record")
            return load(engine)
        except Exception as e:  # noqa: BLE001  (damaged in any way: rebuild)
            print(f"hypersr: cached TensorRT engine {engine.name} is damaged ({e}); rebuilding it", file=sys.stderr)
            engine.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            return None

    def put(self, key: str, save, about: dict) -> Path:
        engine, record = self.paths(key)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(engine, save)
        text = json.dumps({"sha256": sha256_file(engine), **about}, indent=2) + "\n"
        atomic_write(record, lambda tmp: Path(tmp).write_text(text))
        return engine


def default_trt_cache() -> Path:
    return Path(os.environ.get("HYPERSR_CACHE") or Path.home() / ".cache" / "hypersr") / "trt"


class TrtRunner(CudaRunner):
    """Torch-TensorRT engine for the preset's base weights, refitted with the merged LoRA weights.
    `build_s` / `refit_s` record what the engine cost (None when it came from the cache / had no LoRA)."""

    def __init__(self, base: torch.nn.Module, merged: torch.nn.Module | None, preset, device: torch.device, frame_size: tuple[int, int],
                 cache_dir: str | Path | None = None):
        torch_tensorrt = import_torch_tensorrt()
        import tensorrt

        super().__init__(base, device)
        self.splits = False  # the engine is the exported whole-window network
        self.build_s = self.refit_s = None
        w, h = frame_size
        profile = trt_profile(w, h, preset.min_size)
        t = preset.window
        shapes = {k: (1, t, 3, *v) for k, v in profile.items()}
        key = trt_engine_key(preset.card.architecture.as_dict(), preset.sha256, profile, "fp16", torch.cuda.get_device_name(device),
                             tensorrt.__version__, torch_tensorrt.__version__, torch.__version__)
        cache = EngineCache(cache_dir or default_trt_cache())
        example = torch.rand(shapes["opt"], device=device, dtype=torch.float16)
        dims = ({3: torch.export.Dim("height", min=shapes["min"][3], max=shapes["max"][3]),
                 4: torch.export.Dim("width", min=shapes["min"][4], max=shapes["max"][4])},)  # per positional input
        module = cache.get(key, lambda path: torch_tensorrt.load(str(path)).module())
        if module is None:
            t0 = time.perf_counter()
            program = torch.export.export(self.model, (example,), dynamic_shapes=dims)
            inputs = [torch_tensorrt.Input(min_shape=shapes["min"], opt_shape=shapes["opt"], max_shape=shapes["max"], dtype=torch.float16)]
            module = torch_tensorrt.dynamo.compile(program, inputs=inputs, enabled_precisions={torch.float16}, immutable_weights=False)
            cache.put(key, lambda tmp: torch_tensorrt.save(module, tmp, output_format="exported_program", arg_inputs=[example]),
                      {"preset": preset.name, "profile": shapes, "gpu": torch.cuda.get_device_name(device)})
            self.build_s = time.perf_counter() - t0
        if merged is not None:  # the clip's LoRA: new weights into the same engine
            t0 = time.perf_counter()
            weights = torch.export.export(merged.to(device, torch.float16, memory_format=torch.channels_last), (example,), dynamic_shapes=dims)
            module = torch_tensorrt.dynamo.refit_module_weights(module, weights, arg_inputs=[example])
            self.refit_s = time.perf_counter() - t0
        self.engine = module

    def forward(self, x: torch.Tensor, slot: CudaSlot) -> torch.Tensor:
        with torch.cuda.stream(slot.stream):
            return self.engine(x)
