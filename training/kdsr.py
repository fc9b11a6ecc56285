"""`hypersr bench kdsr`: would a degradation code learnt by a teacher that sees HR, distilled into pass one's
LR-only encoder, let a real-source preset's memory gain (issue #25, part 2a; KDSR, Xia et al., AAAI 2022)?

Three hypernets, each trained end to end through the frozen base with the HR loss on clips degraded by the
preset's own mixture (the clean blend's head frozen as shipped; its share still follows the summary it reads):
- teacher: the preset's hypernet whose encoder also reads, for every patch, the base's error against HR
  (base(LR) - HR, unshuffled onto the LR grid). It knows how the base fails on this very clip, which is
  more than an exact identifier of the degradation would: what it gains bounds what distillation can give.
  It starts from the preset's hypernet with the new inputs' weights at zero, so at step 0 it is that hypernet.
- student: the LR-only hypernet users would run, started from the trained teacher without its HR inputs,
  trained with the HR loss plus KD weight x the squared distance of its degradation code (the generator's
  context layer) to the teacher's on the same clip.
- control: the same start and the same clips, without the distillation term: what the steps alone give.
Each is then scored on `bench real`'s chains x validation clips against the base and the shipped hypernet
(the raw LoRA, without pass one's safety check).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..engine import degradation as deg
from ..engine.errors import HypersrError
from ..engine.hypernet import ERROR_GAIN, evidence_sums
from .bench_bank import upscale
from .data import quantise
from .degradation import TrainingDegradation
from .metrics import clip_psnr
from .train import clip_loss, cosine_schedule, training_loop


def hr_error(hypernet, lr: torch.Tensor, hr: torch.Tensor, base) -> torch.Tensor:
    """The base's error against HR on the encoder's patches, unshuffled onto the LR grid [T * P, 3 s^2, p, p]."""
    s, enc = base.scale, hypernet.encoder
    p, corners = enc.grid(*lr.shape[-2:])
    x = enc.patches(lr)
    y = torch.cat([hr[:, :, s * a : s * (a + p), s * b : s * (b + p)] for a, b in corners])
    with torch.no_grad():
        sr = base(x.unsqueeze(1).expand(-1, base.window, -1, -1, -1)).clamp(0, 1)
    return ERROR_GAIN * F.pixel_unshuffle(sr - y, s)


def make_teacher(hypernet, scale: int):
    """A copy of `hypernet` whose encoder also reads hr_error; the new inputs start at zero weight."""
    teacher = copy.deepcopy(hypernet)
    old = teacher.encoder.net[0]
    new = nn.Conv2d(old.in_channels + 3 * scale * scale, old.out_channels, 3, padding=1).to(old.weight)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    teacher.encoder.net[0] = new
    return teacher


def drop_hr_inputs(teacher):
    """The LR-only hypernet that starts where the teacher is, without the inputs pass one cannot have."""
    student = copy.deepcopy(teacher)
    conv = student.encoder.net[0]
    lr_only = nn.Conv2d(6, conv.out_channels, 3, padding=1).to(conv.weight)
    with torch.no_grad():
        lr_only.weight.copy_(conv.weight[:, :6])
        lr_only.bias.copy_(conv.bias)
    student.encoder.net[0] = lr_only
    return student


def reads_hr(hypernet) -> bool:
    return hypernet.encoder.net[0].in_channels > 6


def summarise(hypernet, lr: torch.Tensor, hr: torch.Tensor, base):
    """The clip's summary: from LR alone, or for a teacher from LR and the base's error against HR."""
    if not reads_hr(hypernet):
        return hypernet.summarise(lr, base)
    enc = hypernet.encoder
    summary = hypernet.memory.summarise(enc.encode(torch.cat([enc.inputs(lr, base), hr_error(hypernet, lr, hr, base)], 1)), len(lr))
    if hypernet.evidence:
        summary.evidence = evidence_sums(lr)
    return summary


def code(hypernet, summary) -> torch.Tensor:
    """The degradation code the LoRA generator works from: its context layer's output."""
    return F.silu(hypernet.generator.context(hypernet.features(summary)))


@torch.no_grad()
def base_scores(base, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Y-PSNR of the base's 8-bit output (as users get it) on each (HR, LR) pair."""
    return {name: clip_psnr(quantise(upscale(base, lr)), hr) for name, (hr, lr) in pairs.items()}


@torch.no_grad()
def gains(hypernet, base, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], base_scores: dict[str, float]) -> dict[str, float]:
    """Y-PSNR gain of base + the hypernet's LoRA over the base on each (HR, LR) pair."""
    from ..engine.lora import lora_applied

    was_training = hypernet.training
    hypernet.eval()
    out = {}
    for name, (hr, lr) in pairs.items():
        with lora_applied(base, hypernet.factors(summarise(hypernet, lr, hr, base))):
            out[name] = clip_psnr(quantise(upscale(base, lr)), hr) - base_scores[name]
    hypernet.train(was_training)
    return out


