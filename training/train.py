"""Training base models: Charbonnier loss, AdamW + cosine schedule, checkpoints and resume.

    hypersr data pack                      # fetch the sources, write DATA_DIR/train-pack.npz (one file)
    hypersr train base --preset fast-x2    # [--device cuda] [--pack FILE] [--steps N] [--install]

The same command runs on CPU and CUDA. Training reads only the pack (and the validation clips), so a
run can move to another machine with that one file. The run directory holds `checkpoint.pt` (resumed
automatically), `log.jsonl` (loss, validation PSNR) and, at the end, `NAME.safetensors`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..engine.errors import HypersrError
from ..engine.losses import charbonnier
from ..engine.networks import build_model, one_frame_of
from ..engine.window import window_indices
from . import data
from .degradation import AUX_TARGETS, TrainingDegradation, aux_target
from .metrics import clip_psnr

FLOW_WEIGHT = 0.1  # the share of vsrt's self-supervised flow loss in its training loss
STILL_WEIGHT = 0.01  # the share of a gated window fusion's still-pixel supervision (span, fusion="gated")


def upscale_clip(model, lr: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Upscale every frame of an LR clip [T, 3, h, w] with the model's window (clip ends repeat), batched and
    with gradients possible: for validating and fitting networks in training. What users run (and the
    benchmarks time) is engine/runtime.py's Upscaler."""
    t = lr.shape[0]
    idx = torch.from_numpy(window_indices(range(t), t, model.window))
    if hasattr(model, "aggregate"):  # vsrt: each frame's backbone features once, not once per window
        parts = [model.frame_features(lr[i : i + batch]) for i in range(0, t, batch)]
        partial, deep = torch.cat([p for p, _ in parts]), torch.cat([d for _, d in parts])
        centre = model.window // 2
        return torch.cat([model.aggregate(lr[w], partial[w[:, centre]], deep[w]).clamp(0, 1) for w in idx.split(batch)])
    return torch.cat([model(lr[w]).clamp(0, 1) for w in idx.split(batch)])


def validation_inputs(clips: dict[str, torch.Tensor], scale: int, degrade: TrainingDegradation) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (HR, LR)} for every validation clip and chain: "clip" when the degradation has one chain, else "clip/chain"."""
    out = {}
    for name, hr in clips.items():
        chains = degrade.validation(hr, scale)
        for chain, lr in chains.items():
            out[name if len(chains) == 1 else f"{name}/{chain}"] = (hr, lr)
    return out


def validate(model, clips: dict[str, torch.Tensor], scale: int, device, degrade: TrainingDegradation | None = None,
             inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, float]:
    """Y-PSNR per validation input; `inputs` (validation_inputs' result) saves degrading the clips again."""
    model.eval()
    scores = {}
    with torch.inference_mode():
        for name, (hr, lr) in (inputs or validation_inputs(clips, scale, degrade or TrainingDegradation("bi"))).items():
            sr = data.quantise(upscale_clip(model, lr.to(device))).cpu()
            scores[name] = clip_psnr(sr, hr)
    model.train()
    return scores


class DegradedBank:
    """Training windows with their LR made in advance: a real encoder per window costs more than the
    training step itself on a CPU, so a "real" run degrades `size` windows once (seeded, so a resumed run
    rebuilds the same bank) and each step draws a batch from them, flipped at random."""

    def __init__(self, sampler, degrade: TrainingDegradation, scale: int, size: int, seed: int):
        rng = np.random.default_rng(seed + 1)
        hr, lr = [], []
        for _ in tqdm(range(0, size, 16), desc="degrading the training windows", unit="batch"):
            h = sampler.sample(16, rng)
            hr.append(data.to_u8(h))
            lr.append(data.to_u8(degrade(h, scale, rng)))
        self.hr, self.lr = np.concatenate(hr), np.concatenate(lr)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = rng.choice(len(self.hr), n, replace=False)
        hr, lr = data.to_float(self.hr[idx]), data.to_float(self.lr[idx])
        if rng.random() < 0.5:
            hr, lr = hr.flip(-1), lr.flip(-1)
        return hr, lr


def check_fits(packed: data.Pack, option: str, side: int, frames: int) -> None:
    """An HR training side whose moving camera fits in the pack's scenes, before the run folder is made."""
    view = data.camera_view(side, frames)[1]
    scenes = packed.scenes.shape[1]
    if view + 4 > scenes:
        fits = max((s for s in range(8, scenes, 8) if data.camera_view(s, frames)[1] + 4 <= scenes), default=None)
        hint = f"give {option} {fits} or less" if fits else "make a pack with larger crops"
        raise HypersrError(f"{option} {side}: a camera moving over {frames} frames of it needs scenes of {view + 4} pixels, "
                           f"and the training pack's are {scenes}; {hint}")


def cosine_schedule(opt, steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def save_checkpoint(ckpt: Path, model, opt, sched, rng, step: int, config: dict) -> None:
    tmp = ckpt.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "step": step, "config": config}, tmp)
    tmp.replace(ckpt)


