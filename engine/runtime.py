"""Pass two's engine: a preset's network (LoRA merged) on a backend, upscaling one window at a time.

Integrations (VapourSynth, the y4m pipe through it) hand it a window's frame numbers and a way to fetch a
frame, and get the upscaled centre frame back; they never touch torch themselves.
"""

from __future__ import annotations

import ctypes
import queue
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import preset_registry
from .backends import CPU, CUDA, BackendOptions, CpuRunner, CudaRunner, Runner, TrtRunner, as_backend
from .errors import HypersrError
from .lora import LoRA
from .window import window_indices

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
    streaming loops hand memory back every few dozen frames (release_free_memory). These are settings of
    the whole process: only the `hypersr` command (and its benchmarks) calls this, before VapourSynth starts
    its threads, so that they share the one arena tuned here; the library never does (README, "Speed",
    has the environment variables that do the same for vspipe)."""
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


@dataclass
class _Slot:
    """One stream: the runner's slot, the LR frames already on the device and, for a network that splits into
    per-frame features and a per-window part (vsrt), each frame's features by frame number and tile."""

    runner_slot: Any
    frames: OrderedDict = field(default_factory=OrderedDict)
    features: OrderedDict = field(default_factory=OrderedDict)  # frame number -> {tile box: features}
    fetched: int = 0  # frames fetched and uploaded by this stream
    featured: int = 0  # frames whose features this stream computed (tiles counted once)


