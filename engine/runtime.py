"""Pass two's engine: a preset's network (LoRA merged) on a device, upscaling one window at a time.

Integrations (VapourSynth, the y4m pipe) hand it windows of RGB float frames and get the upscaled
centre frame back; they never touch torch themselves.
"""

from __future__ import annotations

import ctypes
import queue

import numpy as np
import torch

from . import preset_registry
from .backends import (
    Backend,
    CpuBackend,
    CudaBackend,
    TrtBackend,
    import_torch_tensorrt,
    resolve_backend,
)
from .errors import HypersrError
from .lora import LoRA


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


try:
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallopt, _libc.malloc_trim  # noqa: B018  (glibc only)
except (OSError, AttributeError):
    _libc = None
_malloc_tuned = False


def keep_large_buffers() -> None:
    """Let glibc reuse freed blocks instead of unmapping them: by default it serves large blocks (a frame's
    activations) with fresh mappings, and the page faults of refilling them every frame cost as much as
    the convolutions (README, "Speed"). No block is mmapped and up to 1 GB of freed heap is kept; the
    streaming loops hand memory back every few dozen frames (release_free_memory). The `hypersr` command
    calls this before VapourSynth starts its threads, so that they share the one arena tuned here."""
    global _malloc_tuned
    if _malloc_tuned or _libc is None:  # not glibc: nothing to tune
        return
    _malloc_tuned = True
    _libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmapped blocks
    _libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GB of freed memory for reuse
    _libc.mallopt(-8, 1)  # M_ARENA_MAX: threads started from now on share the main arena tuned above


def release_free_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim): streaming through VapourSynth's
    resizers fragments the heap, and without this pass one's memory grew with the clip's length although
    nothing stays alive (README, "The medium-term memory"). The streaming loops call it every few dozen frames."""
    if _libc is not None:
        _libc.malloc_trim(0)


class Upscaler:
    """Thread-safe: up to `num_streams` callers (VapourSynth's threads) run the model at once, each with
    its own slot of the backend (on a GPU: a CUDA stream and pinned buffers). Frames larger than `tile`
    are processed in tiles overlapping by `tile_pad` LR pixels (default: the network's receptive radius,
    or 16); where that covers the receptive field (the fast and quality presets) tiled output equals untiled output.

    backend: auto, cpu, cuda or trt (engine/backends.py). trt needs `frame_size` (width, height) to build
    its engine profile; the cache lives in `trt_cache_dir` (default ~/.cache/hypersr/trt)."""

    def __init__(self, preset: str | None = None, lora: LoRA | str | None = None, *, device: str | None = None,
                 backend: str | None = None, num_streams: int = 1, tile: int | None = None, tile_pad: int | None = None,
                 frame_size: tuple[int, int] | None = None, trt_cache_dir: str | None = None, cuda_graphs: bool = False):
        self.preset = preset_registry.get(preset)
        if backend == "trt":
            import_torch_tensorrt()  # its install hint first: without it, nothing else matters
        if backend in ("cuda", "trt") and device in (None, "auto"):
            device = "cuda"
        self.device = resolve_device(device)
        self.backend_name = resolve_backend(backend, self.device)
        if num_streams < 1:
            raise HypersrError(f"num_streams must be at least 1, not {num_streams}")
        if tile is not None and tile < self.preset.min_size:
            raise HypersrError(f"tile {tile} is below preset {self.preset.name}'s minimum frame size {self.preset.min_size}")
        if tile_pad is not None and tile_pad < 0:
            raise HypersrError(f"tile_pad must not be negative, not {tile_pad}")
        if self.backend_name == "cpu":
            keep_large_buffers()
        model = preset_registry.load_model(self.preset, lora, device=str(self.device))
        if tile_pad is None:
            tile_pad = getattr(model, "receptive_radius", 16)
        self.backend: Backend
        if self.backend_name == "cpu":
            self.backend = CpuBackend(model)
        elif self.backend_name == "cuda":
            self.backend = CudaBackend(model, self.device, cuda_graphs and not tile)
        else:
            if frame_size is None:
                raise HypersrError("the trt backend needs the frame size to build its engine")
            base = preset_registry.load_model(self.preset, device=str(self.device)) if lora is not None else model
            size = (min(tile + 2 * tile_pad, frame_size[0]), min(tile + 2 * tile_pad, frame_size[1])) if tile else frame_size
            self.backend = TrtBackend(base, model if lora is not None else None, self.preset, self.device, size, trt_cache_dir)
        self.model = self.backend.model
        self.scale, self.window = self.preset.scale, self.preset.window
        self.tile, self.tile_pad = tile, tile_pad
        self._slots: queue.Queue = queue.Queue()
        for _ in range(num_streams):
            self._slots.put(self.backend.new_slot())

    def check_size(self, width: int, height: int) -> None:
        m = self.preset.min_size
        if width < m or height < m:
            raise HypersrError(f"frames of {width}x{height} are smaller than preset {self.preset.name}'s minimum of {m}x{m}; upscale larger video")

    def _tiled(self, x: torch.Tensor, slot) -> torch.Tensor:
        h, w = x.shape[-2:]
        t, pad, s = self.tile, self.tile_pad, self.scale
        if not t or (h <= t and w <= t):
            return self.backend.forward(x, slot)
        out = torch.empty(x.shape[0], 3, h * s, w * s, device=x.device, dtype=x.dtype)
        for y0 in range(0, h, t):
            for x0 in range(0, w, t):
                y1, x1 = min(y0 + t, h), min(x0 + t, w)
                py0, px0, py1, px1 = max(y0 - pad, 0), max(x0 - pad, 0), min(y1 + pad, h), min(x1 + pad, w)
                res = self.backend.forward(x[..., py0:py1, px0:px1], slot)
                oy, ox = (y0 - py0) * s, (x0 - px0) * s
                out[..., y0 * s : y1 * s, x0 * s : x1 * s] = res[..., oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s]
        return out

    @torch.inference_mode()
    def __call__(self, window: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """window: [2k+1, 3, H, W] float32 RGB (or a list of [3, H, W]) -> the centre frame upscaled,
        [3, sH, sW] float32."""
        window = np.ascontiguousarray(window if isinstance(window, np.ndarray) else np.stack(window), dtype=np.float32)
        slot = self._slots.get()
        try:
            result = self.backend.to_host(self._tiled(self.backend.to_device(window, slot), slot), slot)
        finally:
            self._slots.put(slot)
        if np.isnan(result).any():  # clamping keeps NaN, and NaN becomes black or noise in the output
            raise HypersrError("the network produced NaN values (is there NaN or inf in the input?); "
                               "stopped before writing that frame: check the input, or run without the LoRA")
        return result
