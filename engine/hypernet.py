"""The hypernet: the medium-term memory. It reads a whole LR clip once (pass one) and writes a LoRA that
specialises the frozen base model to that clip, without any HR ground truth for it.

Three parts:
- ClipEncoder: tokens for each LR frame. Each token describes one patch of the frame on a fixed grid,
  together with the base model's own error on that patch one scale down (the patch downscaled by the
  preset's scale, upscaled again by the base model, minus the patch): what the base gets wrong on this
  very clip is the most direct evidence of what a LoRA should change.
- ClipSummary: a fixed-size, mergeable summary, accumulated frame by frame. Learned memory queries
  attend over every token of the clip with running-softmax accumulators (max, sum of weights, weighted
  sum of values), plus first and second moments of the tokens. Two segments summarised apart and merged
  equal the whole clip's summary, and memory stays O(1) in clip length.
- Evidence (optional, the real-source presets): fixed statistics of the frames that a codec, a scaler,
  blur or noise leave behind: a histogram of the local high-frequency level (its low end is the noise
  floor), gradients at each pixel phase modulo 16 (8x8 block edges and 16x16 macroblocks stand out
  against their neighbours), band energies (spectral fall-off: blur), and chroma against luma detail.
  They are sums, so they merge like the rest.
- LoRAGenerator: summary -> LoRA factors (A, B) of rank r for every adapted layer of the base model, by
  one head shared across layers and conditioned on a learned embedding per layer. Its B projection starts
  at zero, so an untrained hypernet gives a zero LoRA and the base model unchanged.
- CleanBlend (optional, the real-source presets): how far to move the base toward the same network
  trained on clean input, read from the summary; the move travels in the same LoRA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .bi import bi_downscale
from .lora import lora_layers


def patch_grid(h: int, w: int, patch: int, per_side: int) -> list[tuple[int, int]]:
    """Top-left corners of up to per_side x per_side patches spread evenly over an h x w frame."""
    ys = sorted({round(v) for v in torch.linspace(0, max(h - patch, 0), per_side).tolist()})
    xs = sorted({round(v) for v in torch.linspace(0, max(w - patch, 0), per_side).tolist()})
    return [(y, x) for y in ys for x in xs]


ERROR_GAIN = 8.0  # the base's errors are ~0.01-0.05; at the scale of the pixels the encoder would overlook them


class ClipEncoder(nn.Module):
    def __init__(self, dim: int = 64, patch: int = 32, per_side: int = 4, act: str = "relu"):
        super().__init__()
        self.patch, self.per_side = patch, per_side
        # SiLU for new hypernets: under the real-source mixture every ReLU of the second layer switched off
        # within 250 steps, leaving one constant token for every clip (training logs its token_spread)
        Act = {"relu": nn.ReLU, "silu": nn.SiLU}[act]
        self.net = nn.Sequential(
            nn.Conv2d(6, 32, 3, padding=1), Act(),
            nn.Conv2d(32, dim, 3, stride=2, padding=1), Act(),
            nn.Conv2d(dim, dim, 3, stride=2, padding=1), Act(),
        )
        self.out = nn.Linear(2 * dim, dim)

    def grid(self, h: int, w: int) -> tuple[int, list[tuple[int, int]]]:
        """The patch side and the top-left corners of the fixed grid on an h x w frame."""
        p = min(self.patch, h, w)
        p -= p % 4  # the base model's scale divides it (x2 and x4)
        return p, patch_grid(h, w, p, self.per_side)

    def patches(self, frames: torch.Tensor) -> torch.Tensor:
        """[T, 3, H, W] -> [T * P, 3, p, p] on the fixed grid (frames smaller than p are used whole)."""
        p, corners = self.grid(*frames.shape[-2:])
        return torch.cat([frames[:, :, y : y + p, x : x + p] for y, x in corners])

    def inputs(self, frames: torch.Tensor, base: nn.Module) -> torch.Tensor:
        """LR frames [T, 3, H, W] -> the encoder's input per patch [T * P, 6, p, p]: the patch and the base's
        error one scale down."""
        x = self.patches(frames)
        with torch.no_grad():  # the base model's own attempt one scale down; no gradient into the base
            small = bi_downscale(x, base.scale)
            guess = base(small.unsqueeze(1).expand(-1, base.window, -1, -1, -1)).clamp(0, 1)
        return torch.cat([x, ERROR_GAIN * (guess - x)], 1)

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        f = self.net(inputs)
        return self.out(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))

    def forward(self, frames: torch.Tensor, base: nn.Module) -> torch.Tensor:
        """LR frames [T, 3, H, W] of one clip -> tokens [T * P, dim]. `base` is the frozen base model."""
        return self.encode(self.inputs(frames, base))


EVIDENCE_BINS = 20  # histogram of log2(8x8-block high-pass RMS x 255), from -4 to 6
EVIDENCE_PHASES = 16


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = math.ceil(3 * sigma)
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(x, (r, r, r, r), mode="replicate")
    return F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))


EVIDENCE_TILE = 64  # LR pixels, the size of the meta-training frames: the same statistics in training and use


def evidence_tiles(frames: torch.Tensor) -> torch.Tensor:
    """[T, 3, H, W] -> up to 4 x 4 tiles per frame [N, 3, t, t], their corners on the 16-pixel grid (where
    codecs put their blocks), spread evenly: the cost per frame is the same at any resolution."""
    h, w = frames.shape[-2:]
    t = min(EVIDENCE_TILE, h, w)
    ys = sorted({int(v) // 16 * 16 for v in torch.linspace(0, h - t, 4)})
    xs = sorted({int(v) // 16 * 16 for v in torch.linspace(0, w - t, 4)})
    return torch.cat([frames[:, :, y : y + t, x : x + t] for y in ys for x in xs])


def evidence_sums(frames: torch.Tensor) -> torch.Tensor:
    """[T, 3, H, W] LR frames -> the degradation evidence as float64 sums (add them to merge clips)."""
    x = evidence_tiles(frames).float()
    total = lambda v: v.double().sum()  # noqa: E731 (float32 sums of a clip and of its parts differ in the last digits)
    y = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    y2 = F.avg_pool2d(y, 2)
    high, mid, low = y - _gaussian(y, 1.0), y2 - _gaussian(y2, 1.0), (y2 - F.avg_pool2d(y2, 2).repeat_interleave(2, 2).repeat_interleave(2, 3))
    n, _, h, w = y.shape
    hb, wb = h // 8 * 8, w // 8 * 8
    block_rms = high[..., :hb, :wb].pow(2).unflatten(2, (hb // 8, 8)).unflatten(4, (wb // 8, 8)).mean((3, 5)).sqrt()
    hist = torch.histc(torch.log2(block_rms * 255 + 1e-3).clamp(-4, 6 - 1e-6), EVIDENCE_BINS, -4, 6).double()
    phase_x = torch.arange(w - 1, device=x.device) % EVIDENCE_PHASES
    phase_y = torch.arange(h - 1, device=x.device) % EVIDENCE_PHASES
    z = torch.zeros(EVIDENCE_PHASES, dtype=torch.float64, device=x.device)
    across_x = z.index_add(0, phase_x, (y[..., 1:] - y[..., :-1]).abs().double().sum((0, 1, 2)))  # between columns p and p+1
    across_y = z.index_add(0, phase_y, (y[..., 1:, :] - y[..., :-1, :]).abs().double().sum((0, 1, 3)))
    count_x = z.index_add(0, phase_x, z.new_full((w - 1,), float(n * h)))
    count_y = z.index_add(0, phase_y, z.new_full((h - 1,), float(n * w)))
    bands = torch.stack([total(high.pow(2)), 4 * total(mid.pow(2)), 4 * total(low.pow(2))])  # per full-size pixel
    chroma = torch.stack([total((c - _gaussian(c, 1.0)).pow(2)) for c in (x[:, 2:3] - y, x[:, 0:1] - y)])
    return torch.cat([hist, across_x, count_x, across_y, count_y, bands, chroma, z.new_tensor([float(y.numel())])])


EVIDENCE_SUMS = EVIDENCE_BINS + 4 * EVIDENCE_PHASES + 6
EVIDENCE_FEATURES = EVIDENCE_BINS + 2 * 9 + 3 + 2


def read_evidence(sums: torch.Tensor) -> torch.Tensor:
    """Evidence sums -> features: the histogram as a distribution, block-edge contrasts, log band energies."""
    hist, across_x, count_x, across_y, count_y, bands, chroma, pixels = sums.split(
        [EVIDENCE_BINS, *[EVIDENCE_PHASES] * 4, 3, 2, 1])
    n = pixels.clamp(min=1)

    def edge_contrast(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        g = torch.log(total / count.clamp(min=1) + 1e-5)
        c = g - 0.5 * (g.roll(1) + g.roll(-1))  # each phase against its neighbours: content averages out
        return torch.cat([c.view(2, 8).mean(0), (c[15] - c[7]).view(1)])

    energy = bands / n
    return torch.cat([hist / hist.sum().clamp(min=1), edge_contrast(across_x, count_x), edge_contrast(across_y, count_y),
                      torch.log(energy + 1e-9), torch.log((chroma / n + 1e-9) / (energy[0] + 1e-9))]).float()


@dataclass
class ClipSummary:
    """Mergeable statistics of a clip's tokens (float64). Attention accumulators per memory query:
    running max m, sum of exp(score - m) and the exp-weighted sum of values."""

    count: torch.Tensor  # [] tokens seen
    moment1: torch.Tensor  # [D] sum of tokens
    moment2: torch.Tensor  # [D] sum of squared tokens
    att_max: torch.Tensor  # [Q]
    att_sum: torch.Tensor  # [Q]
    att_acc: torch.Tensor  # [Q, D]
    evidence: torch.Tensor  # [EVIDENCE_SUMS], or [0] for a hypernet that reads none
    frames: int = 0

    @staticmethod
    def empty(queries: int, dim: int, device=None, evidence: bool = False) -> ClipSummary:
        z = lambda *s: torch.zeros(s, dtype=torch.float64, device=device)
        return ClipSummary(z(), z(dim), z(dim), torch.full((queries,), -math.inf, dtype=torch.float64, device=device), z(queries),
                           z(queries, dim), z(EVIDENCE_SUMS if evidence else 0))

    def merge(self, other: ClipSummary) -> ClipSummary:
        m = torch.maximum(self.att_max, other.att_max)
        a = _rescale(self.att_max, m)
        b = _rescale(other.att_max, m)
        return ClipSummary(
            self.count + other.count, self.moment1 + other.moment1, self.moment2 + other.moment2, m,
            self.att_sum * a + other.att_sum * b, self.att_acc * a[:, None] + other.att_acc * b[:, None],
            self.evidence + other.evidence, self.frames + other.frames,
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"count": self.count, "moment1": self.moment1, "moment2": self.moment2, "att_max": self.att_max,
                "att_sum": self.att_sum, "att_acc": self.att_acc, "evidence": self.evidence}


def _rescale(old_max: torch.Tensor, new_max: torch.Tensor) -> torch.Tensor:
    """exp(old - new), with an empty accumulator (max = -inf) contributing 0."""
    return torch.where(torch.isinf(old_max), torch.zeros_like(old_max), torch.exp(old_max - new_max))


class Memory(nn.Module):
    """Learned memory queries over the clip's tokens: the part of the summary that attends."""

    def __init__(self, dim: int, queries: int = 8):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(queries, dim) / math.sqrt(dim))
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def summarise(self, tokens: torch.Tensor, frames: int) -> ClipSummary:
        """The summary of one batch of tokens [N, D] (e.g. one frame's)."""
        t = tokens.double()
        scores = (self.key(tokens) @ self.queries.T).double() / math.sqrt(tokens.shape[1])  # [N, Q]
        m = scores.amax(0)
        w = torch.exp(scores - m)  # [N, Q]
        v = self.value(tokens).double()
        return ClipSummary(torch.tensor(float(len(t)), dtype=torch.float64, device=t.device), t.sum(0), (t * t).sum(0), m,
                           w.sum(0), w.T @ v, t.new_zeros(0), frames)

    @staticmethod
    def read(s: ClipSummary) -> torch.Tensor:
        """The summary as one float32 vector: attention readouts, token mean and log spread, evidence."""
        n = s.count.clamp(min=1)
        mean = s.moment1 / n
        std = (s.moment2 / n - mean * mean).clamp(min=0).add(1e-6).sqrt()
        readout = s.att_acc / s.att_sum.clamp(min=1e-30)[:, None]
        evidence = read_evidence(s.evidence).to(readout) if s.evidence.numel() else readout.new_zeros(0)
        return torch.cat([readout.flatten(), mean, std.log(), evidence]).float()


