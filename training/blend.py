"""Fitting a real-source preset's clean blend (engine/hypernet.py: CleanBlend): how far each clip's LoRA
moves the base toward the same network trained on clean input.

The move is fixed (W_clean - W_base per adapted layer); only alpha's linear head is fitted, on top of the
preset's trained hypernet. Each of `clips` sampled training clips gets its own sampled real-source
degradation (the base's mixture, a fifth clean); the hypernet reads the LR clip, and base + its LoRA +
alpha * move upscales the clip for every alpha on GRID. The head is fitted to the mean gain in Y-PSNR over alpha 0, read
between grid points by linear interpolation, where a loss counts HARM_WEIGHT times more than a gain of the
same size (a memory must not make clips worse: the blend toward the clean network is what made noisy,
compressed clips worse, measured in the README), with an L2 penalty chosen on a held-out fifth of the
clips; another fifth is kept for the report (PSNR at alpha 0, at the predicted alpha, at each clip's best
grid alpha; the share of clips the blend makes worse by more than 0.1 dB, with and without the harm
weight)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..engine.degradation import quantise
from ..engine.errors import HypersrError
from ..engine.lora import lora_applied, lora_layers
from . import data
from .degradation import TrainingDegradation
from .metrics import clip_psnr
from .train import check_fits, upscale_clip

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1)
HARM_WEIGHT = 4.0
HARM_DB = 0.1  # what the report counts as a clip made worse
HARM_SWEEP = (0.0, 1.0, 2.0, 4.0)  # the harm weights the report cross-validates
FIT_STEPS = 1500


def moves(base: torch.nn.Module, clean: torch.nn.Module) -> dict[str, torch.Tensor]:
    """W_clean - W_base for every adapted layer, as [out, fan_in]."""
    b, c = lora_layers(base), lora_layers(clean)
    return {name: (c[name].weight - layer.weight).detach().reshape(layer.out_channels, -1) for name, layer in b.items()}


def psnr_at(alpha: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Each clip's Y-PSNR at its alpha [N], read off its row of `table` [N, len(GRID)] between grid points."""
    pos = alpha.clamp(0, 1) * (len(GRID) - 1)
    lo = pos.detach().floor().clamp(max=len(GRID) - 2).long()
    frac = pos - lo
    rows = torch.arange(len(table))
    return table[rows, lo] * (1 - frac) + table[rows, lo + 1] * frac


def objective(alpha: torch.Tensor, table: torch.Tensor, harm_weight: float) -> torch.Tensor:
    """Mean gain over alpha 0 (dB), a loss counting 1 + harm_weight times."""
    gain = psnr_at(alpha, table) - table[:, 0]
    return (gain - harm_weight * (-gain).clamp(min=0)).mean()


def fit_head(x: torch.Tensor, table: torch.Tensor, penalty: float, steps: int = FIT_STEPS,
             harm_weight: float = HARM_WEIGHT) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of alpha = clamp(x @ w + b, 0, 1) that maximise `objective`, L2-penalised. Starts at
    alpha 0.5 for every clip, inside the clamp, where every clip still gives a gradient."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.full((), 0.5, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        loss = -objective(x @ w + b, table, harm_weight) + penalty * w.square().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return w.detach(), b.detach()


def measure_clips(base, hypernet, packed, scale: int, clips: int, frames: int, size: int, seed: int, device: str):
    """(summary features [N, D], Y-PSNR table [N, len(GRID)], the degradations) of `clips` sampled clips."""
    sampler = data.ClipSampler(packed.scenes, packed.clips, frames, size, multi_shot_fraction=0.0)
    degrade = TrainingDegradation("real")
    rng = np.random.default_rng(seed)
    features, rows, degradations = [], [], []
    for _ in tqdm(range(clips), desc="blend: clips at every alpha"):
        hr, _ = sampler.sample(rng)
        lr, d = degrade.clip(hr, scale, rng)
        lr = lr.to(device)
        with torch.inference_mode():
            summary = hypernet.summarise(lr, base)
            features.append(hypernet.features(summary).cpu())
            row = []
            for a in GRID:
                with lora_applied(base, hypernet.factors(summary, torch.tensor(a, device=device))):
                    out = quantise(upscale_clip(base, lr).cpu())
                row.append(clip_psnr(out, hr))
        rows.append(row)
        degradations.append(d)
    return torch.stack(features).float(), torch.tensor(rows, dtype=torch.float32), degradations


def fit_blend(preset, clean_preset, pack_path, clips: int = 600, frames: int = 4, size: int = 128, seed: int = 0, device: str = "cpu",
              measured: tuple | None = None):
    """The preset's hypernet with a fitted clean blend toward `clean_preset`, a report of the fit, and the
    measurements it was fitted on (features, Y-PSNR table, clean flags). measured: reuse those of an
    earlier run (made with the same clips, frames, size and seed) instead of measuring again."""
    from ..engine import preset_registry
    from ..engine.hypernet import build_hypernet

    if not preset.card.is_real_source:
        raise HypersrError(f"preset {preset.name} is trained on clean input already; the clean blend is for real-source presets such as real-x2")
    if clean_preset.name == preset.name or clean_preset.card.is_real_source:
        raise HypersrError(f"--clean {clean_preset.name} is not trained on clean input; give {preset.name}'s clean twin, e.g. quality-x2")
    base, clean = preset_registry.load_model(preset, device=device), preset_registry.load_model(clean_preset, device=device)
    shapes = [{n: layer.weight.shape for n, layer in lora_layers(m).items()} for m in (base, clean)]
    if shapes[0] != shapes[1]:  # a window whose fusion comes before conv_1 (fusion="average") has the single frame's convolutions
        raise HypersrError(f"--clean {clean_preset.name}: its convolutions are not {preset.name}'s; the clean blend needs the same network")
    packed = data.load_pack(pack_path)
    check_fits(packed, "--size", size, frames)
    trained, _ = preset_registry.load_hypernet(preset, base, device=device)
    arch = {**preset.card.hypernet.architecture, "blend": True}
    hypernet = build_hypernet(base, arch).to(device)
    own = hypernet.state_dict()
    own.update({k: v for k, v in trained.state_dict().items() if not k.startswith("blend.")})
    hypernet.load_state_dict(own)
    hypernet.blend.set_moves(moves(base, clean))
    hypernet.eval()

    if measured is None:
        x, table, degradations = measure_clips(base, hypernet, packed, preset.scale, clips, frames, size, seed, device)
        clean = torch.tensor([d.is_bi for d in degradations])
    else:
        x, table, clean = measured
    w, b, report = fit_and_report(x, table, clean)
    with torch.no_grad():
        hypernet.blend.head.weight.copy_(w[None])
        hypernet.blend.head.bias.copy_(b[None])
    return hypernet, arch, {"clips": len(x), "frames": frames, "size": size, "grid": list(GRID), **report}, (x, table, clean)


