"""`hypersr bench quality | runs | real | memory | never-worse | bank | kdsr | window | speed`: the measurements behind the README's tables;
--update-card records them in the model cards (training/cards.py)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from ..engine.errors import HypersrError
from .options import DEFAULT_DATA_DIR, at_least, positive_minutes, positive_number


def cmd_bench_runs(args) -> None:
    from ..engine import preset_registry
    from ..engine.backends import resolve_device

    args.device = str(resolve_device(args.device))  # a device this machine lacks is one line, before any work
    from ..training.evaluate import evaluate_runs, runs_table, validation_clips

    for name in args.preset or ():
        preset_registry.get(name)  # an unknown one is refused before the clips are read
    t0 = time.time()
    clips = {name: clip[: args.frames] for name, clip in validation_clips(args.data_dir, args.clips).items()}
    print(runs_table(evaluate_runs(args.runs, clips, args.device, args.degradation, args.preset or ())))
    print(f"({time.time() - t0:.0f} s; Y-PSNR on BT.601 luma with a 4-pixel border cropped, {args.degradation} degradation"
          f"{' (the training validation chains)' if args.degradation == 'real' else ' (bench real chains)' if args.degradation == 'chains' else ''}, "
          f"{f'frames 0..{args.frames - 1}' if args.frames else 'every frame'})", file=sys.stderr)


def cmd_bench_quality(args) -> None:
    from ..engine import preset_registry
    from ..training import peers
    from ..training.evaluate import evaluate, table, validation_clips

    names = args.preset or [preset_registry.DEFAULT_PRESET]
    scales = {preset_registry.get(n).scale for n in names}
    if len(scales) != 1:
        raise HypersrError("compare presets of one scale at a time")
    t0 = time.time()
    results, missing = evaluate(validation_clips(args.data_dir, args.clips), scales.pop(), names, args.device, args.out,
                                args.export_variants, args.frames, args.tile or (), args.fp32, args.self_ensemble)
    print(table(results, missing))
    print(f"plots: {args.out}/per_frame_psnr.png, {args.out}/crops_*.png", file=sys.stderr)
    print(f"({time.time() - t0:.0f} s; Y-PSNR on BT.601 luma with a 4-pixel border cropped, BI degradation)", file=sys.stderr)
    if args.update_card:
        import torch

        from ..training import cards

        for n in names:
            p = preset_registry.get(n)
            validation = {
                "degradation": "bi",
                "frames": args.frames or "all",
                "clips": {c: {m: {k: round(r[m][k], 4) for k in ("y_psnr", "ssim")} for m in r if m in peers.NAMES or m.startswith(n)}
                          for c, r in results.items()},
                "command": cards.command(),
                "torch": torch.__version__,
            }
            cards.update_card(p, lambda card, p=p, v=validation: card.update(complexity=preset_registry.complexity(p), validation=v))
            print(f"updated {p.card_path}", file=sys.stderr)


def real_chains(names: list[str] | None) -> list[str]:
    """bench real's chains by name (default all), an unknown one refused in one line."""
    from ..engine.degradation import CHAINS

    if unknown := sorted(set(names or ()) - set(CHAINS)):
        raise HypersrError(f"unknown chain {unknown[0]!r}; the chains are {', '.join(CHAINS)}")
    return names or list(CHAINS)


def x2_only(name: str, command: str) -> str:
    """A x2 preset's name: the real-source chains shrink the clips by 2."""
    from ..engine import preset_registry

    if (scale := preset_registry.get(name).scale) != 2:
        raise HypersrError(f"{command} scores x2 presets (its chains shrink the clips by 2); {name} is x{scale}")
    return name


