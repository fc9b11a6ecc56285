"""`hypersr bench real`: quality on real-source degradations, side by side.

The validation clips (never trained on) x the named chains of training/degradation.py (CHAINS: clean BI,
H.264 at two CRFs, MPEG-2, MJPEG, blur + noise, grain + H.264, point + H.264, anisotropic blur + MPEG-2),
each chain applied with a fixed seed. Per chain and mean, Y-PSNR and SSIM of:

- lanczos and nnedi3 (training/peers.py);
- every preset asked for, alone (its base network); for presets trained for real sources with a
  hypernet also "+ memory" (the LoRA its hypernet predicts from the LR clip), "+ refine N" (then N steps
  of test-time training) and "ceiling" (a LoRA of the hypernet's rank fitted to that clip with its HR
  frames: what a perfect memory could reach); with --chain-lora also "chain LoRA" (a LoRA fitted on
  training clips degraded by the same chain: a memory that knows the degradation exactly and nothing of
  the clip's content).
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine import degradation as deg
from ..engine.backends import CPU, resolve_device
from ..engine.fitting import fit_factors
from ..engine.lora import LoRA
from ..engine.window import window_indices
from .metrics import clip_scores
from .peers import peer_outputs

CEILING_STEPS = 150
CEILING_LR = 2e-3
CEILING_CROP = 48  # LR pixels
CHAIN_STEPS = 300


def fit_lora_with_hr(base, hypernet, lr: torch.Tensor, hr: torch.Tensor, scale: int, steps: int = CEILING_STEPS, seed: int = 0) -> dict:
    """The ceiling: LoRA factors of the hypernet's rank fitted to this clip's (LR window -> HR frame) pairs,
    starting from the hypernet's prediction."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        start = hypernet.factors(hypernet.summarise(lr, base))
    t = lr.shape[0]
    c = min(CEILING_CROP, lr.shape[-2], lr.shape[-1])

    def pairs():
        centres = rng.integers(0, t, 4)
        ys, xs = rng.integers(0, lr.shape[-2] - c + 1, 4), rng.integers(0, lr.shape[-1] - c + 1, 4)
        idx = window_indices(centres, t, base.window)
        windows = torch.stack([lr[i, :, y : y + c, x : x + c] for i, y, x in zip(torch.from_numpy(idx), ys, xs)])
        target = torch.stack([hr[n, :, y * scale : (y + c) * scale, x * scale : (x + c) * scale] for n, y, x in zip(centres, ys, xs)])
        return windows, target

    return fit_factors(base, start, pairs, steps, CEILING_LR)


