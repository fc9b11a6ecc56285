"""`hypersr train base | hypernet | blend`: train a preset's network, its hypernet, a real-source preset's
clean blend; --install puts the result into presets/ (training/cards.py writes the card)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..engine.errors import HypersrError
from .options import at_least, check_training_side, positive_number, training_parser, with_overrides


def cmd_train_base(args) -> None:
    from ..engine import preset_registry
    from ..engine.backends import resolve_device
    from ..engine.files import sha256_file
    from ..engine.networks import backbone_of, build_model, one_frame_of
    from ..training.train import init_network, train_base

    args.device = str(resolve_device(args.device))  # a bad one is one line, before any work
    preset = preset_registry.get(args.preset)
    hp = preset.card.hyperparameters
    given = [key for key in ("steps", "batch", "patch", "lr", "seed", "val_every", "init", "trainable", "bank", "clip_grad")
             if getattr(args, key) is not None]
    hp.update({key: getattr(args, key) for key in given})
    if args.init is not None and not args.init.strip():
        raise HypersrError("--init is empty: give a preset's name or a finished run's folder")
    if args.bf16 is not None:
        hp["bf16"] = args.bf16
    if "all" in (hp.get("trainable") or []):  # what the card says, undone (a recipe's earlier stage)
        if len(hp["trainable"]) > 1:
            raise HypersrError("--trainable all trains every weight: give it alone, or only the prefixes to train")
        del hp["trainable"]
    if hp.get("clip_grad") == 0:  # --no-clip-grad
        del hp["clip_grad"]
    from_card = {k: hp[k] for k in ("init", "trainable", "lr", "steps", "clip_grad") if k in hp and k not in given}
    if hp.get("bf16") and args.bf16 is None:
        from_card["bf16"] = "on"
    shown = ", ".join(f"{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in from_card.items())
    note = f"train base {preset.name}, from its card: {shown} (the options override them)" if from_card else None
    if hp.get("bf16") and args.device == "cpu":
        from ..engine.backends import native_bf16

        if not native_bf16():
            raise HypersrError("bf16 training: this CPU has no bf16 instructions (AVX512-BF16 or AMX), where it is slower than fp32; "
                               "add --no-bf16")
    check_training_side("--patch", hp["patch"], preset)
    arch = with_overrides(preset.card.architecture.as_dict(), args.arch)
    if arch.get("window", 1) == 1:
        arch = one_frame_of(arch) or arch  # one frame has no fusion: `--arch window=1` trains the window's first stage
    try:
        build_model(arch)  # a wrong --arch is one line, before the run folder is made
    except (ValueError, TypeError) as e:
        raise HypersrError(f"--arch: hypersr cannot build {arch} ({e})") from None
    out = args.out = Path(args.out or f"runs/{preset.name}")
    if init := hp.get("init"):
        if "init" not in given and "/" in init and not Path(init).is_dir():  # the card's earlier stage, not made here yet
            records = [r for r in preset.card.training.values() if isinstance(r, dict)]
            stage = next((r["command"] for r in records if f"--out {init}" in r.get("command", "")), None)
            raise HypersrError(f"{preset.name}'s card starts from the run {init}, which is not here: "
                               + (f"make it first with `{stage}`" if stage else "give --init"))
        if Path(init).resolve() == out.resolve():
            raise HypersrError(f"--init {init} is the run folder this run would write (--out {out}): give another --out")
        if init_network(init)[0] not in (arch, backbone_of(arch), one_frame_of(arch)):
            raise HypersrError(f"--init {init}: its network is neither {preset.name}'s, nor its backbone, nor the same network one frame at a time "
                               f"({'with --arch' if args.arch else 'another architecture'}); start from a preset or run with the same architecture")
    t0 = time.time()
    if args.install and arch != preset.card.architecture.as_dict():
        raise HypersrError("--install with --arch would make the card lie; change the card's architecture instead")
    weights = train_base(arch, preset.name, args.data_dir, out, args.pack,  # note: a card's defaults may be a recipe's later stage
                         preset.card.degradation, device=args.device, max_minutes=args.max_minutes, note=note, **hp)
    if args.install:
        from ..training import cards

        pack = args.pack or args.data_dir / "train-pack.npz"
        data = cards.PACK_DATA + (cards.REAL_WINDOWS.format(bank=hp.get("bank", 4096)) if preset.card.is_real_source else "")
        if hp.get("init") and hp["init"] not in preset_registry.available():  # a run folder, a recipe's earlier stage: its weights
            run = Path(hp["init"])
            data += f"; started from the run {hp['init']} (weights sha256 {sha256_file(next(run.glob('*.safetensors')))[:16]})"
        cards.install_weights(preset, weights, cards.training_record(args.device, hp, pack, t0, data, out))
        print(f"installed {weights} as preset {preset.name}", file=sys.stderr)


def cmd_train_hypernet(args) -> None:
    from ..engine import preset_registry
    from ..engine.backends import resolve_device
    from ..engine.files import readable_file, sha256_file
    from ..training.train import AUX_WEIGHT, HYPERNET_ARCH, HYPERNET_HYPERPARAMETERS, train_hypernet

    args.device = str(resolve_device(args.device))  # a bad one is one line, before any work
    preset = preset_registry.get(args.preset)
    section = preset.card.hypernet
    hp = {**HYPERNET_HYPERPARAMETERS, "size": 64 * preset.scale, **(section.training.get("hyperparameters", {}) if section else {})}
    hp.pop("init", None)  # where the installed hypernet started is its history, not a default for the next run
    for key in ("steps", "lr", "seed", "size"):
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)
    check_training_side("--size", hp["size"], preset)
    arch = with_overrides(section.architecture if section else HYPERNET_ARCH, args.arch)
    pack = args.pack or args.data_dir / "train-pack.npz"
    if args.init:
        readable_file(args.init, "--init hypernet")
    degradation = preset.card.degradation
    t0 = time.time()
    out = args.out = Path(args.out or f"runs/{preset.name}-hypernet")
    weights = train_hypernet(preset, arch, out, pack, degradation, device=args.device, init=args.init, max_minutes=args.max_minutes, **hp)
    if args.install:
        from ..training import cards

        data = cards.HYPERNET_DATA + (cards.REAL_CLIPS.format(aux=AUX_WEIGHT) if preset.card.is_real_source else "")
        if args.init:
            data += f"; started from the hypernet {args.init.name} (sha256 {sha256_file(args.init)[:16]}), new inputs at zero"
        hp = {**hp, "init": args.init.name} if args.init else hp
        cards.install_hypernet(preset, weights, arch, cards.training_record(args.device, hp, pack, t0, data, out))
        print(f"installed {weights} as the hypernet of preset {preset.name}", file=sys.stderr)


def cmd_train_blend(args) -> None:
    from safetensors.torch import save_file

    from ..engine import preset_registry
    from ..engine.backends import resolve_device
    from ..engine.files import atomic_write
    from ..training.blend import fit_blend

    args.device = str(resolve_device(args.device))  # a bad one is one line, before any work
    preset = preset_registry.get(args.preset)
    twin = args.clean or preset.card.clean_twin
    if twin is None and preset.card.is_real_source:
        raise HypersrError(f"preset {preset.name}'s card names no clean twin; give --clean PRESET (the same network trained on clean input)")
    clean = preset_registry.get(twin or preset.name)  # a clean preset's own name: fit_blend says why it takes no blend
    if not preset.card.has_hypernet:
        raise HypersrError(f"preset {preset.name} has no trained hypernet to add a clean blend to; "
                           f"`hypersr train hypernet --preset {preset.name}` first")
    if args.clips < 20:
        raise HypersrError(f"--clips {args.clips} is too few to fit and check a blend on; give 20 or more (default 600)")
    if args.size % preset.scale or args.size < 32 * preset.scale:
        raise HypersrError(f"--size {args.size}: give a multiple of {preset.scale} (the scale) of at least {32 * preset.scale}")
    pack = args.pack or args.data_dir / "train-pack.npz"
    out = Path(args.out or f"runs/{preset.name}-blend")
    nearest = next(p for p in (out, *out.parents) if p.exists())  # fail before the fit, not after it
    if not nearest.is_dir() or not os.access(nearest, os.W_OK):
        raise HypersrError(f"cannot make the run folder {out}: {nearest} is not a writable folder; give another --out")
    setting = {"base_sha256": preset.sha256, "hypernet": learnt_digest(preset), "clips": str(args.clips),
               "frames": str(args.frames), "size": str(args.size), "seed": str(args.seed)}
    measured, measuring_run = read_measured(args.measured, setting) if args.measured else (None, None)
    t0 = time.time()
    hypernet, arch, report, measured = fit_blend(preset, clean, pack, args.clips, args.frames, args.size, seed=args.seed,
                                                 device=args.device, measured=measured)
    out.mkdir(parents=True, exist_ok=True)
    x, table, is_clean = measured  # kept so that a change of the fit needs no new measurement (--measured)
    if measuring_run is None:
        from ..training import cards

        measuring_run = {"command": cards.command(), "wall_time_s": str(round(time.time() - t0)), "hardware": cards.hardware()}
        atomic_write(out / "measured.safetensors", lambda tmp: save_file({"features": x, "y_psnr": table, "clean": is_clean}, str(tmp),
                                                                         metadata={**setting, **measuring_run}))
    weights = out / f"{preset.name}.hypernet.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in hypernet.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, str(tmp)))
    atomic_write(out / "blend.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1) + "\n"))
    print(json.dumps(report, indent=1))
    if args.install:
        from ..training import cards

        record = {"clean_preset": clean.name, "clean_sha256": clean.sha256, "base_sha256": preset.sha256, **report,
                  **cards.training_record(args.device, {}, pack, t0, "")}
        for key in ("hyperparameters", "data"):
            record.pop(key)
        if args.measured:  # the fit alone was timed: say what the measurement it reused took
            record["measured_by"] = {**measuring_run, "wall_time_s": int(measuring_run["wall_time_s"])}
        cards.install_hypernet(preset, weights, arch, preset.card.hypernet.training, {"blend": record})
        print(f"installed {weights} (with the clean blend toward {clean.name}) as the hypernet of preset {preset.name}", file=sys.stderr)


def learnt_digest(preset) -> str:
    """SHA-256 of the installed hypernet's tensors outside its clean blend: what the blend's measurements depend on."""
    import hashlib

    from safetensors.torch import load_file

    from ..engine import preset_registry

    state = load_file(str(preset_registry.presets_dir() / preset.card.hypernet.weights.file))
    h = hashlib.sha256()
    for k in sorted(k for k in state if not k.startswith("blend.")):
        h.update(k.encode() + state[k].numpy().tobytes())
    return h.hexdigest()


def read_measured(path: Path, setting: dict) -> tuple:
    """The measurements of an earlier `train blend` run, if they were made for the same preset and setting,
    and how that run was made (command, wall time, hardware)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            measured = tuple(f.get_tensor(k) for k in ("features", "y_psnr", "clean"))
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:  # a missing, truncated or foreign file: one line
        raise HypersrError(f"--measured {path}: not the measured.safetensors of a `hypersr train blend` run ({e})") from None
    differ = [k for k, v in setting.items() if meta.get(k) != v]
    if differ:
        raise HypersrError(f"--measured {path} was made with another " + ", ".join(differ) +
                           " (" + ", ".join(f"{k} {meta.get(k)}" for k in differ) + "); give the same options or measure again")
    return measured, {k: meta.get(k, "") for k in ("command", "wall_time_s", "hardware")}


