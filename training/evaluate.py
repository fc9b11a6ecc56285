"""Quality measurement on the validation clips: the peers (training/peers.py: bicubic, Lanczos, nnedi3,
LIIF) and presets, Y-PSNR / SSIM per clip.

    hypersr bench quality [--preset fast-x2 ...] [--frames 4] [--update-card]

LR input is the BI degradation of each HR clip (training.data.degrade_bi). Presets run through the same
VapourSynth function users call (hypersr.vsplugin.upscale).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..engine.errors import HypersrError
from . import data, peers
from .metrics import clip_scores, y_psnr


def export_variants(lr: np.ndarray, preset: str) -> dict[str, np.ndarray]:
    """What FFmpeg's dnn_processing gets from `hypersr export torchscript`: the causal window and --single."""
    from ..engine.export import CausalWindow
    from ..engine.preset_registry import load_model

    outs = {}
    for label, single in (("causal", False), ("single", True)):
        module = CausalWindow(load_model(preset), single).eval()
        with torch.inference_mode():
            module(torch.rand(1, *lr.shape[1:]))  # FFmpeg's trial call on a dummy frame
            outs[f"{preset} {label}"] = np.stack([module(torch.from_numpy(f)[None])[0].numpy() for f in lr])
    return outs


def self_ensemble(lr: np.ndarray, upscale_array) -> np.ndarray:
    """The geometric self-ensemble (Lim et al., 2017, "EDSR+"): upscale_array on the LR frames [T, 3, h, w] in
    each of the 8 flips and quarter turns, each output turned back, averaged."""
    total = None
    for k in range(8):
        turned = np.rot90(lr[..., ::-1] if k >= 4 else lr, k % 4, axes=(2, 3))
        out = np.rot90(upscale_array(np.ascontiguousarray(turned)), -(k % 4), axes=(2, 3))
        out = out[..., ::-1] if k >= 4 else out
        total = out.astype(np.float64) if total is None else total + out
    return (total / 8).astype(np.float32)


