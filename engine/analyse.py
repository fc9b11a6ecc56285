"""Pass one: read a whole LR clip once and make its LoRA (hypernet prediction, optionally refined).

    analyser = Analyser("fast-x2", refine=10)
    for frame in frames:           # [3, H, W] float32 RGB, in order; O(1) memory in clip length
        analyser.update(frame)
    lora = analyser.lora()         # a LoRA carrying the clip's fingerprint and how it was made

Integrations (the `hypersr analyse` command, vsplugin.analyse) only feed frames in. `--refine N` is N
steps of self-supervised test-time training of the predicted LoRA: pairs made from the clip itself, its
LR frames downscaled again (BI, rounded to 8 bits) -> the LR frames, on a fixed-size random sample of the
clip's windows. On a real-source preset the user declares what the source went through (`--source-kind`,
engine/degradation.SOURCE_KINDS) and the clip's frames are degraded again by draws of that kind instead:
BI pairs teach a compressed clip to keep its artefacts. Presets whose card sets `refine_refused` take
none (measured to make clips worse).

The safety check: a memory must never leave a clip worse than pass two alone. Pass one keeps crops of a
few of the clip's frames (chosen by a hash of the frame number, so segments merge exactly) and, at the
end, upscales them from one scale down (BI, rounded to 8 bits) with the LoRA at each strength in
CHECK_STRENGTHS, scoring the float outputs, and the LoRA file gets the strength that does best there
(0: the base unchanged). The check sees a harm's sign but often only part of its size (a memory-test still:
-0.18 dB on the check, -0.94 dB on the distant shots), so every harm it sees is believed; on compressed
clips it also misses small gains, which that costs (the README's *Never worse* gives the measurements).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from . import degradation, preset_registry
from .backends import resolve_device
from .bi import bi_downscale_8bit
from .errors import HypersrError
from .fitting import fit_factors
from .hypernet import ClipSummary
from .lora import LoRA, lora_applied

REFINE_WINDOWS = 32  # windows kept for --refine, whatever the clip's length
REFINE_CROP = 64  # LR pixels; the pairs are (crop / scale) -> crop
REFINE_BATCH = 8
REFINE_LR = 1e-3
REFINE_CHECK = 5  # refine steps between checks of the held-out loss
REFINE_DRAWS = 3  # degraded copies of each kept window for a declared source kind (other than clean)
CHECK_FRAMES = 32  # frames the safety check keeps, whatever the clip's length
CHECK_CROP = 32  # LR pixels of the check's inputs (the crops kept are CHECK_CROP * scale)
CHECK_STRENGTHS = (0.0, 0.5, 1.0)


def frame_key(i: int) -> int:
    """A fixed pseudo-random 64-bit key per frame number (splitmix64): the check keeps the frames with the
    lowest keys, a choice that does not depend on how the clip was cut into segments."""
    z = (i + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def check_crop(frame: np.ndarray, key: int, scale: int) -> np.ndarray:
    """The crop of `frame` the check keeps, placed by the key's low bits."""
    h, w = frame.shape[-2:]
    c = min(CHECK_CROP * scale, h, w)
    c -= c % scale
    y, x = (key & 0xFFFF) % (h - c + 1), ((key >> 16) & 0xFFFF) % (w - c + 1)
    return frame[:, y : y + c, x : x + c].copy()


