"""The console script (`hypersr`, and `python -m hypersr`). Its first act, on import, is to hold Ctrl-C and
SIGTERM back while the command's modules import: a signal landing then (the first tenth of a second on a
busy machine) must end as cleanly as one landing later, with `hypersr: interrupted` and exit 130."""

import signal
import sys

_held: list[int] = []
for _signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signum, lambda number, frame: _held.append(number))


def main() -> int:
    from .cli import main as run_command

    return run_command(interrupted_while_starting=bool(_held))


if __name__ == "__main__":
    sys.exit(main())