class Upscaler:
    """Pass two on one clip. Thread-safe: up to `num_streams` callers (VapourSynth's threads) run the model
    at once, each with its own slot of the backend (on a GPU: a CUDA stream and pinned buffers) and its own
    cache of the LR frames it has on the device, so a frame that several windows read is fetched and
    uploaded once per stream. A network with per-frame features (vsrt: the backbone runs on each frame, the
    transformer on the window) has them computed once per frame and stream, not once per window that holds
    the frame: the same result as recomputing them. Frames larger than `tile` are processed in tiles
    overlapping by `tile_pad` LR pixels (default: the network's receptive radius, or 16); where that covers
    the receptive field (the fast and quality presets) tiled output equals untiled output.

    backend: Backend.CPU(...), .CUDA(...) or .TRT(...) (engine/backends.py; None: CUDA when there is a GPU).
    TRT needs `frame_size` (width, height) to build its engine profile."""

    def __init__(self, preset: preset_registry.Preset | str | None = None, lora: LoRA | str | None = None, *,
                 backend: BackendOptions | None = None, tile: int | None = None, tile_pad: int | None = None,
                 frame_size: tuple[int, int] | None = None):
        self.preset = preset_registry.get(preset)
        self.options = as_backend(backend)
        self.device = self.options.device()
        if tile is not None and tile < self.preset.min_size:
            raise HypersrError(f"tile {tile} is below preset {self.preset.name}'s minimum frame size {self.preset.min_size}")
        if tile_pad is not None and tile_pad < 0:
            raise HypersrError(f"tile_pad must not be negative, not {tile_pad}")
        model = preset_registry.load_model(self.preset, lora, device=str(self.device))
        if tile_pad is None:
            tile_pad = getattr(model, "receptive_radius", 16)
        self.runner: Runner
        if isinstance(self.options, CPU):
            self.runner = CpuRunner(model, self.options.uses_bf16())
        elif isinstance(self.options, CUDA):
            self.runner = CudaRunner(model, self.device, self.options.cuda_graphs and not tile)
        else:
            if frame_size is None:
                raise HypersrError("the trt backend needs the frame size to build its engine")
            base = preset_registry.load_model(self.preset, device=str(self.device)) if lora is not None else model
            size = (min(tile + 2 * tile_pad, frame_size[0]), min(tile + 2 * tile_pad, frame_size[1])) if tile else frame_size
            self.runner = TrtRunner(base, model if lora is not None else None, self.preset, self.device, size, self.options.cache_dir)
        self.model = self.runner.model
        self.scale, self.window = self.preset.scale, self.preset.window
        # TensorRT runs the exported whole-window network, and a CUDA graph replays one: neither splits
        self.caches_features = hasattr(self.model, "aggregate") and getattr(self.runner, "splits", False)
        self.tile, self.tile_pad = tile, tile_pad
        self._all_slots = [_Slot(self.runner.new_slot()) for _ in range(self.options.num_streams)]
        self._slots: queue.Queue = queue.Queue()
        for slot in self._all_slots:
            self._slots.put(slot)

    @property
    def fetched(self) -> int:
        """LR frames fetched and uploaded so far, over all streams."""
        return sum(slot.fetched for slot in self._all_slots)

    def check_size(self, width: int, height: int) -> None:
        m = self.preset.min_size
        if width < m or height < m:
            raise HypersrError(f"frames of {width}x{height} are smaller than preset {self.preset.name}'s minimum of {m}x{m}; upscale larger video")

    def _forward(self, x: torch.Tensor, slot: _Slot, numbers: list[int] | None, box: tuple[int, int, int, int]) -> torch.Tensor:
        """The network on one window (or one tile box of it); with frame numbers, through the feature cache."""
        if numbers is None or not self.caches_features:
            return self.runner.forward(x, slot.runner_slot)
        features = []
        for i, m in enumerate(numbers):
            by_box = slot.features.setdefault(m, {})
            slot.features.move_to_end(m)
            if box not in by_box:
                by_box[box] = self.runner.frame_features(x[:, i], slot.runner_slot)
                slot.featured += box[:2] == (0, 0)  # a frame's first tile
            features.append(by_box[box])
        while len(slot.features) > self.window:  # the oldest first: streams walk the clip forwards
            slot.features.popitem(last=False)
        partial = features[self.window // 2][0]
        return self.runner.aggregate(x, partial, torch.stack([deep for _, deep in features], 1), slot.runner_slot)

    def _tiled(self, x: torch.Tensor, slot: _Slot, numbers: list[int] | None) -> torch.Tensor:
        h, w = x.shape[-2:]
        t, pad, s = self.tile, self.tile_pad, self.scale
        if not t or (h <= t and w <= t):
            return self._forward(x, slot, numbers, (0, 0, h, w))
        out = torch.empty(x.shape[0], 3, h * s, w * s, device=x.device, dtype=x.dtype)
        for y0 in range(0, h, t):
            for x0 in range(0, w, t):
                y1, x1 = min(y0 + t, h), min(x0 + t, w)
                py0, px0, py1, px1 = max(y0 - pad, 0), max(x0 - pad, 0), min(y1 + pad, h), min(x1 + pad, w)
                res = self._forward(x[..., py0:py1, px0:px1], slot, numbers, (py0, px0, py1, px1))
                oy, ox = (y0 - py0) * s, (x0 - px0) * s
                out[..., y0 * s : y1 * s, x0 * s : x1 * s] = res[..., oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s]
        return out

    @torch.inference_mode()
    def _centre(self, slot: _Slot, frames: list[torch.Tensor], numbers: list[int] | None = None) -> np.ndarray:
        x = self.runner.stack(frames, slot.runner_slot)
        result = self.runner.to_host(self._tiled(x, slot, numbers), slot.runner_slot)
        if np.isnan(result).any():  # clamping keeps NaN, and NaN becomes black or noise in the output
            raise HypersrError("the network produced NaN values (is there NaN or inf in the input?); "
                               "stopped before writing that frame: check the input, or run without the LoRA")
        return result

    @torch.inference_mode()
    def upscale(self, numbers: list[int], fetch: Callable[[int], np.ndarray]) -> np.ndarray:
        """The centre of the window of frames `numbers` (engine/window.py: ends and cuts already resolved),
        upscaled to [3, sH, sW] float32. fetch(m) gives frame m of the clip as [3, H, W] float32 or float16
        RGB; it is called only for frames this stream does not hold yet (numbers name frames of one clip)."""
        slot = self._slots.get()
        try:
            frames = []
            for m in numbers:
                x = slot.frames.get(m)
                if x is None:
                    x = slot.frames[m] = self.runner.to_device(np.ascontiguousarray(fetch(m)), slot.runner_slot)
                    slot.fetched += 1
                    while len(slot.frames) > 2 * self.window:  # the oldest first: streams walk the clip forwards
                        slot.frames.popitem(last=False)
                else:
                    slot.frames.move_to_end(m)
                frames.append(x)
            return self._centre(slot, frames, numbers)
        finally:
            self._slots.put(slot)

    @torch.inference_mode()
    def __call__(self, window: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """One window on its own, nothing cached: [2k+1, 3, H, W] float32 RGB (or a list of [3, H, W]) ->
        the centre frame upscaled, [3, sH, sW] float32."""
        slot = self._slots.get()
        try:
            return self._centre(slot, [self.runner.to_device(np.ascontiguousarray(f, np.float32), slot.runner_slot) for f in window])
        finally:
            self._slots.put(slot)

    def clip(self, lr: np.ndarray, cuts: tuple[int, ...] = ()) -> np.ndarray:
        """Every frame of an LR clip [T, 3, H, W] in order -> [T, 3, sH, sW] float32: what the integrations
        produce, for the benchmarks."""
        self.check_size(lr.shape[-1], lr.shape[-2])
        rows = window_indices(range(len(lr)), len(lr), self.window, cuts)
        return np.stack([self.upscale(list(row), lambda m: lr[m]) for row in rows])
