"""`hypersr bench bank`: would a bank of per-family LoRAs, chosen in pass one by analysis by synthesis,
help a real-source preset (issue #25, part 2b)?

For each family of the training mixture (aliased: point-sampled; compressed: a codec; blur + noise: no
codec) a LoRA is fitted through the frozen base on training clips degraded by that family alone (the
"twin"). Then, for every chain x validation clip of `bench real`:
- gain: what each twin adds over the base, scored against HR (what a perfect chooser could take);
- synth: analysis by synthesis, without HR: the clip's own LR frames degraded once more by a draw from
  each family, restored by the base and by each twin, scored against the LR frames. The chooser takes the
  twin with the largest gain on its own family's copies (above a threshold), else the base.
With --refine (part 2c): pass one's self-supervised refine on the clip's own frames, its pairs degraded by
BI (today's refine), by draws from the base's own training mixture (no identification), by draws from
the chain's family, or by the chain itself (an oracle identifier): what refine could gain with and
without knowing the clip's degradation.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..engine import degradation as deg
from ..engine.fitting import fit_factors
from ..engine.lora import lora_applied, lora_layers
from .metrics import clip_psnr
from .train import upscale_clip

FAMILIES = ("aliased", "compressed", "blur-noise")  # the mixture's degraded clips in three (the codecs together)


def family_of(d: deg.Degradation) -> str:
    kind = deg.kind_of(d)
    return "compressed" if kind in deg.CODECS else kind


def sample_family(family: str, rng: np.random.Generator) -> deg.Degradation:
    return deg.BI if family == "clean" else deg.sample_where(lambda d: family_of(d) == family, rng)
SYNTH_DRAWS = 3  # draws from each family per clip


def fit_family_lora(base, pack, family: str, steps: int, rank: int = 8, lr: float = 3e-4, clips: int = 384, seed: int = 0) -> dict:
    """LoRA factors of `rank` fitted from zero on `clips` training clips (4 frames of 128 HR pixels) of one
    family; the checked step with the lowest loss on every eighth frame, held out. (lr 2e-3, which fits the
    small networks, never improved SPAN's held-out loss: its inputs are scaled by 255.)"""
    from .data import ClipSampler

    rng = np.random.default_rng(seed)
    sampler = ClipSampler(pack.scenes, pack.clips, 4, 64 * base.scale, multi_shot_fraction=0.0)
    hr = torch.stack([sampler.sample(rng)[0] for _ in range(clips)])
    lr_clips = torch.stack([deg.apply(h, base.scale, sample_family(family, rng), rng) for h in hr])
    hr, lr_frames = hr.flatten(0, 1), lr_clips.flatten(0, 1)
    held = torch.arange(len(hr)) % 8 == 7
    train_lr, train_hr = lr_frames[~held], hr[~held]
    g = torch.Generator().manual_seed(seed)
    start = {n: (torch.randn(rank, layer.fan_in, generator=g) / layer.fan_in ** 0.5, torch.zeros(layer.out_channels, rank))
             for n, layer in lora_layers(base).items()}

    def windows(x: torch.Tensor) -> torch.Tensor:  # the frame repeated across the network's window
        return x[:, None].expand(-1, base.window, -1, -1, -1)

    def pairs():
        pick = torch.from_numpy(rng.choice(len(train_lr), min(16, len(train_lr)), replace=False))
        x, y = train_lr[pick], train_hr[pick]
        return (windows(x.flip(-1)), y.flip(-1)) if rng.random() < 0.5 else (windows(x), y)

    held_out = (windows(lr_frames[held][:64]), hr[held][:64])
    return fit_factors(base, start, pairs, steps, lr, held_out, check_every=max(1, min(50, steps)))


@torch.no_grad()
def upscale(base, frames: torch.Tensor, factors: dict | None = None) -> torch.Tensor:
    with lora_applied(base, factors) if factors else contextlib.nullcontext():
        return upscale_clip(base, frames, batch=4)


def probe(base, twins: dict[str, dict], clips: dict[str, torch.Tensor], chains: list[str], progress=print) -> list[dict]:
    """One row per chain x clip: the base's Y-PSNR, each twin's gain over it (HR), and the synthetic gains
    synth[family][twin] (LR only) with the base's own score on each family's copies."""
    rows = []
    for chain in chains:
        for name, hr in clips.items():
            lr = deg.apply(hr, base.scale, deg.CHAINS[chain], np.random.default_rng(0))
            b = clip_psnr(upscale(base, lr), hr)
            gain = {f: clip_psnr(upscale(base, lr, twins[f]), hr) - b for f in twins}
            synth = {}
            for family in (*twins, "clean"):
                scores: dict[str, list[float]] = {m: [] for m in (*twins, "base")}
                for k in range(SYNTH_DRAWS):
                    rng = np.random.default_rng(100 + k)
                    again = deg.apply(lr, base.scale, sample_family(family, rng), rng)
                    scores["base"].append(clip_psnr(upscale(base, again), lr))
                    for m in twins:
                        scores[m].append(clip_psnr(upscale(base, again, twins[m]), lr) - scores["base"][-1])
                synth[family] = {m: float(np.mean(v)) for m, v in scores.items()}
            rows.append({"chain": chain, "clip": name, "base": b, "gain": gain, "synth": synth})
            progress(f"{chain} {name}: base {b:.2f}, gains " + ", ".join(f"{f} {g:+.2f}" for f, g in gain.items()))
    return rows


def choose(row: dict, threshold: float = 0.0) -> str | None:
    """Analysis by synthesis: the twin that gains most on copies degraded by its own family, if above threshold."""
    twins = list(row["gain"])
    best = max(twins, key=lambda m: row["synth"][m][m])
    return best if row["synth"][best][best] > threshold else None


def summary(rows: list[dict]) -> dict[str, float]:
    """Mean gain over the base (dB) on the degraded chains, and on clean BI, of each way to pick a twin."""
    def mean(pick, clean: bool) -> float:
        sel = [r for r in rows if (r["chain"] == "bi") == clean]
        return float(np.mean([r["gain"][c] if (c := pick(r)) else 0.0 for r in sel])) if sel else float("nan")

    twins = list(rows[0]["gain"])
    ways = {"best twin or base (knowing HR)": lambda r: max([None, *twins], key=lambda m: r["gain"][m] if m else 0.0),
            "the chain's family (knowing the chain)": lambda r: f if (f := family_of(deg.CHAINS[r["chain"]])) in twins else None,
            **{f"always {f}": (lambda r, f=f: f) for f in twins},
            "analysis by synthesis": choose}
    return {way: {"degraded": mean(pick, False), "bi": mean(pick, True)} for way, pick in ways.items()}


def table(rows: list[dict]) -> str:
    twins = list(rows[0]["gain"])
    lines = ["| chain | clip | base | " + " | ".join(f"{f}: gain / own-family synth" for f in twins) + " | chooser |",
             "|---|---|---|" + "---|" * len(twins) + "---|"]
    for r in rows:
        cells = " | ".join(f"{r['gain'][f]:+.2f} / {r['synth'][f][f]:+.2f}" for f in twins)
        lines.append(f"| {r['chain']} | {r['clip']} | {r['base']:.2f} | {cells} | {choose(r) or 'base'} |")
    lines += ["", "| way to pick | degraded chains | clean BI |", "|---|---|---|"]
    lines += [f"| {way} | {g['degraded']:+.2f} | {g['bi']:+.2f} |" for way, g in summary(rows).items()]
    return "\n".join(lines)


REFINE_WAYS = ("bi", "mixture", "family", "chain")  # what degrades the clip's own frames into refine's inputs
REFINE_DRAWS = 3


def refine_pairs(lr: torch.Tensor, d_of, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets): the clip's LR frames degraded once more, REFINE_DRAWS times, by d_of(rng)."""
    inputs = []
    for k in range(REFINE_DRAWS):
        rng = np.random.default_rng(200 + k)
        inputs.append(deg.apply(lr, scale, d_of(rng), rng))
    return torch.cat(inputs), lr.repeat(REFINE_DRAWS, 1, 1, 1)


def refine_on_clip(base, lr: torch.Tensor, d_of, steps: int, lr_rate: float = 3e-4, rank: int = 8, seed: int = 0) -> tuple[dict, float]:
    """LoRA factors fitted from zero on the clip's own pairs (refine_pairs), every fourth frame held out
    and the checked step with the lowest held-out loss kept (as pass one's refine does); with the held-out
    gain in dB that pass one would see (restoring its own frames), the only score it has without HR."""
    x, y = refine_pairs(lr, d_of, base.scale)
    held = torch.arange(len(x)) % 4 == 3
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    start = {n: (torch.randn(rank, layer.fan_in, generator=g) / layer.fan_in ** 0.5, torch.zeros(layer.out_channels, rank))
             for n, layer in lora_layers(base).items()}
    tx, ty = x[~held], y[~held]

    def windows(f: torch.Tensor) -> torch.Tensor:
        return f[:, None].expand(-1, base.window, -1, -1, -1)

    def pairs():
        pick = torch.from_numpy(rng.choice(len(tx), min(4, len(tx)), replace=False))
        a, b = tx[pick], ty[pick]
        return (windows(a.flip(-1)), b.flip(-1)) if rng.random() < 0.5 else (windows(a), b)

    factors = fit_factors(base, start, pairs, steps, lr_rate, (windows(x[held]), y[held]), check_every=5)
    seen = clip_psnr(upscale(base, x[held], factors), y[held]) - clip_psnr(upscale(base, x[held]), y[held])
    return factors, seen


def probe_refine(base, clips: dict[str, torch.Tensor], chains: list[str], steps: int, progress=print) -> list[dict]:
    """One row per chain x clip: the base's Y-PSNR and, for each of REFINE_WAYS, refine's gain over it
    against HR and the gain pass one sees on its own held-out frames."""
    rows = []
    for chain in chains:
        d, family = deg.CHAINS[chain], family_of(deg.CHAINS[chain])
        ways = {"bi": lambda rng: deg.BI, "mixture": deg.sample,
                "family": lambda rng, family=family: sample_family(family, rng), "chain": lambda rng, d=d: d}
        for name, hr in clips.items():
            lr = deg.apply(hr, base.scale, d, np.random.default_rng(0))
            b = clip_psnr(upscale(base, lr), hr)
            gain, seen = {}, {}
            for way in REFINE_WAYS:
                factors, seen[way] = refine_on_clip(base, lr, ways[way], steps)
                gain[way] = clip_psnr(upscale(base, lr, factors), hr) - b
            rows.append({"chain": chain, "clip": name, "base": b, "gain": gain, "seen": seen})
            progress(f"{chain} {name}: base {b:.2f}, refine gains " + ", ".join(f"{w} {gain[w]:+.2f} (seen {seen[w]:+.2f})" for w in REFINE_WAYS))
    return rows


def refine_table(rows: list[dict]) -> str:
    names = {"bi": "BI (today)", "mixture": "the base's training mixture", "family": "the chain's family", "chain": "the chain itself"}
    lines = ["| chain | clip | base | " + " | ".join(f"{names[w]}: gain / seen" for w in REFINE_WAYS) + " |",
             "|---|---|---|" + "---|" * len(REFINE_WAYS)]
    for r in rows:
        cells = " | ".join(f"{r['gain'][w]:+.2f} / {r['seen'][w]:+.2f}" for w in REFINE_WAYS)
        lines.append(f"| {r['chain']} | {r['clip']} | {r['base']:.2f} | {cells} |")
    lines += ["", "| refine's pairs degraded by | degraded chains | clean BI | worst pair |", "|---|---|---|---|"]
    for w in REFINE_WAYS:
        deg_rows = [r["gain"][w] for r in rows if r["chain"] != "bi"]
        bi_rows = [r["gain"][w] for r in rows if r["chain"] == "bi"]
        mean = (lambda v: f"{np.mean(v):+.2f}" if v else "n/a")
        lines.append(f"| {names[w]} | {mean(deg_rows)} | {mean(bi_rows)} | {min(r['gain'][w] for r in rows):+.2f} |")
    return "\n".join(lines)