def keep_lowest(kept: dict[int, np.ndarray], more: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """The CHECK_FRAMES entries with the lowest keys of both (a bottom-k sample: mergeable, O(1) memory)."""
    both = {**kept, **more}
    return {k: both[k] for k in sorted(both)[:CHECK_FRAMES]}


def fingerprint_indices(n: int) -> list[int]:
    """The frames a fingerprint reads: 0, 1, 2, 4, 8, ... and the last (few, and knowable while streaming)."""
    idx = {0, n - 1}
    p = 1
    while p < n:
        idx.add(p)
        p *= 2
    return sorted(i for i in idx if i >= 0)


def frame_digest(frame: np.ndarray) -> str:
    q = np.round(np.clip(frame, 0, 1) * 65535).astype("<u2")
    return hashlib.sha256(q.tobytes()).hexdigest()


def clip_fingerprint(n: int, width: int, height: int, digests: dict[int, str]) -> str:
    """A clip's identity for caches: its size, length and the content of the fingerprint frames."""
    h = hashlib.sha256(json.dumps([n, width, height]).encode())
    for i in fingerprint_indices(n):
        h.update(f"{i}:{digests[i]}".encode())
    return h.hexdigest()


@dataclass
class Segment:
    """What pass one learnt from consecutive frames first .. first+frames-1 of a clip: mergeable."""

    first: int
    frames: int
    size: tuple[int, int]
    summary: ClipSummary
    digests: dict[int, str]  # fingerprint frames among these
    last_digest: str
    check: dict[int, np.ndarray]  # the safety check's crops among these, by frame key


def checked_refine(preset, refine, measure_refused_refine: bool = False) -> int:
    """`refine` as a whole number of steps this preset takes, or one HypersrError saying why not (said
    before any work, and before a cached LoRA is reused). Benchmarks still measure a refused refine."""
    if isinstance(refine, bool) or not isinstance(refine, numbers.Integral) or refine < 0:  # a .vpy script may pass 1.5 or "10"
        raise HypersrError(f"refine must be a whole number of steps, 0 or more, not {refine!r}")
    p = preset_registry.get(preset)
    if refine and p.refine_refused and not measure_refused_refine:
        raise HypersrError(f"preset {p.name} takes no --refine: {p.refine_refused}; run pass one without it")
    return int(refine)


def checked_source_kind(preset, refine: int, source_kind, measure_refused_refine: bool = False) -> str:
    """What refine's pairs are degraded by: one of degradation.SOURCE_KINDS, or one HypersrError saying
    what to give. A real-source preset refines only with the source's kind declared (BI pairs made its
    clips worse, README "Real sources"); a clean-source preset refines with BI (clean) only."""
    p = preset_registry.get(preset)
    kinds = ", ".join(degradation.SOURCE_KINDS)
    if source_kind is not None and source_kind not in degradation.SOURCE_KINDS:
        raise HypersrError(f"the source kind must be one of {kinds}, not {source_kind!r}")
    if source_kind is not None and not refine:
        raise HypersrError(f"source kind {source_kind} steers --refine only; give --refine N too (e.g. --refine 20), or leave it out")
    if not p.card.is_real_source:
        if source_kind not in (None, "clean"):
            raise HypersrError(f"preset {p.name} was trained on clean sources and refines with clean pairs only; "
                               f"for a {source_kind} source use a real-source preset (real-x2)")
        return "clean"
    taken = p.card.refine_kinds or degradation.SOURCE_KINDS
    if refine and source_kind is None and not measure_refused_refine:
        raise HypersrError(f"preset {p.name} refines only for a declared kind of source: add --source-kind with one of {', '.join(taken)} "
                           "(what the source went through; `hypersr analyse --help` says what each means)")
    if refine and source_kind not in (None, *taken) and not measure_refused_refine:
        raise HypersrError(f"preset {p.name} does not refine for {source_kind} sources: measured, it made them worse or gained nothing "
                           f"(README, Real sources); it refines for {', '.join(taken)}; run pass one without --refine")
    return source_kind or "clean"


class Analyser:
    """Pass one's state. `first_index`: where in the clip the frames fed to this analyser start (for a
    segment analysed apart; merge the segments in order with absorb())."""

    def __init__(self, preset: str | None = None, refine: int = 0, device: str | None = None, seed: int = 0, first_index: int = 0,
                 measure_refused_refine: bool = False, source_kind: str | None = None):
        refine = checked_refine(preset, refine, measure_refused_refine)
        self.source_kind = checked_source_kind(preset, refine, source_kind, measure_refused_refine)
        self.preset = preset_registry.get(preset)
        self.device = resolve_device(device)
        self.base = preset_registry.load_model(self.preset, device=str(self.device))
        self.hypernet, self.hypernet_sha256 = preset_registry.load_hypernet(self.preset, self.base, device=str(self.device))
        self.refine = refine
        self.summary = self.hypernet.empty_summary(self.device)
        self.first, self.n = first_index, 0
        self.size: tuple[int, int] | None = None
        self._digests: dict[int, str] = {}
        self._rng = np.random.default_rng(seed)
        self._recent: list[np.ndarray] = []  # the last 2k+1 frames, for refine windows
        self._windows: list[np.ndarray] = []  # reservoir sample of window crops for refine
        self._seen_windows = 0
        self._check: dict[int, np.ndarray] = {}  # frame key -> crop, for the safety check

    @torch.inference_mode()
    def update(self, frame: np.ndarray) -> None:
        """Take the next frame, [3, H, W] float32 RGB."""
        h, w = frame.shape[-2:]
        if self.size is None:
            self.check_size(w, h)
            self.size = (w, h)
        elif self.size != (w, h):
            raise HypersrError(f"frame {self.n} is {w}x{h}, earlier frames {self.size[0]}x{self.size[1]}; analyse one frame size at a time")
        x = torch.from_numpy(np.ascontiguousarray(frame, np.float32))[None].to(self.device)
        self.summary = self.summary.merge(self.hypernet.summarise(x, self.base))
        self._last_digest = frame_digest(frame)
        i = self.first + self.n
        if i & (i - 1) == 0:  # 0, 1, 2, 4, 8, ...: fingerprint frames whatever the length
            self._digests[i] = self._last_digest
        if self.refine:
            self._keep_window(frame)
        key = frame_key(i)
        if len(self._check) < CHECK_FRAMES or key < max(self._check):
            self._check = keep_lowest(self._check, {key: check_crop(frame, key, self.preset.scale)})
        self.n += 1

    def check_size(self, w: int, h: int) -> None:
        m = max(self.preset.min_size, 8 * self.preset.scale)
        if w < m or h < m:
            raise HypersrError(f"frames of {w}x{h} are smaller than {m}x{m}, the least pass one of preset {self.preset.name} can analyse")

    def _keep_window(self, frame: np.ndarray) -> None:
        t = self.preset.window
        self._recent = (self._recent + [frame])[-t:]
        if len(self._recent) < t:
            return
        self._seen_windows += 1
        slot = len(self._windows) if len(self._windows) < REFINE_WINDOWS else int(self._rng.integers(self._seen_windows))
        if slot >= REFINE_WINDOWS:
            return
        h, w = frame.shape[-2:]
        c = min(REFINE_CROP, h, w)
        c -= c % self.preset.scale
        y, x = int(self._rng.integers(h - c + 1)), int(self._rng.integers(w - c + 1))
        crop = np.stack([f[:, y : y + c, x : x + c] for f in self._recent]).copy()
        if slot == len(self._windows):
            self._windows.append(crop)
        else:
            self._windows[slot] = crop

    def segment(self) -> Segment:
        return Segment(self.first, self.n, self.size, self.summary, dict(self._digests), self._last_digest, dict(self._check))

    def absorb(self, seg: Segment) -> None:
        """Merge the summary of the frames that follow this analyser's (refine windows are not merged)."""
        if seg.first != self.first + self.n:
            raise ValueError(f"segment starts at frame {seg.first}, expected {self.first + self.n}")
        if self.size is not None and seg.size != self.size:
            raise HypersrError(f"frame size changes from {self.size} to {seg.size}; analyse one frame size at a time")
        self.summary = self.summary.merge(seg.summary)
        self.size, self.n = seg.size, self.n + seg.frames
        self._digests.update(seg.digests)
        self._last_digest = seg.last_digest
        self._check = keep_lowest(self._check, seg.check)

    def fingerprint(self) -> str:
        if self.first != 0:
            raise ValueError("a fingerprint needs the clip from frame 0")
        return clip_fingerprint(self.n, *self.size, {**self._digests, self.n - 1: self._last_digest})

    def lora(self) -> LoRA:
        if self.n == 0:
            raise HypersrError("the input has no frames; nothing to analyse")
        with torch.inference_mode():
            factors = {k: (a.clone(), b.clone()) for k, (a, b) in self.hypernet.factors(self.summary).items()}
        if self.refine:
            factors = refine_factors(self.base, factors, np.stack(self._windows), self.refine, self.preset.scale, self._rng,
                                     self.source_kind, self.preset.card.refine_lr or REFINE_LR)
        made_by = {"tool": "hypersr analyse", "hypernet_sha256": self.hypernet_sha256, "refine": self.refine, "frames": self.n}
        if self.refine:
            made_by["source_kind"] = self.source_kind
        with torch.inference_mode():
            if (share := self.hypernet.clean_share(self.summary)) is not None:
                made_by["clean_share"] = round(share, 4)
            strength, gains = safety_strength(self.base, factors, [self._check[k] for k in sorted(self._check)], self.preset.scale,
                                              self.source_kind if self.refine else "clean")
        made_by["check"] = {"strength": strength, "gain_db": {str(s): round(g, 4) for s, g in gains.items()}}
        return LoRA(
            preset=self.preset.name, base_sha256=self.preset.sha256, upscale_factor=self.preset.scale, rank=self.hypernet.lora_rank,
            factors={k: (a.detach().cpu(), b.detach().cpu()) for k, (a, b) in factors.items()}, strength=strength,
            clip_fingerprint=self.fingerprint(), made_by=made_by,
        )


def degrade_again(clips: torch.Tensor, scale: int, source_kind: str, rng: np.random.Generator) -> torch.Tensor:
    """LR clips [N, T, 3, c, c] one scale further down, the way their source was degraded: BI rounded to
    8 bits (clean), else each clip by its own draw of the source kind (degradation.sample_kind)."""
    if source_kind == "clean":
        return bi_downscale_8bit(clips, scale)
    return torch.stack([degradation.apply(c, scale, degradation.sample_kind(source_kind, rng), rng) for c in clips])


def safety_strength(base, factors: dict, crops: list[np.ndarray], scale: int, source_kind: str = "clean") -> tuple[float, dict[float, float]]:
    """The strength the LoRA file gets (of CHECK_STRENGTHS, the one that restores the check's crops from one
    scale down best; the higher one on a tie), and each strength's gain over the base on the crops (dB). The
    crops go down the way refine's pairs did (BI, or fixed draws of the declared source kind): a refine for a
    compressed source is judged on compressed copies."""
    device = next(base.parameters()).device
    by_size: dict[tuple, list[np.ndarray]] = {}
    for c in crops:  # frames smaller than the crop give smaller crops
        by_size.setdefault(c.shape, []).append(c)
    border = 2 * scale  # the inputs' zero padding is not what the frames' interiors see
    rng = np.random.default_rng(0)  # the same draws for every run: LoRA files are deterministic
    pairs = []
    for group in by_size.values():
        target = torch.from_numpy(np.stack(group))
        pairs.append((degrade_again(target[:, None], scale, source_kind, rng)[:, 0].to(device), target.to(device)))

    def mse(strength: float) -> float:
        err, n = 0.0, 0
        scaled = {k: (a, strength * b) for k, (a, b) in factors.items()}
        with lora_applied(base, scaled):
            for small, target in pairs:
                # float outputs: at 57 dB, rounding them to 8 bits made the choice of strength noise (a memory-test still)
                out = base(small.unsqueeze(1).expand(-1, base.window, -1, -1, -1)).clamp(0, 1)
                d = (out - target)[..., border:-border, border:-border]
                y = 0.299 * d[:, 0] + 0.587 * d[:, 1] + 0.114 * d[:, 2]
                err, n = err + float(y.double().square().sum()), n + y.numel()
        return err / max(n, 1)

    at_zero = mse(0.0)
    if at_zero == 0:  # flat frames: nothing to tell the strengths apart
        return 1.0, dict.fromkeys(CHECK_STRENGTHS, 0.0)
    gains = {s: (10 * math.log10(at_zero / max(mse(s), 1e-20)) if s else 0.0) for s in CHECK_STRENGTHS}
    return max(CHECK_STRENGTHS, key=lambda s: (gains[s], s)), gains


def refine_pairs(windows: np.ndarray, scale: int, source_kind: str, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs [M, T, 3, c/scale, c/scale], centre-frame targets [M, 3, c, c], window index [M]) from the
    kept windows [N, T, 3, c, c]: each window shrunk once by BI (clean), or REFINE_DRAWS times by draws of
    the declared source kind (degradation.sample_kind: blur, downscaler, noise, a real codec)."""
    data = torch.from_numpy(windows)
    k = data.shape[1] // 2
    draws = 1 if source_kind == "clean" else REFINE_DRAWS
    inputs = torch.cat([degrade_again(data, scale, source_kind, rng) for _ in range(draws)])
    return inputs, data[:, k].repeat(draws, 1, 1, 1), torch.arange(len(data)).repeat(draws)


def refine_factors(base, factors: dict, windows: np.ndarray, steps: int, scale: int, rng: np.random.Generator,
                   source_kind: str = "clean", lr: float = REFINE_LR) -> dict:
    """Self-supervised test-time training of LoRA factors on pairs from the clip itself (refine_pairs:
    its windows degraded once more, by BI or by its declared source kind -> the centre frame).
    windows: [N, T, 3, c, c] LR crops. Starts from `factors`.

    Every fourth window is held out; the result is the step with the lowest held-out loss (checked every
    REFINE_CHECK steps), so refining never returns a LoRA that fits the clip's own pairs worse than where
    it started, and stops following the training pairs once they stop generalising."""
    device = next(base.parameters()).device
    inputs, targets, window = refine_pairs(windows, scale, source_kind, rng)
    inputs, targets = inputs.to(device), targets.to(device)
    held = window % 4 == 3 if len(windows) >= 4 else torch.zeros(len(window), dtype=torch.bool)
    train_in, train_out = inputs[~held], targets[~held]

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.from_numpy(rng.choice(len(train_in), min(REFINE_BATCH, len(train_in)), replace=False))
        x, y = train_in[pick], train_out[pick]
        return (x.flip(-1), y.flip(-1)) if rng.random() < 0.5 else (x, y)

    return fit_factors(base, factors, sample, steps, lr, (inputs[held], targets[held]) if held.any() else None, REFINE_CHECK)


def analyse_frames(frames, preset: str | None = None, refine: int = 0, device: str | None = None, size: tuple[int, int] | None = None,
                   measure_refused_refine: bool = False, source_kind: str | None = None) -> LoRA:
    """Pass one over an iterable of [3, H, W] float32 frames. size: (width, height) when known, checked
    before the first frame is read."""
    analyser = Analyser(preset, refine, device, measure_refused_refine=measure_refused_refine, source_kind=source_kind)
    if size is not None:
        analyser.check_size(*size)
    for frame in frames:
        analyser.update(frame)
    return analyser.lora()


def summary_of(frames, preset: str | None = None, device: str | None = None) -> ClipSummary:
    """The mergeable ClipSummary of some frames (a segment of a clip)."""
    analyser = Analyser(preset, 0, device)
    for frame in frames:
        analyser.update(frame)
    return analyser.summary