def cross_validate(x: torch.Tensor, table: torch.Tensor, clean: torch.Tensor, harm_weights=HARM_SWEEP, folds: int = 5) -> dict:
    """Every clip held out once: per harm weight, the gain over alpha 0 of heads fitted on three folds
    (penalty chosen on a fourth) and applied to the fifth. A steadier picture than one held-out fifth."""
    fold = torch.arange(len(x)) % folds
    out = {}
    for harm in harm_weights:
        gain, alpha = torch.zeros(len(x)), torch.zeros(len(x))
        for f in range(folds):
            test, select = fold == f, fold == (f + 1) % folds
            fit = ~(test | select)

            def score(penalty: float, fit=fit, select=select, harm=harm) -> float:
                w, b = fit_head(x[fit], table[fit], penalty, harm_weight=harm)
                return float(objective(x[select] @ w + b, table[select], harm))

            w, b = fit_head(x[~test], table[~test], max(PENALTIES, key=score), harm_weight=harm)
            alpha[test] = (x[test] @ w + b).clamp(0, 1)
            gain[test] = psnr_at(alpha[test], table[test]) - table[test][:, 0]
        out[f"harm weight {harm:g}"] = {
            "gain (dB)": round(float(gain.mean()), 3),
            "gain, clean clips": round(float(gain[clean].mean()), 3) if clean.any() else None,
            "gain, degraded clips": round(float(gain[~clean].mean()), 3),
            f"clips worse by > {HARM_DB} dB": int((gain < -HARM_DB).sum()),
            "clips worse by > 0.5 dB": int((gain < -0.5).sum()),
            "worst clip (dB)": round(float(gain.min()), 3),
            "alpha, clean clips (mean)": round(float(alpha[clean].mean()), 3) if clean.any() else None,
            "alpha, degraded clips (mean)": round(float(alpha[~clean].mean()), 3),
        }
    oracle = table.max(1).values - table[:, 0]
    out["best grid alpha per clip (oracle)"] = {"gain (dB)": round(float(oracle.mean()), 3),
                                                "gain, clean clips": round(float(oracle[clean].mean()), 3) if clean.any() else None,
                                                "gain, degraded clips": round(float(oracle[~clean].mean()), 3)}
    return out


def fit_and_report(x: torch.Tensor, table: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The head (weights, bias) fitted with HARM_WEIGHT, and the held-out report, which also shows the head
    fitted without it (harm weight 0): what the safety costs in gain and what it saves in harm."""
    n = len(x)
    fit, select, test = slice(0, 3 * n // 5), slice(3 * n // 5, 4 * n // 5), slice(4 * n // 5, n)
    heads, penalties = {}, {}
    for harm in (0.0, HARM_WEIGHT):
        scores = {}
        for penalty in PENALTIES:
            w, b = fit_head(x[fit], table[fit], penalty, harm_weight=harm)
            scores[penalty] = float(objective(x[select] @ w + b, table[select], harm))
        penalties[harm] = max(scores, key=scores.get)
        heads[harm] = fit_head(x[: 4 * n // 5], table[: 4 * n // 5], penalties[harm], harm_weight=harm)
    held = table[test]

    def outcome(harm: float) -> dict:
        w, b = heads[harm]
        alpha = (x[test] @ w + b).clamp(0, 1)
        gain = psnr_at(alpha, held) - held[:, 0]
        return {"y_psnr": round(float(psnr_at(alpha, held).mean()), 3),
                f"clips worse than alpha 0 by > {HARM_DB} dB": int((gain < -HARM_DB).sum()),
                "worst clip (dB)": round(float(gain.min()), 3),
                "alpha, clean clips (mean)": round(float(alpha[clean[test]].mean()), 3) if clean[test].any() else None,
                "alpha, degraded clips (mean)": round(float(alpha[~clean[test]].mean()), 3)}

    report = {
        "harm_weight": HARM_WEIGHT, "penalty": penalties[HARM_WEIGHT], "held_out_clips": len(held),
        "held_out_y_psnr": {
            "alpha 0 (base + hypernet)": round(float(held[:, 0].mean()), 3),
            "alpha 1 (clean network's weights + hypernet)": round(float(held[:, -1].mean()), 3),
            "best grid alpha (oracle)": round(float(held.max(1).values.mean()), 3),
        },
        "predicted alpha": outcome(HARM_WEIGHT),
        "predicted alpha, fitted without the harm weight": outcome(0.0),
        "cross-validated": cross_validate(x, table, clean),
    }
    return *heads[HARM_WEIGHT], report