def add_commands(sub) -> None:
    train = sub.add_parser("train", help="train models").add_subparsers(dest="what", required=True)
    tb = training_parser(train, "base", "train a base preset's network", "runs/PRESET")
    tb.add_argument("--arch", action="append", metavar="KEY=VALUE", help="override an architecture field (experiments)")
    tb.add_argument("--init", metavar="PRESET|RUN", help="start from this preset's weights, or a finished run's (--out of an earlier stage): "
                    "the same architecture, its backbone, or it one frame at a time")
    tb.add_argument("--trainable", action="append", metavar="PREFIX",
                    help="train only the parameters whose names start so (repeatable, e.g. --trainable fuse); the rest stay as --init made them; "
                         "all: every parameter, whatever the card says")
    tb.add_argument("--steps", type=at_least(1))
    tb.add_argument("--batch", type=at_least(1))
    tb.add_argument("--patch", type=at_least(1),
                    help="HR side of the training windows: a multiple of the scale, at least the preset's minimum frame size times it")
    tb.add_argument("--lr", type=float)
    tb.add_argument("--seed", type=int)
    tb.add_argument("--bank", type=at_least(16), help="real-source presets: degraded training windows made at the start (default: the card's)")
    tb.add_argument("--val-every", type=at_least(1), help="steps between validations and checkpoints (default 250)")
    tb.add_argument("--clip-grad", type=positive_number, metavar="NORM",
                    help="clip the gradients' norm to this (a long real-source run diverged without it at lr 1e-4; default: the card's, else none)")
    tb.add_argument("--no-clip-grad", dest="clip_grad", action="store_const", const=0.0, help="do not clip, whatever the card says")
    tb.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="mixed precision: the forward in bf16 (weights and optimiser fp32); on a CPU with bf16 instructions, "
                         "about 1.8x the steps (default: the card's)")
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
    tl.add_argument("--clean", metavar="PRESET", help="the same network trained on clean input (default: the card's clean_twin)")
    tl.add_argument("--clips", type=int, default=600, help="sampled training clips to fit on (default %(default)s)")
    tl.add_argument("--measured", type=Path, metavar="FILE",
                    help="refit on the measurements of an earlier run (its measured.safetensors) instead of measuring again")
    tl.add_argument("--frames", type=at_least(1), default=4, help="frames per sampled clip (default %(default)s)")
    tl.add_argument("--size", type=int, default=128, help="HR side of the sampled clips (default %(default)s)")
    tl.add_argument("--seed", type=int, default=0)
    tl.add_argument("--install", action="store_true", help="copy the hypernet into presets/ and record the blend in the card")
    tl.set_defaults(func=cmd_train_blend)