def upscale_methods(lr: np.ndarray, scale: int, presets: list[str], device: str | None = None, variants: bool = False,
                    frames: list[int] | None = None, tiles: list[int] = (), fp32: bool = False,
                    ensemble: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Upscale LR frames [T, 3, h, w] by every peer and preset; values quantised to 8 bits. With `frames`,
    the outputs are those frames only (presets still read their neighbours) and slow peers run on them
    alone; without, slow peers are skipped. Each of `tiles` adds every preset again, tiled (the seam's
    cost: "PRESET tile=N"); `fp32` adds each preset that the cpu backend runs partly in bf16 again, in fp32
    ("PRESET fp32": what bf16 costs); `ensemble` adds each preset's geometric self-ensemble ("PRESET x8", eight
    times its time). Returns the outputs and, per peer left out, why."""
    import vapoursynth as vs

    from ..engine import preset_registry
    from ..engine.backends import CPU, backend_from_names, bf16_parts
    from ..vsplugin import upscale
    from ..vsplugin.io import clip_from_array, clip_to_array

    pick = frames if frames is not None else list(range(len(lr)))
    outs: dict[str, np.ndarray] = {}
    missing: dict[str, str] = {}
    for name in peers.NAMES:
        if name in peers.SLOW and frames is None:
            missing[name] = "slow on a CPU: add --frames 4 to score it on a few frames"
            continue
        out = peers.peer_outputs(lr[pick], scale, (name,))[name]  # one frame at a time: the picked frames are enough
        if isinstance(out, str):
            missing[name] = out
        else:
            outs[name] = out
    clip = clip_from_array(lr)
    backend = backend_from_names(None, device)

    def picked(out):
        return clip_to_array(out if frames is None else vs.core.std.Splice([out[i] for i in pick]))  # the picked frames only

    for p in presets:
        runs = {p: (backend, None), **{f"{p} tile={tile}": (backend, tile) for tile in tiles}}
        if fp32 and isinstance(backend, CPU) and backend.uses_bf16() and bf16_parts(preset_registry.get(p).build()):
            runs[f"{p} fp32"] = (CPU(bf16=False), None)
        for name, (options, tile) in runs.items():
            outs[name] = picked(upscale(clip, preset=p, backend=options, tile=tile))
        if ensemble:
            outs[f"{p} x8"] = self_ensemble(lr, lambda a, p=p: picked(upscale(clip_from_array(a), preset=p, backend=backend)))
        if variants:
            outs.update({k: v[pick] for k, v in export_variants(lr, p).items()})
    return {name: np.round(np.clip(a, 0, 1) * 255) / 255 for name, a in outs.items()}, missing


def evaluate(clips: dict[str, torch.Tensor], scale: int, presets: list[str], device: str | None = None, out_dir: Path | None = None,
             variants: bool = False, frames: int | None = None, tiles: list[int] = (), fp32: bool = False,
             ensemble: bool = False) -> tuple[dict, dict[str, str]]:
    """{clip: {method: {"y_psnr", "ssim", "per_frame_psnr"}}} plus "mean" over clips, and the peers left
    out with the reason. frames: score that many frames spread over each clip (all: None). With out_dir,
    also writes crops_CLIP.png (the same crops from every method and the original) and per_frame_psnr.png."""
    results: dict = {}
    missing: dict[str, str] = {}
    for name, hr in clips.items():
        lr = data.degrade_bi(hr, scale).numpy()
        pick = None if frames is None else sorted({round(v) for v in np.linspace(0, len(hr) - 1, min(frames, len(hr)))})
        hr = hr if pick is None else hr[pick]
        results[name] = {}
        outputs, missing = upscale_methods(lr, scale, presets, device, variants, pick, tiles, fp32, ensemble)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            comparison_png(out_dir / f"crops_{name}.png", {**outputs, "original": hr.numpy()}, len(hr) // 2)
        for method, sr in outputs.items():
            sr_t = torch.from_numpy(sr)
            results[name][method] = {**clip_scores(sr_t, hr), "per_frame_psnr": [y_psnr(a, b) for a, b in zip(sr_t, hr)]}
    methods = next(iter(results.values())).keys()
    results["mean"] = {m: {k: float(np.mean([results[c][m][k] for c in clips])) for k in ("y_psnr", "ssim")} for m in methods}
    if out_dir is not None:
        per_frame_plot(out_dir / "per_frame_psnr.png", results)
    return results, missing


def _crops(frame: np.ndarray, boxes, zoom: int) -> list[np.ndarray]:
    """frame [3, H, W] float -> list of HxWx3 uint8 crops, enlarged `zoom` times (nearest)."""
    img = (np.clip(frame, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    return [img[y : y + h, x : x + w].repeat(zoom, 0).repeat(zoom, 1) for x, y, w, h in boxes]


def comparison_png(path: Path, columns: dict[str, np.ndarray], frame: int, boxes=None, zoom: int = 2) -> None:
    """Side by side: the same crops (x, y, w, h) of one frame from each method's frames [T, 3, H, W]."""
    from PIL import Image, ImageDraw

    if boxes is None:
        h, w = next(iter(columns.values())).shape[-2:]
        boxes = [(w // 8, h // 3, w // 4, h // 4), (w // 2, h // 2, w // 4, h // 4)]
    label_h, gap = 22, 6
    tiles = {name: _crops(frames[frame], boxes, zoom) for name, frames in columns.items()}
    tw, th = tiles[next(iter(tiles))][0].shape[1], tiles[next(iter(tiles))][0].shape[0]
    canvas = Image.new("RGB", (len(tiles) * (tw + gap) - gap, label_h + len(boxes) * (th + gap) - gap), "white")
    draw = ImageDraw.Draw(canvas)
    for c, (name, crops) in enumerate(tiles.items()):
        x = c * (tw + gap)
        draw.text((x + 4, 4), name, fill="black")
        for r, crop in enumerate(crops):
            canvas.paste(Image.fromarray(crop), (x, label_h + r * (th + gap)))
    canvas.save(path)


def per_frame_plot(path: Path, results: dict) -> None:
    """One panel per clip: Y-PSNR of every frame for each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = [c for c in results if c != "mean"]
    fig, axes = plt.subplots(len(clips), 1, figsize=(9, 3 * len(clips)), squeeze=False)
    for ax, clip in zip(axes[:, 0], clips):
        for method, r in results[clip].items():
            ax.plot(r["per_frame_psnr"], label=f"{method} ({r['y_psnr']:.2f} dB)", linewidth=1)
        ax.set_title(clip)
        ax.set_xlabel("frame")
        ax.set_ylabel("Y-PSNR (dB)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(results: dict, missing: dict[str, str] | None = None) -> str:
    methods = list(results["mean"])
    lines = ["| clip | " + " | ".join(f"{m} Y-PSNR / SSIM" for m in methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for clip, row in results.items():
        cells = [f"{row[m]['y_psnr']:.2f} / {row[m]['ssim']:.4f}" for m in methods]
        lines.append(f"| {clip} | " + " | ".join(cells) + " |")
    lines += [f"{m}: {why}" for m, why in (missing or {}).items()]
    return "\n".join(lines)


def validation_clips(data_dir: Path, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    data.fetch_clips(data_dir)
    known = sorted(p.stem for p in (data_dir / "clips").glob("*.mp4"))
    if unknown := [n for n in names or () if n not in known]:
        raise HypersrError(f"no clip named {', '.join(unknown)} among the fetched clips; give some of {', '.join(known)}")
    return {n: data.validation_clip(data_dir, n) for n in (names or data.VALIDATION_CLIPS)}


def evaluate_runs(run_dirs: list[Path], clips: dict[str, torch.Tensor], device: str = "cpu", degradation: str = "bi",
                  presets: list[str] = ()) -> list[dict]:
    """Finished training runs (`hypersr train base --out DIR`: DIR/arch.json and DIR/NAME.safetensors), and
    presets beside them, on whole validation clips (consecutive frames, so a window sees its true
    neighbours), for architecture experiments and ablations: Y-PSNR per clip (and chain, for "real": the
    training validation's chains; for "chains": bench real's nine) and their means."""
    from ..engine import preset_registry
    from ..engine.degradation import CHAINS, apply
    from ..engine.networks import macs_per_lr_pixel
    from .degradation import TrainingDegradation
    from .train import load_run, validate

    networks = [(Path(run).name, *load_run(run)) for run in run_dirs]
    networks = [(name, preset_registry.get(name).card.architecture.as_dict(), preset_registry.load_model(name)) for name in presets] + networks
    rows = []
    chained: dict[int, dict] = {}  # per scale: bench real's nine chains, each clip through each the same way every time
    for name, arch, model in networks:
        if degradation == "chains":
            if arch["scale"] not in chained:
                chained[arch["scale"]] = {f"{clip}/{chain}": (hr, apply(hr, arch["scale"], CHAINS[chain], np.random.default_rng(0)))
                                          for clip, hr in clips.items() for chain in CHAINS}
            scores = validate(model.to(device), clips, arch["scale"], device, inputs=chained[arch["scale"]])
        else:
            scores = validate(model.to(device), clips, arch["scale"], device, TrainingDegradation(degradation))
        degraded = [v for k, v in scores.items() if "/" in k and not k.endswith("/bi")]
        rows.append({"run": name, "arch": arch, "val_y_psnr": scores, "mean": float(np.mean(list(scores.values()))),
                     "mean, degraded": float(np.mean(degraded)) if degraded else None,
                     "parameters": sum(p.numel() for p in model.parameters()), "macs_per_input_pixel": macs_per_lr_pixel(model.cpu())})
    return rows


def runs_table(rows: list[dict]) -> str:
    clips = list(rows[0]["val_y_psnr"])
    means = ["mean"] + (["mean, degraded"] if rows[0]["mean, degraded"] is not None else [])
    lines = ["| run | " + " | ".join(clips + means) + " | parameters | MACs per LR pixel |", "|---" * (len(clips) + len(means) + 3) + "|"]
    for r in rows:
        lines.append(f"| {r['run']} | " + " | ".join(f"{r['val_y_psnr'][c]:.2f}" for c in clips) + " | "
                     + " | ".join(f"{r[m]:.3f}" for m in means) + f" | {r['parameters']:,} | {r['macs_per_input_pixel']:,} |")
    return "\n".join(lines)


PANS = ((2, 0), (1, 0), (0, 1), (1, 1), (3, 1))  # HR pixels per frame; (2, 0) moves the LR grid by whole pixels: no new samples


def single_frame_network(preset: str, example: str) -> tuple[int, torch.nn.Module]:
    """(scale, network) of a preset read one frame at a time, the per-frame network of the window oracles: a
    single-frame preset, or one whose window averages its input frames before the single frame's convolutions
    (real-x2: its one-frame network)."""
    from ..engine.networks import build_model, one_frame_of
    from ..engine.preset_registry import get, load_model

    p = get(preset)
    model = load_model(p).eval()
    if model.window != 1:
        arch = p.card.architecture.as_dict()
        if arch.get("fusion") != "average":
            raise HypersrError(f"{preset} reads a window itself; give a single-frame preset (e.g. {example}) as the per-frame network")
        single = build_model(one_frame_of(arch))
        single.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fuse.")})
        model = single.eval()
    return p.scale, model


def window_oracle(preset: str, scenes: np.ndarray, pans=PANS, frames: int = 5, patch: int = 128, seed: int = 0) -> list[dict]:
    """What a window's neighbouring frames know that the centre frame does not, with perfect alignment: each
    scene [S, S, 3] uint8 filmed by a camera panning by whole HR pixels per frame (no resampling of the HR
    frames), BI-downscaled, every frame upscaled by the preset on its own, shifted back by its exact offset
    and averaged. Per pan: the centre frame's Y-PSNR and the gain of averaging 3 and all frames. An odd
    HR offset per frame puts the LR samples at new phases; an even one only moves the LR grid."""
    from .clips import Camera, render
    from .degradation import TrainingDegradation
    from .metrics import clip_psnr

    scale, model = single_frame_network(preset, "quality-x2")
    degrade, rng, k = TrainingDegradation("bi"), np.random.default_rng(seed), frames // 2
    border = max(max(abs(a), abs(b)) for a, b in pans) * k + scale * 4  # what the shifted frames leave uncovered, and more
    crop = (slice(None), slice(None), slice(border, -border), slice(border, -border))
    rows = []
    for pan in pans:
        scores = {"centre": [], "mean of 3": [], f"mean of {frames}": []}
        for scene in scenes:
            side = scene.shape[0]
            clip = data.quantise(render(data.to_float(scene), Camera((side / 2 - 0.5, side / 2 - 0.5), pan), frames, patch, start=-k))
            lr = degrade(clip[None], scale, rng)[0]
            with torch.inference_mode():
                sr = data.quantise(torch.cat([model(f[None, None]) for f in lr]).clamp(0, 1))
            # frame i shows the scene moved by pan * (i - k): roll it back
            aligned = torch.stack([torch.roll(sr[i], (pan[1] * (i - k), pan[0] * (i - k)), (-2, -1)) for i in range(frames)])
            hr = clip[k][None][crop]
            scores["centre"].append(clip_psnr(aligned[k][None][crop], hr))
            scores["mean of 3"].append(clip_psnr(aligned[k - 1 : k + 2].mean(0)[None][crop], hr))
            scores[f"mean of {frames}"].append(clip_psnr(aligned.mean(0)[None][crop], hr))
        rows.append({"pan": pan, **{name: float(np.mean(v)) for name, v in scores.items()}})
    return rows


def window_oracle_table(rows: list[dict]) -> str:
    means = [k for k in rows[0] if k.startswith("mean")]
    lines = ["| pan (HR px per frame) | centre frame alone | " + " | ".join(f"aligned {m} (gain)" for m in means) + " |",
             "|---" * (len(means) + 2) + "|"]
    for r in rows:
        gains = " | ".join(f"{r[m]:.3f} ({r[m] - r['centre']:+.3f})" for m in means)
        lines.append(f"| {r['pan'][0]}, {r['pan'][1]} | {r['centre']:.3f} | {gains} |")
    return "\n".join(lines)


# --- what the neighbours know on real sources: a noise-adaptive temporal average ------------------

PREFILTER_KS = (1.5, 2.5, 4.0)


def noise_sigma(frame: torch.Tensor) -> float:
    """A frame's [3, h, w] noise sigma (0..1 units): engine.networks.blocks.noise_sigma."""
    from ..engine.networks.blocks import noise_sigma as sigmas

    return float(sigmas(frame[None])[0])


def temporal_average(lr: torch.Tensor, t: int, threshold: float) -> torch.Tensor:
    """Frame t of an LR clip [T, 3, h, w] averaged with its two neighbours wherever a neighbour differs from
    it by less than `threshold` (mean absolute difference over a 5x5 neighbourhood and the channels): a still
    pixel seen three times, each with its own noise; a moving one is left alone."""
    import torch.nn.functional as F

    centre = lr[t]
    total, count = centre.clone(), torch.ones_like(centre[:1])
    for j in (t - 1, t + 1):
        near = (F.avg_pool2d((lr[j] - centre).abs().mean(0, keepdim=True)[None], 5, 1, 2)[0] < threshold).float()
        total += near * lr[j]
        count += near
    return total / count


def averaged_score(model, lr: torch.Tensor, hr: torch.Tensor, threshold: float) -> float:
    """Y-PSNR of the single-frame model on an LR clip's inner frames, each temporally averaged first."""
    from .metrics import clip_psnr

    with torch.inference_mode():
        sr = torch.cat([model(temporal_average(lr, t, threshold)[None, None]) for t in range(1, len(lr) - 1)])
    return clip_psnr(data.quantise(sr.clamp(0, 1)), hr[1:-1])


def prefilter_oracle(preset: str, clips: dict[str, torch.Tensor], chains: list[str], frames: int = 10,
                     ks=PREFILTER_KS) -> list[dict]:
    """What a window's neighbours know on real sources, without learning: each validation clip degraded by
    each chain, every inner frame averaged with its neighbours where they differ by less than k times the
    clip's noise sigma (its frames' median noise_sigma), then upscaled by the preset one frame at a time.
    Per chain and clip: Y-PSNR of the preset on the frames as they are, and the gain of each k."""
    from ..engine.degradation import CHAINS, apply

    scale, model = single_frame_network(preset, "quality-x2")
    rows = []
    for name, hr in clips.items():
        hr = hr[:frames]
        if len(hr) < 3:
            raise HypersrError(f"{name}: need at least 3 frames (a frame and its two neighbours)")
        for chain in chains:
            lr = apply(hr, scale, CHAINS[chain], np.random.default_rng(0))
            sigma = float(np.median([noise_sigma(f) for f in lr]))
            scores = [averaged_score(model, lr, hr, k * sigma) for k in (0.0, *ks)]
            rows.append({"chain": chain, "clip": name, "sigma": sigma * 255, "alone": scores[0],
                         **{k: s - scores[0] for k, s in zip(ks, scores[1:])}})
    return rows


def prefilter_oracle_table(rows: list[dict], ks=PREFILTER_KS) -> str:
    lines = ["| chain | clip | noise sigma (/255) | frames as they are | " + " | ".join(f"k = {k:g}" for k in ks) + " |",
             "|---" * (len(ks) + 4) + "|"]
    for r in rows:
        lines.append(f"| {r['chain']} | {r['clip']} | {r['sigma']:.2f} | {r['alone']:.3f} | "
                     + " | ".join(f"{r[k]:+.3f}" for k in ks) + " |")
    degraded = [r for r in rows if r["chain"] != "bi"]
    for label, subset in (("mean, degraded chains", degraded), ("mean, every pair", rows)):
        if subset:
            lines.append(f"| {label} | | | {np.mean([r['alone'] for r in subset]):.3f} | "
                         + " | ".join(f"{np.mean([r[k] for r in subset]):+.3f}" for k in ks) + " |")
    return "\n".join(lines)