def fit_chain_lora(base, hypernet, pack, chain: str, scale: int, clips: int = 48, steps: int = CHAIN_STEPS, seed: int = 0) -> dict:
    """A memory that knows the degradation exactly and nothing of the clip: LoRA factors of the hypernet's
    rank fitted on `clips` sampled training clips (never the validation clips), every one degraded by
    this chain, starting from the hypernet's prediction for the first of them."""
    from .data import ClipSampler

    rng = np.random.default_rng(seed)
    sampler = ClipSampler(pack.scenes, pack.clips, base.window, 64 * scale, multi_shot_fraction=0.0)
    hr = torch.stack([sampler.sample(rng)[0] for _ in range(clips)])
    lr = torch.stack([deg.apply(h, scale, deg.CHAINS[chain], rng) for h in hr])
    with torch.no_grad():
        start = hypernet.factors(hypernet.summarise(lr[0], base))

    def pairs():
        pick = torch.from_numpy(rng.choice(clips, 8, replace=False))
        return lr[pick], hr[pick, base.window // 2]

    return fit_factors(base, start, pairs, steps, CEILING_LR)


def score(sr: np.ndarray | torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    return clip_scores(deg.quantise(torch.as_tensor(sr)), hr)


def as_lora(preset, factors: dict) -> LoRA:
    """Fitted factors as the LoRA the runtime takes."""
    rank = next(iter(factors.values()))[0].shape[0]
    return LoRA(preset.name, preset.sha256, preset.scale, rank, {k: (a.detach().cpu(), b.detach().cpu()) for k, (a, b) in factors.items()})


def bench_real(presets: list, clips: dict[str, torch.Tensor], chains: list[str], refine: int = 10, ceiling: bool = True,
               device: str = "cpu", progress=print, pack=None) -> tuple[dict, dict]:
    """results[chain][clip][method] = {y_psnr, ssim}, and one clip's outputs for the comparison picture.
    With the training pack, also "chain LoRA" for real presets (fit_chain_lora, one per chain)."""
    from ..engine import preset_registry
    from ..engine.analyse import analyse_frames
    from ..engine.runtime import Upscaler

    results: dict = {}
    picture: dict = {}
    chain_loras: dict = {}
    backend = CPU() if resolve_device(device).type == "cpu" else None  # pass two as users run it; on a GPU, the cuda backend
    for chain in chains:
        results[chain] = {}
        for name, hr in clips.items():
            lr = deg.apply(hr, 2, deg.CHAINS[chain], np.random.default_rng(0))
            outs = peer_outputs(lr.numpy(), 2)
            for preset in map(preset_registry.get, presets):
                p = preset.name
                lr_frames = lr.numpy()

                def runtime(lora=None, preset=preset, lr_frames=lr_frames):
                    return Upscaler(preset, lora, backend=backend).clip(lr_frames)

                outs[p] = runtime()
                if preset.card.is_real_source and preset.card.has_hypernet:
                    base = preset_registry.load_model(preset, device=device)
                    for label, steps in (("+ memory", 0), (f"+ refine {refine}", refine)):
                        if label != "+ memory" and not refine:
                            continue
                        kind = deg.kind_of(deg.CHAINS[chain]) if steps else None  # refine as a user who knows the source's kind runs it
                        outs[f"{p} {label}"] = runtime(analyse_frames(list(lr_frames), preset, steps, device, measure_refused_refine=True,
                                                                      source_kind=kind))
                    if pack is not None:
                        key = (p, chain)
                        if key not in chain_loras:
                            hypernet, _ = preset_registry.load_hypernet(preset, base, device=device)
                            chain_loras[key] = as_lora(preset, fit_chain_lora(base, hypernet, pack, chain, preset.scale))
                        outs[f"{p} chain LoRA"] = runtime(chain_loras[key])
                    if ceiling:
                        hypernet, _ = preset_registry.load_hypernet(preset, base, device=device)
                        outs[f"{p} ceiling"] = runtime(as_lora(preset, fit_lora_with_hr(base, hypernet, lr.to(device), hr.to(device), preset.scale)))
            results[chain][name] = {m: (score(o, hr) if not isinstance(o, str) else o) for m, o in outs.items()}
            if not picture and chain != "bi":
                picture = {"chain": chain, "clip": name, "columns": {m: np.asarray(deg.quantise(torch.as_tensor(o)))
                                                                     for m, o in outs.items() if not isinstance(o, str)} | {"original": hr.numpy()}}
            progress(f"{chain} {name}: " + ", ".join(f"{m} {r['y_psnr']:.2f}" for m, r in results[chain][name].items() if isinstance(r, dict)))
    return results, picture


def summarise(results: dict) -> dict:
    """Per chain: the mean over clips; then 'mean (degraded)' over every chain but bi, and 'mean' over all."""
    table: dict = {}
    for chain, per_clip in results.items():
        methods = next(iter(per_clip.values())).keys()
        table[chain] = {}
        for m in methods:
            vals = [r[m] for r in per_clip.values()]
            table[chain][m] = vals[0] if isinstance(vals[0], str) else {k: float(np.mean([v[k] for v in vals])) for k in ("y_psnr", "ssim")}
    methods = next(iter(table.values())).keys()
    for label, rows in (("mean (degraded)", [c for c in table if c != "bi"]), ("mean", list(table))):
        if rows:
            table[label] = {m: (table[rows[0]][m] if isinstance(table[rows[0]][m], str) else
                                {k: float(np.mean([table[c][m][k] for c in rows])) for k in ("y_psnr", "ssim")}) for m in methods}
    return table


def format_table(table: dict, key: str = "y_psnr") -> str:
    methods = list(next(iter(table.values())).keys())
    width = max(22, *(len(c) + 2 for c in table))
    lines = ["| chain | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for chain, row in table.items():
        cells = [row[m] if isinstance(row[m], str) else f"{row[m][key]:.{2 if key == 'y_psnr' else 4}f}" for m in methods]
        lines.append(f"| {chain:<{width}} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def degradation_probe(preset: str, pack, n_train: int = 2000, n_test: int = 500, frames: int = 6, size: int = 128, seed: int = 0) -> dict:
    """How well a clip's summary identifies its degradation: a ridge regression from the hypernet's
    summary vector to the degradation's parameters, fitted on sampled training clips (each with its own
    sampled degradation) and scored on other sampled clips. Reports, for the luma noise sigma (x255), the
    blur sigma (0: none) and the H.264 CRF (H.264 clips only), the probe's mean absolute error next to that
    of always guessing the mean, the accuracy of telling the codec (none, H.264, MPEG-2, MJPEG), and how well
    it tells a point-sampled (aliased) source from the other five downscalers (ROC AUC; 0.5 is chance).
    2,000 training clips: the summary has ~650 features, and a probe fitted on a few hundred clips
    understates what it knows."""
    from ..engine import preset_registry
    from ..engine.hypernet import Memory
    from .data import ClipSampler

    p = preset_registry.get(preset)
    base = preset_registry.load_model(p)
    hypernet, _ = preset_registry.load_hypernet(p, base)
    sampler = ClipSampler(pack.scenes, pack.clips, frames, size, multi_shot_fraction=0.0)
    rng = np.random.default_rng(seed)
    codecs = [None, "h264", "mpeg2", "mjpeg"]
    vectors, targets = [], []
    with torch.inference_mode():
        for _ in range(n_train + n_test):
            hr, _ = sampler.sample(rng)
            d = deg.sample(rng)
            lr = deg.apply(hr, p.scale, d, rng)
            vectors.append(Memory.read(hypernet.summarise(lr, base)).double())
            blur = 0.0 if d.blur is None else (d.blur[0] + d.blur[1]) / 2
            targets.append([d.noise * 255, blur, d.quality if d.codec == "h264" else np.nan, *[float(d.codec == c) for c in codecs],
                            float(d.downscaler == "point")])
    x, y = torch.stack(vectors).numpy(), np.array(targets)
    mu, sd = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    x = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)
    train, test = slice(0, n_train), slice(n_train, None)

    def ridge(cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        a = x[train][rows[train]]
        w = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ y[train][rows[train]][:, cols])
        return x[test] @ w

    out = {}
    everything = np.ones(len(y), bool)
    for name, col, rows in (("noise sigma (x255)", 0, everything), ("blur sigma (HR px)", 1, everything), ("H.264 CRF", 2, ~np.isnan(y[:, 2]))):
        pred = ridge(np.array([col]), rows)[:, 0][rows[test]]
        truth = y[test][rows[test], col]
        guess = np.nanmean(y[train][rows[train], col])
        out[name] = {"probe_mae": float(np.abs(pred - truth).mean()), "mean_guess_mae": float(np.abs(guess - truth).mean()),
                     "correlation": float(np.corrcoef(pred, truth)[0, 1]), "test_clips": int(rows[test].sum())}
    scores = ridge(np.arange(3, 7), everything)
    truth = y[test][:, 3:].argmax(1)
    out["codec (none/H.264/MPEG-2/MJPEG)"] = {"accuracy": float((scores.argmax(1) == truth).mean()),
                                             "majority_guess": float(np.bincount(truth).max() / len(truth)), "test_clips": len(truth)}
    point = y[test][:, 7] > 0.5
    out["point-sampled downscale"] = {"roc_auc": roc_auc(ridge(np.array([7]), everything)[:, 0], point),
                                      "share": float(point.mean()), "test_clips": len(point)}
    return out


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """The chance that a positive scores above a negative (ties count half): the Mann-Whitney statistic."""
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def card_record(record: dict, preset: str, hardware: str) -> dict:
    """What a real preset's model card keeps of a `bench real` run (its `validation_real`)."""
    table = record["table"]
    keep = lambda m: m in ("lanczos", "nnedi3", "fast-x2") or m == preset or m.startswith(preset + " ")  # noqa: E731
    rounded = {key: {chain: {m: round(r[key], 2 if key == "y_psnr" else 4) for m, r in row.items() if keep(m) and isinstance(r, dict)}
                     for chain, row in table.items()} for key in ("y_psnr", "ssim")}
    out = {"command": record["command"], "frames": record["frames"], "hardware": hardware, **rounded, "torch": record["torch"]}
    if preset in record.get("degradation_probe", {}):
        out["degradation_probe"] = {k: {n: round(v, 3) if isinstance(v, float) else v for n, v in r.items()}
                                    for k, r in record["degradation_probe"][preset].items()}
    return out

