"""`hypersr bench memory`: does the medium-term memory help, and what does pass one cost?

1. Real validation clips (whole clips, BI degradation): base vs base + the hypernet's LoRA vs + refine N,
   Y-PSNR per clip; time of pass one (analyse) and pass two (upscale) on the same frames.
2. Memory test: clips of one validation still (never trained on) with a close-up shot first, then
   distant shots of the same scene. Only the distant shots are scored; their LoRA comes either from the
   distant shots alone or from the whole clip, so the difference is what the close-up taught.
3. Peak memory of `hypersr analyse` on a 200- and a 2,000-frame stream (separate processes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..engine import preset_registry
from ..engine.analyse import analyse_frames
from ..engine.backends import CPU
from ..engine.runtime import Upscaler
from . import data
from .metrics import clip_psnr


def upscale_frames(preset, lr: torch.Tensor, lora=None, cuts: tuple[int, ...] = ()) -> torch.Tensor:
    """Pass two as users run it (the runtime, on the CPU), 8-bit quantised."""
    return data.quantise(torch.from_numpy(Upscaler(preset, lora, backend=CPU()).clip(lr.numpy(), cuts)))


def psnr(sr: torch.Tensor, hr: torch.Tensor) -> float:
    return clip_psnr(sr, hr)


def real_clips(preset: str, clips: dict[str, torch.Tensor], refines: list[int]) -> dict:
    p = preset_registry.get(preset)
    out = {}
    for name, hr in clips.items():
        lr = data.degrade_bi(hr, p.scale)
        frames = lr.numpy()
        t0 = time.perf_counter()
        sr = upscale_frames(preset, lr)
        pass_two = time.perf_counter() - t0
        row = {"frames": len(hr), "size": f"{lr.shape[-1]}x{lr.shape[-2]}", "base": psnr(sr, hr), "pass_two_s": pass_two}
        for n in [0, *refines]:
            t0 = time.perf_counter()
            lora = analyse_frames(frames, preset, refine=n, measure_refused_refine=True)
            row[f"pass_one_s refine {n}"] = time.perf_counter() - t0
            row[f"hypernet refine {n}"] = psnr(upscale_frames(preset, lr, lora), hr)
        out[name] = row
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), file=sys.stderr)
    return out


def never_worse(presets: list[str], clips: dict[str, torch.Tensor], chains: list[str], progress=None, refine: int = 0) -> dict:
    """Every preset with a hypernet x chain x clip: Y-PSNR of pass two alone ("base") and after pass one
    ("memory": `analyse` with `refine` steps, on a real-source preset with the chain's source kind declared
    and none for a kind it does not refine for, then pass two with its LoRA), both as users run them. The LR clip
    is the HR clip through the chain at the preset's scale (seed 0). results[preset][chain][clip] = {base, memory}."""
    from ..engine import degradation as deg

    out: dict = {}
    for name in presets:
        p = preset_registry.get(name)
        out[name] = {}
        for chain in chains:
            out[name][chain] = {}
            for clip, hr in clips.items():
                hr = crop_to_multiple(hr, p.scale)
                lr = deg.apply(hr, p.scale, deg.CHAINS[chain], np.random.default_rng(0))
                kind = deg.kind_of(deg.CHAINS[chain]) if refine and p.card.is_real_source else None  # a user who knows their source
                steps = refine if kind is None or kind in p.card.refine_kinds else 0  # a kind the preset refuses: pass one without refine
                lora = analyse_frames(lr.numpy(), name, refine=steps, source_kind=kind if steps else None)
                row = {"base": psnr(upscale_frames(name, lr), hr), "memory": psnr(upscale_frames(name, lr, lora), hr)}
                out[name][chain][clip] = row
                if progress:
                    progress(f"{name} {chain} {clip}: base {row['base']:.3f}, memory {row['memory']:.3f} "
                             f"({row['memory'] - row['base']:+.3f})")
    return out


