"""`hypersr upscale` and `hypersr analyse`: the two passes over a y4m stream or a video file."""

from __future__ import annotations

import argparse
import sys
import time

from ..engine.errors import HypersrError
from .options import at_least

MATRICES = {"709": 1, "601": 6, "2020": 9, None: None}


def run_upscale(input_path: str, output_path: str, preset: str | None, lora: str | None, backend, matrix: int | None = None,
                progress: bool = True) -> int:
    """Pass two from a file or stdin to a y4m file or stdout. Returns the number of frames written."""
    from ..engine import preset_registry
    from ..engine.files import atomic_write, check_output, write_error
    from ..ffmpeg_filter.sink import write_y4m
    from ..ffmpeg_filter.source import open_input, upscale_source

    preset = preset_registry.get(preset)
    check_output(output_path, input_path, lora, *preset.files())
    source = open_input(input_path, matrix)
    if source.header.interlace in ("t", "b") and progress:
        print("hypersr: note: the input is interlaced; hypersr upscales whole frames, so deinterlace first for best results", file=sys.stderr)
    out = upscale_source(source, preset, lora, backend)
    if output_path == "-":
        try:
            written = write_y4m(out, source.header, sys.stdout.buffer, source.total, progress)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise write_error("-", e) from None
    else:
        result = {}

        def write_file(tmp: str) -> None:
            with open(tmp, "wb") as f:
                result["n"] = write_y4m(out, source.header, f, source.total, progress)

        atomic_write(output_path, write_file)
        written = result["n"]
    if source.truncated:  # the complete frames are written; the input's end is not
        raise HypersrError(source.truncated)
    return written


def run_analyse(input_path: str, output_path: str, preset: str | None, refine: int, device: str | None,
                matrix: int | None = None, progress: bool = True, source_kind: str | None = None):
    """Pass one over a whole file or stdin, then the LoRA file (atomically)."""
    from ..engine import preset_registry
    from ..engine.analyse import checked_refine, checked_source_kind
    from ..engine.files import INTERRUPTED, check_output
    from ..engine.lora import save_lora
    from ..ffmpeg_filter.source import analyse_source, open_input

    if output_path == "-":
        raise HypersrError("a LoRA is a file, not a stream: give -o a file name (e.g. -o clip.lora)")
    preset = preset_registry.get(preset)
    checked_source_kind(preset, checked_refine(preset, refine), source_kind)  # before the input is opened
    check_output(output_path, input_path, *preset.files())
    lora = analyse_source(open_input(input_path, matrix), preset, refine, device, progress, source_kind=source_kind)
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt  # the input may have ended because the interrupt reached ffmpeg upstream too
    save_lora(lora, output_path)
    return lora


def cmd_upscale(args) -> None:
    from ..engine.backends import backend_from_names

    backend = backend_from_names(args.backend, args.device, bf16=args.bf16)
    n = run_upscale(args.input, args.output, args.preset, args.lora, backend, MATRICES[args.matrix], progress=not args.quiet)
    if not args.quiet:
        print(f"hypersr: wrote {n} frames to {'stdout' if args.output == '-' else args.output}", file=sys.stderr)


def cmd_analyse(args) -> None:
    t0 = time.time()
    lora = run_analyse(args.input, args.output, args.preset, args.refine, args.device, MATRICES[args.matrix], progress=not args.quiet,
                       source_kind=args.source_kind)
    if not args.quiet:
        share = lora.made_by.get("clean_share")
        looks = "" if share is None else f"; clean blend {share:.2f} (0: upscaled as degraded, 1: as clean)"
        print(f"hypersr: analysed {lora.made_by['frames']} frames in {time.time() - t0:.1f} s{looks}; wrote {args.output} "
              f"(use it with `hypersr upscale --lora {args.output}`)", file=sys.stderr)


def add_commands(sub) -> None:
    up = sub.add_parser("upscale", help="upscale a video (y4m in and out, or a video file in)")
    up.add_argument("input", help="y4m file, - for y4m on stdin, or any video file bestsource can open")
    up.add_argument("-o", "--output", required=True, help="y4m file, or - for stdout")
    up.add_argument("--preset", default=None, help="default: fast-x2")
    up.add_argument("--lora", help="LoRA file for this clip, from `hypersr analyse`")
    up.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    up.add_argument("--backend", choices=["auto", "cpu", "cuda", "trt"], default="auto",
                    help="cpu: PyTorch fp32 (see --bf16); cuda: PyTorch fp16; trt: Torch-TensorRT, needs the [trt] extra "
                         "(default auto: cuda when available)")
    up.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="cpu backend: run the quality and real presets' blocks in bf16, about 1.6x as fast for -0.01 dB "
                         "(default: on where the CPU has bf16 instructions, AVX512-BF16 or AMX)")
    up.add_argument("--matrix", choices=["709", "601", "2020"], help="YUV matrix when the input does not say (default: 709 for HD, 601 for SD)")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    up.set_defaults(func=cmd_upscale)

    an = sub.add_parser("analyse", help="pass one: read a whole clip and write its LoRA (the clip's medium-term memory)")
    an.add_argument("input", help="y4m file, - for y4m on stdin, or any video file bestsource can open")
    an.add_argument("-o", "--output", required=True, help="LoRA file to write (e.g. clip.lora)")
    an.add_argument("--preset", default=None, help="default: fast-x2")
    an.add_argument("--refine", type=at_least(0), default=0, metavar="N",
                    help="N steps of self-supervised test-time training of the predicted LoRA on the clip itself (default 0)")
    an.add_argument("--source-kind",
                    help="what the source went through, for --refine on a real-source preset (real-x2): clean (a clean downscale), "
                         "h264 / mpeg2 / mjpeg (the codec that made it), aliased (point / nearest-neighbour resized), "
                         "blur-noise (blurred or noisy, no codec)")
    an.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    an.add_argument("--matrix", choices=["709", "601", "2020"], help="YUV matrix when the input does not say (default: 709 for HD, 601 for SD)")
    an.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    an.set_defaults(func=cmd_analyse)