class ClipStandardiser(nn.Module):
    """Standardises each summary feature by its mean and spread over training clips (running estimates,
    frozen at inference). Clips differ from each other by small shifts of features that are large in
    common; unstandardised, the generator learnt one constant LoRA for every clip (a fine-tune, not a
    memory: the first trained version, see the model card)."""

    def __init__(self, dim: int, momentum: float = 0.01):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))

    @torch.no_grad()
    def calibrate(self, vectors: torch.Tensor) -> None:
        self.mean.copy_(vectors.mean(0))
        self.var.copy_(vectors.var(0).clamp(min=1e-8))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.mean.lerp_(v.detach(), self.momentum)
                self.var.lerp_((v.detach() - self.mean) ** 2, self.momentum)
        return ((v - self.mean) / self.var.clamp(min=1e-8).sqrt()).clamp(-5, 5)


class LoRAGenerator(nn.Module):
    """Summary vector -> (A [r, fan_in], B [out, r]) per adapted layer, from one shared head."""

    def __init__(self, summary_dim: int, layers: list[tuple[str, int, int]], rank: int = 4, hidden: int = 128, embed: int = 32):
        super().__init__()
        self.layers = layers  # (name, fan_in, out_channels), in a fixed order
        self.rank = rank
        self.max_fan_in = max(f for _, f, _ in layers)
        self.max_out = max(o for _, _, o in layers)
        self.context = nn.Sequential(nn.Linear(summary_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.layer_embedding = nn.Parameter(torch.randn(len(layers), embed) * 0.5)
        # SiLU, not ReLU: with ReLU all but one context unit died and the LoRA stopped depending on the clip
        self.shared = nn.Sequential(nn.Linear(hidden + embed, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.head_A = nn.Linear(hidden, rank * self.max_fan_in)
        self.head_B = nn.Linear(hidden, self.max_out * rank)
        nn.init.zeros_(self.head_B.weight)  # zero B: the first LoRA is zero, the base model unchanged
        nn.init.zeros_(self.head_B.bias)

    def forward(self, summary: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        c = F.silu(self.context(summary))
        h = self.shared(torch.cat([c.expand(len(self.layers), -1), self.layer_embedding], 1))
        A = self.head_A(h).view(len(self.layers), self.rank, self.max_fan_in)
        B = self.head_B(h).view(len(self.layers), self.max_out, self.rank)
        out = {}
        for i, (name, fan_in, out_ch) in enumerate(self.layers):
            out[name] = (A[i, :, :fan_in] / math.sqrt(fan_in), B[i, :out_ch])
        return out


class CleanBlend(nn.Module):
    """A share alpha in [0, 1] of the way from the base (trained on the real-source mixture) to the same
    network trained on clean input: per clip, as deep network interpolation (Wang et al., 2019) does per
    user. A blind network hedges between sharpening and smoothing; a clip the summary finds clean can take
    the clean network's sharpness, a degraded one keeps the base. alpha is one linear head on the
    standardised summary, clamped; it starts at zero (the base unchanged).

    The move, W_clean - W_base for each adapted layer's weight, is carried exactly as LoRA factors: A = the
    move padded to a common rank, B = alpha * identity. So the LoRA file and every integration take it as
    they are, and pass two still costs the base alone. Biases do not move (a LoRA carries none)."""

    def __init__(self, summary_dim: int, layers: list[tuple[str, int, int]]):
        super().__init__()
        self.layers = layers
        self.rank = max(out for _, _, out in layers)
        self.head = nn.Linear(summary_dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        for i, (_, fan_in, out) in enumerate(layers):
            self.register_buffer(f"move{i}", torch.zeros(out, fan_in))

    def set_moves(self, moves: dict[str, torch.Tensor]) -> None:
        """moves: layer name -> W_clean - W_base, [out, fan_in]."""
        for i, (name, _, _) in enumerate(self.layers):
            getattr(self, f"move{i}").copy_(moves[name])

    def alpha(self, v: torch.Tensor) -> torch.Tensor:
        return self.head(v).clamp(0, 1).squeeze(-1)

    def factors(self, alpha: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for i, (name, _, o) in enumerate(self.layers):
            move = getattr(self, f"move{i}")
            out[name] = (F.pad(move, (0, 0, 0, self.rank - o)), alpha * torch.eye(o, self.rank, device=move.device))
        return out


class HyperNet(nn.Module):
    def __init__(self, layers: list[tuple[str, int, int]], dim: int = 64, queries: int = 8, rank: int = 4,
                 patch: int = 32, per_side: int = 4, hidden: int = 128, evidence: bool = False, blend: bool = False,
                 encoder_act: str = "relu"):
        super().__init__()
        self.encoder = ClipEncoder(dim, patch, per_side, encoder_act)
        self.memory = Memory(dim, queries)
        summary_dim = queries * dim + 2 * dim + (EVIDENCE_FEATURES if evidence else 0)
        self.standardise = ClipStandardiser(summary_dim)
        self.generator = LoRAGenerator(summary_dim, layers, rank, hidden)
        self.blend = CleanBlend(summary_dim, layers) if blend else None
        self.dim, self.n_queries, self.rank, self.evidence = dim, queries, rank, evidence

    @property
    def lora_rank(self) -> int:
        """The rank of the LoRA files it writes: the generator's, plus the clean blend's move."""
        return self.rank + (self.blend.rank if self.blend is not None else 0)

    @staticmethod
    def layers_of(base: nn.Module) -> list[tuple[str, int, int]]:
        return [(name, m.fan_in, m.out_channels) for name, m in sorted(lora_layers(base).items())]

    def empty_summary(self, device=None) -> ClipSummary:
        return ClipSummary.empty(self.n_queries, self.dim, device, self.evidence)

    def summarise(self, frames: torch.Tensor, base: nn.Module) -> ClipSummary:
        """LR frames [T, 3, H, W] (any number of them) -> their ClipSummary."""
        summary = self.memory.summarise(self.encoder(frames, base), len(frames))
        if self.evidence:
            summary.evidence = evidence_sums(frames)
        return summary

    def features(self, summary: ClipSummary) -> torch.Tensor:
        return self.standardise(Memory.read(summary))

    def factors(self, summary: ClipSummary, alpha: torch.Tensor | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The clip's LoRA factors. alpha: the clean blend's share, if not the one the summary gives."""
        v = self.features(summary)
        learnt = self.generator(v)
        if self.blend is None:
            return learnt
        moves = self.blend.factors(self.blend.alpha(v) if alpha is None else alpha)
        return {k: (torch.cat([a, moves[k][0]]), torch.cat([b, moves[k][1]], 1)) for k, (a, b) in learnt.items()}

    def clean_share(self, summary: ClipSummary) -> float | None:
        """How far toward the clean network this clip's LoRA moves the base (None: no clean blend)."""
        return None if self.blend is None else float(self.blend.alpha(self.features(summary)))


def build_hypernet(base: nn.Module, arch: dict | None = None) -> HyperNet:
    return HyperNet(HyperNet.layers_of(base), **(arch or {}))