def resume(ckpt: Path, model, opt, sched, rng, device, config: dict) -> int:
    """Load a checkpoint if there is one; returns the step to start at. A checkpoint of another run (other
    architecture or hyperparameters) is refused rather than continued under the wrong settings."""
    if not ckpt.exists():
        return 0
    state = torch.load(ckpt, map_location=device, weights_only=False)
    saved = json.loads(json.dumps(state.get("config", config), default=str))
    if saved != json.loads(json.dumps(config, default=str)):
        changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != json.loads(json.dumps(config.get(k), default=str)))
        raise HypersrError(f"{ckpt} is a run with other settings ({', '.join(changed)}); give another --out, or delete it to start again")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
    print(f"resuming {ckpt} at step {state['step']}", flush=True)
    return state["step"]


def training_loop(out: Path, desc: str, trained, params, opt, sched, rng, device, steps: int, val_every: int, config: dict,
                  loss_fn, validate_fn, postfix_fn, clip_grad: float | None = None, max_minutes: float | None = None) -> int:
    """The one loop of every training run (base networks and hypernets): resume from out/checkpoint.pt,
    log the untrained network's validation at step 0, then per step loss_fn() -> backward -> step, and every
    `val_every` steps validate_fn() into out/log.jsonl, a progress-bar summary (postfix_fn) and a checkpoint
    that holds `config` (architecture and hyperparameters). With max_minutes, the run stops at the first
    step past that much wall time, validated and checkpointed (run it again to go on). Returns the last step."""
    ckpt = out / "checkpoint.pt"
    start = resume(ckpt, trained, opt, sched, rng, device, config)
    log = open(out / "log.jsonl", "a")
    if start == 0:  # where the untrained network starts, for comparison
        log.write(json.dumps({"step": 0, "val_y_psnr": validate_fn()}) + "\n")
        log.flush()
    t0, running = time.time(), []
    deadline = t0 + 60 * max_minutes if max_minutes else None  # the steps' time, after any step-0 validation
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc)
    for step in bar:
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        opt.step()
        sched.step()
        running.append(loss.item())
        out_of_time = deadline is not None and time.time() > deadline
        if (step + 1) % val_every == 0 or step + 1 == steps or out_of_time:
            scores = validate_fn()
            entry = {"step": step + 1, "loss": float(np.mean(running)), "lr": sched.get_last_lr()[0], "val_y_psnr": scores,
                     "elapsed_s": round(time.time() - t0, 1)}
            running = []
            log.write(json.dumps(entry) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{entry['loss']:.4f}", **postfix_fn(scores))
            save_checkpoint(ckpt, trained, opt, sched, rng, step + 1, config)
            if out_of_time:
                bar.close()
                print(f"stopped at step {step + 1} of {steps} after {max_minutes:g} minutes; the same command resumes", flush=True)
                log.close()
                return step + 1
    log.close()
    return steps


def load_run(run: Path) -> tuple[dict, torch.nn.Module]:
    """A finished training run's architecture and network (`hypersr train base --out DIR`: DIR/arch.json and
    DIR/NAME.safetensors)."""
    if not Path(run).is_dir():
        raise HypersrError(f"{run}: no such run folder; give the --out folder of a finished `hypersr train base`" +
                           (", not a file in it" if Path(run).is_file() else ""))
    weights = sorted(Path(run).glob("*.safetensors"))
    if not (Path(run) / "arch.json").is_file() or len(weights) != 1:
        raise HypersrError(f"{run} is not a finished run: a run folder holds arch.json and one NAME.safetensors, as "
                           "`hypersr train base --out FOLDER` leaves it (a stopped run finishes with the same command)")
    try:
        arch = json.loads((Path(run) / "arch.json").read_text())
        model = build_model(arch)
        model.load_state_dict(load_file(str(weights[0])))
    except Exception as e:  # noqa: BLE001  a malformed arch.json, an unknown network, unreadable or mismatched weights
        raise HypersrError(f"{run}: its arch.json or {weights[0].name} cannot be read as a network ({type(e).__name__}); "
                           f"train it again with `hypersr train base --out {run}`") from None
    return arch, model


def init_network(init: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """What `--init` names, as its architecture and weights: a preset, or a finished run's folder (a recipe's
    earlier stage): a path, or a folder named unlike any preset."""
    from ..engine import preset_registry

    init = str(init)
    if "/" not in init and init in preset_registry.available():
        return preset_registry.get(init).card.architecture.as_dict(), preset_registry.load_model(init).state_dict()
    if "/" not in init and not Path(init).exists():
        raise HypersrError(f"--init {init}: no preset and no run folder of that name; presets: {', '.join(preset_registry.available())}")
    arch, model = load_run(Path(init))
    return arch, model.state_dict()


def train_base(
    arch: dict,
    name: str,
    data_dir: Path,
    out: Path,
    pack: Path | None = None,
    degradation: str = "bi",
    steps: int = 3000,
    batch: int = 16,
    patch: int = 96,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str = "cpu",
    val_every: int = 250,
    init: str | None = None,
    bank: int = 4096,
    trainable: list[str] | None = None,
    max_minutes: float | None = None,
    bf16: bool = False,
    clip_grad: float | None = None,
    note: str | None = None,
) -> Path:
    """Train a base network. init: a preset or a finished run (init_network) whose weights the run starts from (same
    architecture, e.g. a real-source preset fine-tuned from its clean counterpart; the backbone's, e.g. vsrt from SPAN;
    or the same network one frame at a time, a window's start). trainable: the names of the parameters to
    train (prefixes, e.g. ["conv_1", "fuse"]); the rest stay as init made them (None: all). bf16: the network's
    forward in bf16 autocast (mixed precision: weights, optimiser, loss and validation stay fp32). clip_grad: the
    gradients' largest norm (None: unclipped). note: a line for stderr once the run's checks pass."""
    packed = data.load_pack(pack or data_dir / "train-pack.npz")
    check_fits(packed, "--patch", patch, arch["window"])
    if trainable and not any(n.startswith(tuple(trainable)) for n, _ in build_model(arch).named_parameters()):
        raise HypersrError(f"--trainable {' '.join(trainable)}: no parameter of the network is named so; "
                           f"its names start with {', '.join(sorted({n.split('.')[0] for n, _ in build_model(arch).named_parameters()}))}")
    start = init_network(init) if init else None  # before arch.json: --init may name a run folder
    if note:  # once every check has passed, so that a refusal stays one line
        print(note, file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (out / "arch.json").write_text(json.dumps(arch) + "\n")  # what `hypersr bench runs` rebuilds the network from
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scale, window = arch["scale"], arch["window"]

    sampler = data.WindowSampler(packed.scenes, packed.clips, window, patch)
    degrade = TrainingDegradation(degradation)
    val = packed.validation
    val_inputs = validation_inputs(val, scale, degrade)  # once: a real chain runs an encoder over every clip

    model = build_model(arch).to(device)
    if start:  # the same network, the pretrained backbone inside this one (vsrt's SPAN), or it one frame at a time
        from .span_import import for_window

        init_arch, state = start
        if init_arch == arch:
            model.load_state_dict(state)
        elif init_arch == one_frame_of(arch):
            model.load_state_dict(for_window(arch, state))
        else:
            model.backbone.load_state_dict(state)
    params = [p for n, p in model.named_parameters() if trainable is None or n.startswith(tuple(trainable))]
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in params))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = cosine_schedule(opt, steps)
    windows = DegradedBank(sampler, degrade, scale, bank, seed) if degrade.name == "real" else None

    def loss_fn():
        if windows is not None:
            hr, lr_in = windows.sample(batch, rng)
        else:
            hr = sampler.sample(batch, rng)
            lr_in = degrade(hr, scale, rng)
        lr_in = lr_in.to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            sr = model(lr_in)
        loss = charbonnier(sr.float(), hr[:, window // 2].to(device))
        if getattr(model, "flow", None) is not None and any(p.requires_grad for p in model.flow.parameters()):
            loss = loss + FLOW_WEIGHT * model.flow_loss(lr_in)
        if hasattr(model, "still_loss") and model.window > 1 and (still := model.still_loss(lr_in, hr.to(device))) is not None:
            loss = loss + STILL_WEIGHT * still
        return loss

    config = {"arch": arch, "degradation": degradation, "batch": batch, "patch": patch, "lr": lr,  # steps may grow on resume
              "weight_decay": weight_decay, "seed": seed, "init": init, "bank": bank, "trainable": trainable}
    if arch.get("fusion") == "gated":  # its loss has the still-pixel term: a checkpoint from without it is another run
        config["still_weight"] = STILL_WEIGHT
    if bf16:  # only when set, so that runs from before these options resume
        config["bf16"] = True
    if clip_grad is not None:
        config["clip_grad"] = clip_grad
    training_loop(out, f"train {name}", model, params, opt, sched, rng, device, steps, val_every, config, loss_fn,
                  lambda: validate(model, val, scale, device, inputs=val_inputs),
                  lambda scores: {"psnr": " ".join(f"{v:.2f}" for v in scores.values())}, clip_grad=clip_grad, max_minutes=max_minutes)
    weights = out / f"{name}.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(weights))
    return weights


# --- meta-training the hypernet ------------------------------------------------------------------

AUX_WEIGHT = 0.01  # the auxiliary degradation head's share of the meta-training loss ("real" presets)
HYPERNET_ARCH = {"dim": 64, "queries": 8, "rank": 4, "patch": 32, "per_side": 4, "hidden": 128}
HYPERNET_HYPERPARAMETERS = {"steps": 3000, "clips": 4, "frames": 6, "targets": 2, "lr": 1e-3, "seed": 0}  # size: 64 LR pixels

def clip_loss(hypernet, base, hr: torch.Tensor, lr: torch.Tensor, cuts: list[int], centres: list[int], aux=None, aux_target=None,
              summary=None) -> torch.Tensor:
    """One clip: LR -> hypernet -> LoRA -> base + LoRA upscales windows of the same clip -> Charbonnier.
    aux: a head reading the standardised summary that must predict the clip's degradation (aux_target);
    its error is added with weight AUX_WEIGHT, so that the summary learns what degraded the clip.
    summary: the clip's summary where the caller made it (a teacher that also reads HR)."""
    from ..engine.hypernet import Memory
    from ..engine.lora import lora_applied

    idx = data.shot_windows(centres, cuts, len(hr), base.window)
    summary = hypernet.summarise(lr, base) if summary is None else summary
    with lora_applied(base, hypernet.factors(summary)):
        loss = charbonnier(base(lr[idx]), hr[centres])
    if aux is not None:
        loss = loss + AUX_WEIGHT * torch.nn.functional.mse_loss(aux(hypernet.standardise(Memory.read(summary))), aux_target)
    return loss


def validate_hypernet(hypernet, base, inputs: dict[str, tuple[torch.Tensor, torch.Tensor]], device) -> dict[str, dict[str, float]]:
    """Y-PSNR of base alone and base + the hypernet's LoRA for each (subsampled) validation clip: `inputs`
    is validation_inputs' {name: (HR, LR)}."""
    from ..engine.lora import lora_applied

    hypernet.eval()
    scores, deltas, tokens = {}, [], []
    with torch.inference_mode():
        for name, (hr, lr) in inputs.items():
            lr = lr.to(device)
            summary = hypernet.summarise(lr, base)
            tokens.append(summary.moment1 / summary.count)
            factors = hypernet.factors(summary)
            deltas.append(torch.cat([(B @ A).flatten() for A, B in factors.values()]))
            sr = data.quantise(upscale_clip(base, lr)).cpu()
            with lora_applied(base, factors):
                sr_adapted = data.quantise(upscale_clip(base, lr)).cpu()
            scores[name] = {"base": clip_psnr(sr, hr), "hypernet": clip_psnr(sr_adapted, hr)}
    # How much the LoRA depends on the clip: spread of the weight deltas across clips relative to their size
    # (0 would be one constant LoRA for every clip: a fine-tune, not a memory).
    d = torch.stack(deltas)
    scores["lora_spread"] = float((d - d.mean(0)).norm() / d.norm().clamp(min=1e-12))
    # How much the encoder's tokens differ between clips: near 0, the encoder has died (every ReLU of a
    # layer off) and only the fixed evidence reaches the LoRA, as happened to real-x2's first hypernets.
    scores["token_spread"] = float(token_spread(torch.stack(tokens)))
    hypernet.train()
    return scores


def token_spread(mean_tokens: torch.Tensor) -> torch.Tensor:
    """Clips' mean tokens [N, D] -> their spread across clips relative to their size."""
    return (mean_tokens - mean_tokens.mean(0)).norm() / mean_tokens.norm().clamp(min=1e-12)


def warm_start(hypernet, state: dict[str, torch.Tensor]) -> None:
    """Start from an earlier hypernet's weights. Where this one reads more summary features (evidence),
    the new inputs' weights start at zero, so it begins exactly where the earlier one ended."""
    own = hypernet.state_dict()
    for name, old in state.items():
        new = own[name]
        if new.shape == old.shape:
            new.copy_(old)
        elif new.dim() == old.dim() and all(n >= o for n, o in zip(new.shape, old.shape)):
            new.zero_()
            new[tuple(slice(0, o) for o in old.shape)] = old
        else:
            raise ValueError(f"{name}: {tuple(old.shape)} does not fit {tuple(new.shape)}")


def calibrate_standardiser(hypernet, base, sampler, rng, scale: int, degrade, device, clips: int = 64) -> None:
    """Start the summary standardiser from the statistics of real training clips, not from 0 and 1."""
    from ..engine.hypernet import Memory

    with torch.no_grad():
        vectors = torch.stack([Memory.read(hypernet.summarise(degrade(sampler.sample(rng)[0], scale, rng).to(device), base))
                               for _ in range(clips)])
    hypernet.standardise.calibrate(vectors)


def train_hypernet(
    preset,
    arch: dict,
    out: Path,
    pack: Path,
    degradation: str = "bi",
    steps: int = 3000,
    clips: int = 4,
    frames: int = 6,
    size: int = 128,
    targets: int = 2,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str = "cpu",
    val_every: int = 250,
    init: Path | None = None,
    max_minutes: float | None = None,
) -> Path:
    """Meta-train a preset's hypernet with its base model frozen. Each step: `clips` clips of `frames`
    frames of size x size HR; the hypernet reads each whole LR clip; the loss is on `targets` windows."""
    from ..engine import preset_registry
    from ..engine.hypernet import build_hypernet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scale = preset.scale
    packed = data.load_pack(pack)
    check_fits(packed, "--size", size, frames)
    sampler = data.ClipSampler(packed.scenes, packed.clips, frames, size)
    degrade = TrainingDegradation(degradation)
    base = preset_registry.load_model(preset, device=device)
    hypernet = build_hypernet(base, arch).to(device)
    if init is not None:
        try:
            warm_start(hypernet, load_file(str(init)))
        except (SafetensorError, ValueError, KeyError) as e:
            raise HypersrError(f"--init {init} is not a hypernet that {preset.name}'s can start from ({e}); "
                               f"give one trained for {preset.name}, e.g. presets/{preset.name}.hypernet.safetensors") from None
    out.mkdir(parents=True, exist_ok=True)
    # For real sources, a linear head learns to read the clip's degradation from the summary; it trains with
    # the hypernet and is discarded: what users run is the hypernet alone.
    aux = torch.nn.Linear(hypernet.standardise.mean.numel(), AUX_TARGETS).to(device) if degrade.name == "real" else None
    trained = list(hypernet.parameters()) + (list(aux.parameters()) if aux else [])
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=weight_decay)
    sched = cosine_schedule(opt, steps)
    if not (out / "checkpoint.pt").exists():
        calibrate_standardiser(hypernet, base, sampler, rng, scale, degrade, device)
    val_inputs = validation_inputs(packed.validation, scale, degrade)  # once: a real chain runs an encoder over every clip

    def loss_fn():
        loss = 0.0
        for _ in range(clips):
            hr, cuts = sampler.sample(rng)
            centres = sorted(rng.choice(frames, targets, replace=False).tolist())
            lr_in, d = degrade.clip(hr, scale, rng)
            loss = loss + clip_loss(hypernet, base, hr.to(device), lr_in.to(device), cuts, centres, aux, aux_target(d).to(device)) / clips
        return loss

    def postfix(scores):
        return {"spread": f"{scores['lora_spread']:.3f}",
                "gain": " ".join(f"{v['hypernet'] - v['base']:+.3f}" for v in scores.values() if isinstance(v, dict))}

    config = {"arch": arch, "base_sha256": preset.sha256, "degradation": degradation, "clips": clips, "frames": frames,
              "size": size, "targets": targets, "lr": lr, "weight_decay": weight_decay, "seed": seed, "init": str(init) if init else None}
    training_loop(out, f"train {preset.name} hypernet", hypernet, list(hypernet.parameters()), opt, sched, rng, device, steps, val_every,
                  config, loss_fn, lambda: validate_hypernet(hypernet, base, val_inputs, device), postfix, clip_grad=1.0,
                  max_minutes=max_minutes)
    weights = out / f"{preset.name}.hypernet.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in hypernet.state_dict().items()}, str(weights))
    return weights
