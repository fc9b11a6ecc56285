"""Training, data, evaluation, benchmarks and the demo: the work that makes presets and measures them.

This package may import the runtime (hypersr.engine) and the integrations (vsplugin, ffmpeg_filter);
nothing outside it imports it except the `hypersr` command. Its extra dependencies come with
`pip install 'hypersr[train]'` (the demo needs none of them)."""

from __future__ import annotations

import importlib.util

from ..engine.errors import HypersrError

# the plots of `bench quality`; the ONNX export that `bench speed` gives vs-mlrt; the real encoders of the
# real-source degradations (training/degradation.py: `train base` for real-x2, `bench real`, `bench bank`)
EXTRAS = ("matplotlib", "onnx", "av")


def require_extras(command: str) -> None:
    """A one-line error naming what to install when the training extras are missing."""
    missing = [m for m in EXTRAS if importlib.util.find_spec(m) is None]
    if missing:
        raise HypersrError(f"`hypersr {command}` needs {', '.join(missing)}: pip install 'hypersr[train]'")