def cmd_bench_real(args) -> None:
    import torch

    from ..engine import preset_registry
    from ..training import bench_real, cards
    from ..training.data import load_pack
    from ..training.evaluate import comparison_png, validation_clips

    chains = real_chains(args.chain)
    presets = args.preset or ["fast-x2", "real-x2"]
    for name in presets:
        x2_only(name, "bench real")
    presets = [preset_registry.get(n) for n in presets]
    probed = [p.name for p in presets if not args.no_probe and p.card.is_real_source and p.card.has_hypernet]
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
    record = {"results": results, "table": table, "command": cards.command(), "torch": torch.__version__,
              "frames": f"{args.first}..{args.first + args.frames - 1} of each validation clip"}
    for name in probed:
        probe = bench_real.degradation_probe(name, pack)
        record.setdefault("degradation_probe", {})[name] = probe
        print(f"\nWhat {name}'s clip summary knows of the degradation (ridge probe, held-out sampled clips):")
        for what, r in probe.items():
            print(f"  {what}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    (args.out / "bench_real.json").write_text(json.dumps(record, indent=1))
    if args.update_card:
        for p in presets:
            if p.card.is_real_source:
                cards.update_card(p, lambda card, p=p: card.update(validation_real=bench_real.card_record(record, p.name, cards.hardware())))
                print(f"updated {p.card_path}", file=sys.stderr)
    print(f"({time.time() - t0:.0f} s; Y-PSNR on BT.601 luma with a 4-pixel border cropped; frames {args.first}..{args.first + args.frames - 1} "
          f"of each clip; {cards.hardware()})", file=sys.stderr)


def cmd_bench_memory(args) -> None:
    import torch

    from ..engine import preset_registry
    from ..training import bench_memory, cards
    from ..training.evaluate import validation_clips

    p = preset_registry.get(args.preset)
    t0 = time.time()
    print("real validation clips", file=sys.stderr)
    real = bench_memory.real_clips(p.name, validation_clips(args.data_dir, args.clips), args.refine)
    print("memory test", file=sys.stderr)
    memory = bench_memory.memory_test(p.name, args.data_dir, max(args.refine), stills=args.stills)
    rss = {n: bench_memory.pass_one_peak_rss(p.name, n) for n in (200, 2000)}
    print(bench_memory.table(real, memory, rss, args.refine))
    print(f"({time.time() - t0:.0f} s; {cards.hardware()})", file=sys.stderr)
    if args.update_card:
        validation = {
            "real_clips": {c: {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for c, r in real.items()},
            "memory_test": {**memory, "mean": {k: round(v, 4) for k, v in memory["mean"].items()},
                            "per_still": [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in memory["per_still"]]},
            "pass_one_peak_rss_mb": {str(n): round(mb) for n, mb in rss.items()},
            "hardware": cards.hardware(),
            "command": cards.command(),
            "torch": torch.__version__,
        }
        cards.update_card(p, lambda card: card["hypernet"].update(validation=validation))
        print(f"updated {p.card_path}", file=sys.stderr)


def cmd_bench_never_worse(args) -> None:
    import torch

    from ..engine import degradation, preset_registry
    from ..training import bench_memory, cards
    from ..training.evaluate import validation_clips

    names = args.preset or [n for n in preset_registry.available() if preset_registry.get(n).card.has_hypernet]
    for name in names:
        if not preset_registry.get(name).card.has_hypernet:
            raise HypersrError(f"preset {name} has no hypernet (no memory to measure); leave it out")
    t0 = time.time()
    clips = {name: hr[: args.frames] for name, hr in validation_clips(args.data_dir, args.clips).items()}
    results = bench_memory.never_worse(names, clips, list(degradation.CHAINS), progress=lambda line: print(line, file=sys.stderr))
    print("Memory minus base, Y-PSNR (dB): pass one (analyse, its safety check included) then pass two, against pass two alone")
    print(bench_memory.never_worse_table(results))
    print(f"({time.time() - t0:.0f} s; frames 0..{args.frames - 1} of each clip; {cards.hardware()})", file=sys.stderr)
    if args.update_card:
        for name in names:
            gains = {c: {clip: round(r["memory"] - r["base"], 4) for clip, r in per_clip.items()} for c, per_clip in results[name].items()}
            flat = [g for per_clip in gains.values() for g in per_clip.values()]
            record = {"memory_minus_base_y_psnr": gains, "worst": min(flat), "mean": round(sum(flat) / len(flat), 4),
                      "frames": f"0..{args.frames - 1} of each validation clip", "command": cards.command(),
                      "hardware": cards.hardware(), "torch": torch.__version__}
            p = preset_registry.get(name)
            cards.update_card(p, lambda card, record=record: card["hypernet"].update(never_worse=record))
            print(f"updated {p.card_path}", file=sys.stderr)


def cmd_bench_bank(args) -> None:
    from ..engine import degradation, preset_registry
    from ..training import bench_bank, cards
    from ..training.data import load_pack
    from ..training.evaluate import validation_clips

    preset = preset_registry.get(args.preset)
    if preset.scale != 2 or not preset.card.is_real_source:
        raise HypersrError(f"bench bank probes a x2 real-source preset (real-x2); {preset.name} is not one")
    pack = load_pack(args.data_dir / "train-pack.npz")  # one line saying how to make it when missing
    t0 = time.time()
    base = preset_registry.load_model(preset)
    for p in base.parameters():
        p.requires_grad_(False)
    clips = {name: hr[: args.frames] for name, hr in validation_clips(args.data_dir, args.clips).items()}
    if args.refine:
        rows = bench_bank.probe_refine(base, clips, list(degradation.CHAINS), args.refine, progress=lambda line: print(line, file=sys.stderr))
        print(f"{preset.name}: refine ({args.refine} steps, LoRA rank 8) on pairs from the clip's own frames, Y-PSNR gain over the base (dB);"
              " seen: the gain on the clip's own held-out pairs")
        print(bench_bank.refine_table(rows))
        print(f"({time.time() - t0:.0f} s; frames 0..{args.frames - 1} of each clip; {cards.hardware()})", file=sys.stderr)
        return
    twins = {}
    for family in bench_bank.FAMILIES:
        twins[family] = bench_bank.fit_family_lora(base, pack, family, args.steps, clips=args.train_clips)
        print(f"{family} twin fitted ({time.time() - t0:.0f} s)", file=sys.stderr)
    rows = bench_bank.probe(base, twins, clips, list(degradation.CHAINS), progress=lambda line: print(line, file=sys.stderr))
    print(f"{preset.name}: family twins (LoRA rank 8, {args.steps} steps each) and analysis by synthesis, Y-PSNR gain over the base (dB)")
    print(bench_bank.table(rows))
    print(f"({time.time() - t0:.0f} s; frames 0..{args.frames - 1} of each clip; {cards.hardware()})", file=sys.stderr)


def cmd_bench_kdsr(args) -> None:
    from ..engine import degradation, preset_registry
    from ..training import cards, kdsr
    from ..training.data import ClipSampler, load_pack
    from ..training.degradation import TrainingDegradation
    from ..training.evaluate import validation_clips
    from ..training.train import check_fits, validation_inputs

    preset = preset_registry.get(args.preset)
    if not (preset.card.is_real_source and preset.card.has_hypernet):
        raise HypersrError(f"bench kdsr probes a real-source preset with a hypernet (real-x2); {preset.name} is not one")
    if args.out.exists() and not args.out.is_dir():
        raise HypersrError(f"--out {args.out} is a file; the runs go into a folder: give a folder name")
    pack = load_pack(args.pack or args.data_dir / "train-pack.npz")  # one line saying how to make it when missing
    hp = {k: preset.card.hypernet.training["hyperparameters"][k] for k in ("clips", "frames", "targets", "lr", "seed", "size")}
    hp["lr"] = hp["lr"] if args.lr is None else args.lr
    check_fits(pack, "the preset's hypernet recipe's size", hp["size"], hp["frames"])
    clips = {name: hr[: args.frames] for name, hr in validation_clips(args.data_dir, args.clips).items()}  # a wrong name: now, not after training
    t0 = time.time()
    base = preset_registry.load_model(preset)
    for p in base.parameters():
        p.requires_grad_(False)
    shipped, _ = preset_registry.load_hypernet(preset, base)
    sampler = ClipSampler(pack.scenes, pack.clips, hp["frames"], hp["size"])
    degrade = TrainingDegradation("real")
    pairs = {k: (hr[:: args.val_every], lr[:: args.val_every]) for k, (hr, lr) in validation_inputs(pack.validation, base.scale, degrade).items()}
    val = {"pairs": pairs, "base": kdsr.base_scores(base, pairs)}
    stages = {}
    teacher = kdsr.make_teacher(shipped, base.scale)
    stages["teacher (reads HR)"] = kdsr.load_stage(teacher, args.out / "teacher", kdsr.stage_config(teacher, hp, args.steps))
    if stages["teacher (reads HR)"] is None:
        if not kdsr.train_stage(teacher, base, sampler, degrade, args.out / "teacher", hp, args.steps, val, max_minutes=args.max_minutes):
            return
        stages["teacher (reads HR)"] = teacher
    teacher.eval()
    for name, weight in () if args.teacher_only else (("control", 0.0), ("student", args.kd_weight)):
        net, folder = kdsr.drop_hr_inputs(teacher), args.out / name
        if kdsr.load_stage(net, folder, kdsr.stage_config(net, hp, args.steps, weight, teacher)) is None:
            if not kdsr.train_stage(net, base, sampler, degrade, folder, hp, args.steps, val, teacher, weight, max_minutes=args.max_minutes):
                return
        stages[f"{name} (KD weight {weight:g})"] = net
    print(f"training done ({time.time() - t0:.0f} s); scoring", file=sys.stderr)
    rows = kdsr.score({"shipped hypernet": shipped, **stages}, base, clips, list(degradation.CHAINS),
                      progress=lambda line: print(line, file=sys.stderr))
    print(f"{preset.name}: hypernets trained {args.steps} steps each (lr {hp['lr']:g}) from its own, Y-PSNR gain of the raw LoRA over the base (dB)")
    print(kdsr.table(rows))
    print(f"({time.time() - t0:.0f} s; frames 0..{args.frames - 1} of each clip; {cards.hardware()})", file=sys.stderr)


def cmd_bench_window(args) -> None:
    import numpy as np

    from ..training import data
    from ..training.evaluate import (
        prefilter_oracle,
        prefilter_oracle_table,
        single_frame_network,
        validation_clips,
        window_oracle,
        window_oracle_table,
    )

    if args.real:
        chains, preset = real_chains(args.chain), x2_only(args.preset or "real-x2", "bench window --real")
        single_frame_network(preset, "quality-x2")  # refused before the clips are fetched
        t0 = time.time()
        print(prefilter_oracle_table(prefilter_oracle(preset, validation_clips(args.data_dir, args.clips), chains, args.frames)))
        print(f"({time.time() - t0:.0f} s; the validation clips' frames 1..{args.frames - 2}, each chain as bench real's, "
              f"Y-PSNR; the k columns: the gain in dB of averaging each frame with its neighbours where they differ by less "
              f"than k times the clip's noise sigma)", file=sys.stderr)
        return
    pack = data.load_pack(args.pack or args.data_dir / "train-pack.npz")
    if pack.scenes.shape[1] < args.patch + 32:
        raise HypersrError(f"the training pack's scenes ({pack.scenes.shape[1]} px) are too small for --patch {args.patch}; give a smaller --patch")
    scenes = pack.scenes[np.random.default_rng(args.seed).choice(len(pack.scenes), min(args.scenes, len(pack.scenes)), replace=False)]
    t0 = time.time()
    print(window_oracle_table(window_oracle(args.preset or "quality-x2", scenes, patch=args.patch, seed=args.seed)))
    print(f"({time.time() - t0:.0f} s; {len(scenes)} scenes of the training pack, BI, Y-PSNR with the uncovered border cropped)",
          file=sys.stderr)


def cmd_bench_speed(args) -> None:
    import torch

    from ..engine import preset_registry
    from ..engine.backends import native_bf16
    from ..training import bench_speed, peers

    # where the cpu backend runs bf16, its fp32 beside it: the precision vs-mlrt's ORT runs
    backends = args.backend or ["cpu", *(["cpu-fp32"] if native_bf16() else []), *(["cuda"] if torch.cuda.is_available() else [])]
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
    if args.ablation:
        w, h = sizes[2][0] if sizes else (960, 540)
        for name in args.preset or ["vsrt-x2"]:
            rows = bench_speed.ablation(name, w, h, args.frames)
            print(f"{name}, its parts switched off: CPU time per {w}x{h} LR frame, as pass two runs it ({args.frames} frames after a warm-up)")
            print(bench_speed.ablation_table(rows))
        return
    unknown = sorted(set(args.peer or []) - set(peers.NAMES))
    if unknown:
        raise HypersrError(f"unknown peer {unknown[0]!r}; the peers are {', '.join(peers.NAMES)}")
    rows, peaks = bench_speed.bench(names, backends, args.frames, sizes,
                                    progress=lambda line: print(line, file=sys.stderr),
                                    peer_names=tuple(dict.fromkeys([*bench_speed.PEERS, *(args.peer or [])])))
    print(bench_speed.table(rows, peaks))
    from ..training.cards import hardware

    machine = hardware()
    if {"cuda", "trt"} & set(backends):
        machine += f"; GPU: {torch.cuda.get_device_name()}"
    print("measured peak: " + ", ".join(f"{b} {g:.0f} GFLOP/s" for b, g in peaks.items()) + f"; {machine}; torch {torch.__version__}")



def add_commands(sub) -> None:
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
    bq.add_argument("--tile", type=at_least(16), action="append",
                    help="also score each preset in tiles of this many LR pixels (repeatable): what the seams cost")
    bq.add_argument("--fp32", action="store_true",
                    help="also score, in fp32, each preset that the cpu backend runs partly in bf16 on this CPU: what bf16 costs")
    bq.add_argument("--self-ensemble", action="store_true",
                    help="also score each preset's geometric self-ensemble (8 flips and turns averaged: 8 times the time)")
    bq.set_defaults(func=cmd_bench_quality)

    br = bench.add_parser("runs", help="finished training runs (architecture experiments, ablations) on the whole validation clips")
    br.add_argument("runs", nargs="+", type=Path, help="run directories of `hypersr train base --out DIR`")
    br.add_argument("--clips", nargs="+", help="validation clips (default: bigbuckbunny bikes)")
    br.add_argument("--preset", action="append", help="a preset to score beside the runs (repeatable), e.g. the one they started from")
    br.add_argument("--degradation", choices=["bi", "real", "chains"], default="bi",
                    help="bi; real: the training validation's chains (bi, h264-crf33, mpeg2-q8, blur-noise); chains: bench real's nine "
                         "(default %(default)s)")
    br.add_argument("--frames", type=at_least(3), help="the first frames of each clip (default all)")
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

    bn = bench.add_parser("never-worse", help="memory against base on every chain x validation clip, for each preset with a hypernet")
    bn.add_argument("--preset", action="append", help="preset (repeatable; default every preset with a hypernet)")
    bn.add_argument("--frames", type=at_least(1), default=8, help="frames per clip (default %(default)s, as the test)")
    bn.add_argument("--clips", nargs="+", help="validation clips (default: bigbuckbunny bikes)")
    bn.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    bn.add_argument("--update-card", action="store_true", help="record the gains in each preset's model card")
    bn.set_defaults(func=cmd_bench_never_worse)

    bb = bench.add_parser("bank", help="per-family LoRAs for a real-source preset, chosen by analysis by synthesis: would they help?")
    bb.add_argument("--preset", default="real-x2")
    bb.add_argument("--steps", type=at_least(1), default=300, help="fitting steps per family (default %(default)s)")
    bb.add_argument("--train-clips", type=at_least(8), default=384, help="training clips per family (default %(default)s)")
    bb.add_argument("--frames", type=at_least(1), default=8, help="frames per validation clip (default %(default)s)")
    bb.add_argument("--refine", type=at_least(1), metavar="STEPS",
                    help="instead of the twins: refine on the clip's own frames degraded by BI, by the chain's family or by the chain itself")
    bb.add_argument("--clips", nargs="+", help="validation clips (default: bigbuckbunny bikes)")
    bb.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    bb.set_defaults(func=cmd_bench_bank)

    bk = bench.add_parser("kdsr", help="a degradation code from a teacher that sees HR, distilled into the LR-only hypernet: "
                          "would it make a real-source preset's memory gain?")
    bk.add_argument("--preset", default="real-x2")
    bk.add_argument("--steps", type=at_least(1), default=300, help="training steps of each hypernet (default %(default)s)")
    bk.add_argument("--kd-weight", type=positive_number, default=0.1, help="the distillation term's weight (default %(default)s: "
                    "the codes' squared distance is ~0.1-1 where the HR loss is ~0.02)")
    bk.add_argument("--lr", type=positive_number, help="step size of every run (default: the preset's hypernet recipe's)")
    bk.add_argument("--teacher-only", action="store_true", help="train and score the teacher alone: the most distillation could give")
    bk.add_argument("--out", type=Path, default=Path("runs/kdsr"), help="the runs' folder; the same command resumes (default %(default)s)")
    bk.add_argument("--max-minutes", type=positive_minutes, help="stop each run after this long, checkpointed (run again to go on)")
    bk.add_argument("--frames", type=at_least(1), default=8, help="frames per validation clip (default %(default)s)")
    bk.add_argument("--val-every", type=at_least(1), default=4, help="every Nth frame of the pack's validation while training (default %(default)s)")
    bk.add_argument("--clips", nargs="+", help="validation clips (default: bigbuckbunny bikes)")
    bk.add_argument("--pack", type=Path, help="training pack (default DATA_DIR/train-pack.npz)")
    bk.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    bk.set_defaults(func=cmd_bench_kdsr)

    bw = bench.add_parser("window", help="what the neighbouring frames know, with perfect alignment: "
                          "exact pans, each frame upscaled alone, aligned, averaged; --real: on real sources, a still pixel's neighbours")
    bw.add_argument("--preset", help="the single-frame network that upscales each frame (default quality-x2; real-x2 with --real)")
    bw.add_argument("--real", action="store_true", help="instead: the validation clips through bench real's chains, each frame averaged "
                    "with its neighbours where they differ by less than k times the clip's noise, then upscaled")
    bw.add_argument("--chain", action="append", help="with --real: a chain (repeatable; default all of bench real's)")
    bw.add_argument("--clips", nargs="+", help="with --real: validation clips (default both)")
    bw.add_argument("--frames", type=at_least(3), default=10, help="with --real: the first frames of each clip (default %(default)s)")
    bw.add_argument("--scenes", type=at_least(1), default=96, help="scenes of the training pack (default %(default)s)")
    bw.add_argument("--patch", type=at_least(32), default=128, help="HR side of each filmed window (default %(default)s)")
    bw.add_argument("--seed", type=int, default=5)
    bw.add_argument("--pack", type=Path, help="training pack (default DATA_DIR/train-pack.npz)")
    bw.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    bw.set_defaults(func=cmd_bench_window)

    bs = bench.add_parser("speed", help="pass two's fps per preset, backend and size, next to vs-mlrt's ORT CPU plugin and the peers")
    bs.add_argument("--preset", action="append", help="preset (repeatable; default every preset)")
    bs.add_argument("--backend", action="append", choices=["cpu", "cpu-fp32", "cuda", "trt"],
                    help="repeatable; default cpu (bf16 where the CPU has it, with a cpu-fp32 row beside it), and cuda when there is a GPU")
    bs.add_argument("--frames", type=at_least(1), default=3, help="timed frames per row, after one warm-up frame (default 3)")
    bs.add_argument("--size", help="one LR size WxH instead of the standard ones (quick checks)")
    bs.add_argument("--peer", action="append", help="also time this peer (lanczos and nnedi3 are timed anyway; liif: minutes a frame on a CPU)")
    bs.add_argument("--ablation", action="store_true", help="instead: a vsrt preset's network with each of its parts switched off "
                    "(timing only; default preset vsrt-x2, size 960x540)")
    bs.set_defaults(func=cmd_bench_speed)

