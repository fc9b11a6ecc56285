"""`hypersr demo`: shrink a sample clip (BI, x scale), upscale it back with hypersr's two passes, compare.

Writes into the output folder: NAME_lr.y4m (the input made from the sample), NAME.lora (pass one,
`hypersr analyse --refine 10`, without --refine for a preset that takes none), NAME_xS.y4m (pass two, `hypersr upscale --lora`), NAME_xS_one_pass.y4m
(the base network alone) and NAME_compare.png (the same crops from bicubic, Lanczos, both hypersr
results and the original, with each method's Y-PSNR over the clip). Same code paths as the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEMO_REFINE = 10  # the best measured refine setting (README, "The medium-term memory")
BUNDLED_SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "bbb_640x360.mp4"  # found from any working directory


def cmd_demo(args) -> None:
    run_demo(args.sample or str(BUNDLED_SAMPLE), args.out, args.preset, args.device)


def run_demo(sample: str, out_dir: str, preset: str | None = None, device: str | None = None) -> dict[str, float]:
    import numpy as np
    import torch
    import vapoursynth as vs

    from ..engine import preset_registry
    from ..engine.backends import backend_from_names
    from ..engine.errors import HypersrError
    from ..engine.files import atomic_write, readable_file, refuse_same_file
    from ..ffmpeg_filter.sink import write_y4m
    from ..ffmpeg_filter.source import open_input
    from ..ffmpeg_filter.y4m import Y4MHeader
    from ..training import data, peers
    from ..training.evaluate import comparison_png
    from ..training.metrics import clip_psnr
    from ..vsplugin.io import MATRIX_709, clip_from_array, clip_to_array, to_rgb
    from .passes import run_analyse, run_upscale

    core = vs.core
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise HypersrError(f"-o {out} is a file; the demo writes several files into a folder: give a folder name")
    readable_file(sample, "sample")
    p = preset_registry.get(preset)
    name = Path(sample).stem
    lr_path, lora_path, png = out / f"{name}_lr.y4m", out / f"{name}.lora", out / f"{name}_compare.png"
    one_pass, sr_path = out / f"{name}_x{p.scale}_one_pass.y4m", out / f"{name}_x{p.scale}.y4m"
    for target in (lr_path, lora_path, png, one_pass, sr_path):
        refuse_same_file(target, sample)
    out.mkdir(parents=True, exist_ok=True)

    hr = clip_to_array(open_input(sample).rgb())
    hr = np.round(np.clip(hr, 0, 1) * 255) / 255
    lr = data.degrade_bi(torch.from_numpy(hr), p.scale).numpy()
    print(f"demo: {name} {hr.shape[3]}x{hr.shape[2]} -> BI x1/{p.scale} -> {lr.shape[3]}x{lr.shape[2]} -> hypersr {p.name}", file=sys.stderr)

    # The LR input as a y4m file (4:4:4 so no method is handicapped by chroma subsampling).
    lr_yuv = core.resize.Bicubic(clip_from_array(lr), format=vs.YUV444P8, matrix=MATRIX_709)

    def write_lr(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write_y4m(lr_yuv, Y4MHeader(lr.shape[3], lr.shape[2], "444", color_range="LIMITED"), f, progress=False)

    atomic_write(lr_path, write_lr)

    # One pass (the base network), then the two passes: analyse (hypernet, + --refine 10 where the preset takes it)
    # and upscale --lora.
    backend = backend_from_names(None, device)
    run_upscale(str(lr_path), str(one_pass), p, None, backend, MATRIX_709)
    # the demo's LR is a clean BI downscale: a real-source preset refines only if it takes clean sources
    takes = not p.refine_refused and (not p.card.is_real_source or "clean" in (p.card.refine_kinds or ()))
    run_analyse(str(lr_path), str(lora_path), p, DEMO_REFINE if takes else 0, device, MATRIX_709,
                source_kind="clean" if takes and p.card.is_real_source else None)
    run_upscale(str(lr_path), str(sr_path), p, str(lora_path), backend, MATRIX_709)

    lr_rgb = to_rgb(open_input(str(lr_path), MATRIX_709).clip, "RGBS", MATRIX_709)
    columns = {m: clip_to_array(peers.upscale(m, lr_rgb, p.scale)) for m in ("bicubic", "lanczos")}
    for label, path in ((f"hypersr {p.name}", one_pass), (f"hypersr {p.name} two-pass", sr_path)):
        columns[label] = clip_to_array(to_rgb(open_input(str(path), MATRIX_709).clip, "RGBS", MATRIX_709)[: len(hr)])
    columns["original"] = hr

    scores = {}
    hr_t = torch.from_numpy(hr)
    for m, frames in columns.items():
        if m != "original":
            q = torch.from_numpy(np.round(np.clip(frames, 0, 1) * 255) / 255)
            scores[m] = clip_psnr(q, hr_t)
    labelled = {(f"{m}  {scores[m]:.2f} dB" if m in scores else m): v for m, v in columns.items()}
    comparison_png(png, labelled, len(hr) // 2)
    for m, s in scores.items():
        print(f"  {m:<26} Y-PSNR {s:6.2f} dB", file=sys.stderr)
    print(f"wrote {sr_path} and {png}", file=sys.stderr)
    return scores


def add_commands(sub) -> None:
    demo = sub.add_parser("demo", help="shrink a sample clip, upscale it back with both passes, write the results and a comparison PNG")
    demo.add_argument("sample", nargs="?", help="a video file (default: the bundled sample, tests/data/bbb_640x360.mp4)")
    demo.add_argument("-o", "--out", default="demo-out")
    demo.add_argument("--preset", default=None)
    demo.add_argument("--device", default=None)
    demo.set_defaults(func=cmd_demo)