def train_stage(hypernet, base, sampler, degrade: TrainingDegradation, out: Path, hp: dict, steps: int, val: dict,
                teacher=None, kd_weight: float = 0.0, max_minutes: float | None = None) -> bool:
    """Train one hypernet (the clean blend frozen) through training's loop; True when all steps are done.
    val: {"pairs": {name: (HR, LR)}, "base": {name: Y-PSNR}} for the loop's validation."""
    torch.manual_seed(hp["seed"])
    rng = np.random.default_rng(hp["seed"])  # the same seed for every stage: student and control see the same clips
    hypernet.eval()  # the summary's standardiser stays as calibrated for the shipped hypernet (eval: no running update)
    if teacher is not None:
        teacher.eval()
    params = [p for n, p in hypernet.named_parameters() if not n.startswith("blend.")]
    for n, p in hypernet.named_parameters():
        p.requires_grad_(not n.startswith("blend."))
    opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=1e-4)
    sched = cosine_schedule(opt, steps)
    frames, scale = sampler.frames, base.scale

    def loss_fn():
        loss = 0.0
        for _ in range(hp["clips"]):
            hr, cuts = sampler.sample(rng)
            centres = sorted(rng.choice(frames, hp["targets"], replace=False).tolist())
            lr, _ = degrade.clip(hr, scale, rng)
            summary = summarise(hypernet, lr, hr, base)
            term = clip_loss(hypernet, base, hr, lr, cuts, centres, summary=summary)
            if teacher is not None and kd_weight:
                with torch.no_grad():
                    target = code(teacher, summarise(teacher, lr, hr, base))
                term = term + kd_weight * F.mse_loss(code(hypernet, summary), target)
            loss = loss + term / hp["clips"]
        return loss

    out.mkdir(parents=True, exist_ok=True)
    config = stage_config(hypernet, hp, steps, kd_weight, teacher)
    done = training_loop(out, f"kdsr {out.name}", hypernet, params, opt, sched, rng, "cpu", steps, max(1, steps // 2), config, loss_fn,
                         lambda: gains(hypernet, base, val["pairs"], val["base"]),
                         lambda g: {"gain": " ".join(f"{v:+.3f}" for v in g.values())}, clip_grad=1.0, max_minutes=max_minutes)
    if done < steps:
        return False
    save_file({k: v.detach().contiguous() for k, v in hypernet.state_dict().items()}, str(out / "hypernet.safetensors"),
              {"config": json.dumps(config, sort_keys=True)})
    return True


def stage_config(hypernet, hp: dict, steps: int, kd_weight: float = 0.0, teacher=None) -> dict:
    """What a stage's weights depend on: its start (the hypernet's weights) included, so that a student of
    another teacher or a run with other settings is not mistaken for this one."""
    def digest(net) -> str:
        return hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes() for _, v in sorted(net.state_dict().items()))).hexdigest()

    config = {"hyperparameters": hp, "steps": steps, "kd_weight": kd_weight, "reads_hr": reads_hr(hypernet), "start": digest(hypernet)}
    if teacher is not None:
        config["teacher"] = digest(teacher)
    return config


def load_stage(hypernet, out: Path, config: dict):
    """A finished stage's weights into `hypernet`, or None when the stage has not finished; a finished stage
    made with another `config` (stage_config) is one line, not quietly reused."""
    f = out / "hypernet.safetensors"
    if not f.exists():
        return None
    with safe_open(str(f), "pt") as weights:
        saved = json.loads((weights.metadata() or {}).get("config", "{}"))
    if saved != json.loads(json.dumps(config, sort_keys=True)):
        raise HypersrError(f"{out} holds a finished run with other settings or another start; give another --out, or delete it to start again")
    hypernet.load_state_dict(load_file(str(f)))
    return hypernet


def score(hypernets: dict, base, clips: dict[str, torch.Tensor], chains: list[str], progress=print) -> list[dict]:
    """One row per chain x clip: the base's Y-PSNR and each hypernet's gain over it (a teacher reads HR too)."""
    rows = []
    for chain in chains:
        for name, hr in clips.items():
            lr = deg.apply(hr, base.scale, deg.CHAINS[chain], np.random.default_rng(0))
            b = base_scores(base, {name: (hr, lr)})[name]
            g = {k: gains(h, base, {name: (hr, lr)}, {name: b})[name] for k, h in hypernets.items()}
            rows.append({"chain": chain, "clip": name, "base": b, "gain": g})
            progress(f"{chain} {name}: base {b:.2f}, " + ", ".join(f"{k} {v:+.3f}" for k, v in g.items()))
    return rows


def table(rows: list[dict]) -> str:
    names = list(rows[0]["gain"])
    lines = ["| chain | clip | base | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    lines += [f"| {r['chain']} | {r['clip']} | {r['base']:.2f} | " + " | ".join(f"{r['gain'][k]:+.3f}" for k in names) + " |"
              for r in rows]
    lines += ["", "| hypernet | degraded chains | clean BI | worst pair |", "|---|---|---|---|"]
    for k in names:
        d = [r["gain"][k] for r in rows if r["chain"] != "bi"]
        c = [r["gain"][k] for r in rows if r["chain"] == "bi"]
        mean = lambda v: f"{np.mean(v):+.3f}" if v else "n/a"  # noqa: E731
        lines.append(f"| {k} | {mean(d)} | {mean(c)} | {min(r['gain'][k] for r in rows):+.3f} |")
    return "\n".join(lines)
