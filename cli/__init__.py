"""The `hypersr` command: analyse, upscale, batch, export, demo, data, train, bench. One module per command
group, each adding its subcommands and calling the library; errors print one line and exit non-zero."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from ..engine.errors import HypersrError
from ..engine.files import INTERRUPTED  # here, not in the handler: a signal landing while engine.files is half-imported made that an ImportError
from . import batch, bench, data, demo, export, passes, train


class _Parser(argparse.ArgumentParser):
    """argparse with every refusal as the one `hypersr: error:` line the rest of the CLI prints (its subcommands
    inherit the class), pointing at the subcommand's --help instead of printing the whole usage."""

    def error(self, message: str):
        self.exit(2, f"hypersr: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hypersr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (passes, batch, export, bench, demo, data, train):
        group.add_commands(sub)
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
    INTERRUPTED.set()
    if not _hold_interrupts:
        raise KeyboardInterrupt


def _import_extensions() -> None:
    """Import torch and VapourSynth with the interrupt held back: a KeyboardInterrupt raised while their
    C extensions initialise aborts the interpreter (SIGABRT, a stack dump, no clean-up), seen about once in
    20 Ctrl-Cs during start-up. The interrupt is delivered as soon as they are in."""
    global _hold_interrupts
    _hold_interrupts = True
    try:
        import torch  # noqa: F401
        import vapoursynth  # noqa: F401
    finally:
        _hold_interrupts = False
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


def main(argv: list[str] | None = None, interrupted_while_starting: bool = False) -> int:
    """The command. Ctrl-C or SIGTERM at any moment ends with `hypersr: interrupted` and exit 130, leaving no
    output behind; the handlers come first, as importing torch takes seconds (the console script, in
    __main__.py, holds a signal that lands before this, and says so in `interrupted_while_starting`)."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    sys.stderr = _Stderr(sys.stderr)
    code = 0
    try:
        if interrupted_while_starting:
            INTERRUPTED.set()
            raise KeyboardInterrupt
        args = build_parser().parse_args(argv)
        _import_extensions()
        if args.command in ("upscale", "analyse", "batch", "demo", "bench"):
            from ..engine.runtime import keep_large_buffers

            keep_large_buffers()
        if args.command in ("bench", "train", "data"):
            from ..training import require_extras

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