def crop_to_multiple(hr: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = hr.shape[-2:]
    return hr[..., : h - h % scale, : w - w % scale]


def never_worse_table(results: dict) -> str:
    """Memory minus base per chain (rows) and preset x clip (columns), with each preset's worst pair."""
    cols = [(p, c) for p, per_chain in results.items() for c in next(iter(per_chain.values()))]
    lines = ["| chain | " + " | ".join(f"{p} {c}" for p, c in cols) + " |", "|---|" + "---|" * len(cols)]
    for chain in next(iter(results.values())):
        gains = [results[p][chain][c]["memory"] - results[p][chain][c]["base"] for p, c in cols]
        lines.append(f"| {chain} | " + " | ".join(f"{g:+.2f}" for g in gains) + " |")
    worst = {p: min(r["memory"] - r["base"] for per_clip in per_chain.values() for r in per_clip.values()) for p, per_chain in results.items()}
    lines.append("| worst pair | " + " | ".join(f"{worst[p]:+.2f}" for p, _ in cols) + " |")
    return "\n".join(lines)


def score_shots(preset: str, lr: torch.Tensor, hr: torch.Tensor, shot: int, lora) -> float:
    """Y-PSNR of shots of `shot` frames each (windows stop at the cuts between them)."""
    return psnr(upscale_frames(preset, lr, lora, tuple(range(shot, len(lr), shot))), hr)


def memory_test(preset: str, data_dir: Path, refine: int, stills: int = 8, size: int = 192, shot: int = 8, seed: int = 0) -> dict:
    """Close-up first, then two distant shots; scores on the distant shots only."""
    from .clips import multi_shot_clip

    p = preset_registry.get(preset)
    _, val = data.split_stills(data.load_stills(data_dir))
    rng = np.random.default_rng(seed)
    rows = []
    for name, img in val[:stills]:
        still = data.to_float(img)
        clip = multi_shot_clip(still, rng, frames=3 * shot, size=size, shots=3, distant=(0.35, 0.55), closeup_first=True)
        lr = data.degrade_bi(clip.frames, p.scale)
        distant_hr, distant_lr = clip.frames[shot:], lr[shot:]
        row = {"still": name, "base": score_shots(preset, distant_lr, distant_hr, shot, None)}
        for n in sorted({0, refine}):
            for label, frames in (("distant only", distant_lr), ("whole clip", lr)):
                lora = analyse_frames(frames.numpy(), preset, refine=n, measure_refused_refine=True)
                row[f"{label}, refine {n}"] = score_shots(preset, distant_lr, distant_hr, shot, lora)
        rows.append(row)
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "still"), file=sys.stderr)
    keys = [k for k in rows[0] if k != "still"]
    return {"stills": len(rows), "frames_per_shot": shot, "hr_size": size, "distant_magnification": [0.35, 0.55],
            "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys}, "per_still": rows}


def pass_one_peak_rss(preset: str, frames: int, size: str = "320x180") -> float:
    """Peak resident memory (MB) of `hypersr analyse` reading a y4m stream of `frames` frames on stdin."""
    hypersr = str(Path(sys.executable).parent / "hypersr")
    from ..ffmpeg_filter.tool import ffmpeg_executable

    src = subprocess.Popen([ffmpeg_executable(), "-nostdin", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25",
                            "-frames:v", str(frames), "-pix_fmt", "yuv420p", "-f", "yuv4mpegpipe", "-"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"hypersr-bench-{os.getpid()}.lora"
    # A child's ru_maxrss starts at its parent's RSS at fork (exec does not reset it), and this process holds
    # the validation clips: so a small Python process starts hypersr and reports its peak.
    proc = subprocess.Popen([sys.executable, "-c", PEAK_RSS, hypersr, "analyse", "-", "-o", str(out), "--preset", preset, "-q"],
                            stdin=src.stdout, stdout=subprocess.PIPE, text=True)
    src.stdout.close()
    peak_kb = proc.communicate()[0].strip()
    src.wait()
    out.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"hypersr analyse failed on the {frames}-frame stream")
    return int(peak_kb) / 1024


PEAK_RSS = ("import os, sys; pid = os.spawnv(os.P_NOWAIT, sys.argv[1], sys.argv[1:]); _, st, ru = os.wait4(pid, 0); "
            "print(ru.ru_maxrss); sys.exit(os.waitstatus_to_exitcode(st))")


def table(real: dict, memory: dict, rss: dict[int, float], refines: list[int]) -> str:
    lines = ["Real validation clips (Y-PSNR dB, BI degradation; time in s on this machine)", ""]
    cols = ["base", *[f"hypernet refine {n}" for n in [0, *refines]]]
    lines.append(f"| clip | frames | {' | '.join(cols)} | pass one (refine 0) | pass two | ratio |")
    lines.append("|" + "---|" * (len(cols) + 5))
    for name, r in real.items():
        ratio = r["pass_one_s refine 0"] / r["pass_two_s"]
        lines.append(f"| {name} | {r['frames']} | " + " | ".join(f"{r[c]:.2f}" for c in cols)
                     + f" | {r['pass_one_s refine 0']:.1f} | {r['pass_two_s']:.1f} | {ratio:.0%} |")
    means = {c: np.mean([r[c] for r in real.values()]) for c in cols}
    lines.append("| mean | | " + " | ".join(f"{means[c]:.2f}" for c in cols) + " | | | |")
    lines.append("| gain over base | | " + " | ".join(f"{means[c] - means['base']:+.2f}" for c in cols) + " | | | |")
    lines += ["", f"Memory test: close-up shot then two distant shots of {memory['stills']} validation stills; distant shots scored", ""]
    m = memory["mean"]
    lines.append("| LoRA from | " + " | ".join(m) + " |")
    lines.append("|---|" + "---|" * len(m))
    lines.append("| Y-PSNR | " + " | ".join(f"{v:.2f}" for v in m.values()) + " |")
    lines.append("| gain over base | " + " | ".join(f"{v - m['base']:+.2f}" for v in m.values()) + " |")
    lines += ["", "Peak memory of pass one (hypersr analyse on a y4m stream, 320x180)", ""]
    lines += [f"| {n} frames | {mb:.0f} MB |" for n, mb in rss.items()]
    return "\n".join(lines)
