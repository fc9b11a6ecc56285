"""`hypersr export`: the network (LoRA merged) for FFmpeg's dnn_processing (TorchScript) or vs-mlrt (ONNX)."""

from __future__ import annotations

import sys


def cmd_export(args) -> None:
    from ..engine import export

    if args.format == "onnx":
        export.export_onnx(args.output, args.preset, args.lora)
    else:
        export.export_torchscript(args.output, args.preset, args.lora, single=args.single)
    print(f"wrote {args.output}", file=sys.stderr)



def add_commands(sub) -> None:
    ex = sub.add_parser("export", help="write the network (LoRA merged) for FFmpeg's dnn_processing or vs-mlrt")
    ex.add_argument("format", choices=["torchscript", "onnx"])
    ex.add_argument("-o", "--output", required=True)
    ex.add_argument("--preset", default=None, help="default: fast-x2")
    ex.add_argument("--lora", help="LoRA file to merge in")
    ex.add_argument("--single", action="store_true", help="torchscript: each frame alone instead of the causal window")
    ex.set_defaults(func=cmd_export)

