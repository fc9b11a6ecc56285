"""Which ffmpeg executable to run: the one the user names, else the system's, else imageio-ffmpeg's.

`hypersr upscale` and `analyse` read video files without ffmpeg (through bestsource); `batch` encodes
with an ffmpeg process. The imageio-ffmpeg wheel (`pip install 'hypersr[ffmpeg]'`) carries a static
ffmpeg binary, for machines where no system ffmpeg can be installed.
"""

from __future__ import annotations

import os
import shutil

from ..engine.errors import HypersrError

INSTALL_HINT = "install one (apt-get install ffmpeg, or pip install 'hypersr[ffmpeg]'), or name it with --ffmpeg PATH"


def ffmpeg_executable(name: str | None = None) -> str:
    """The path of the ffmpeg to run, or a one-line error saying how to get one."""
    if name:
        found = shutil.which(name)
        if found is None:
            raise HypersrError(f"ffmpeg {name!r} was not found or is not executable; {INSTALL_HINT}")
        return os.path.abspath(found)
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        raise HypersrError(f"this needs ffmpeg, and none is on PATH; {INSTALL_HINT}") from None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as e:
        raise HypersrError(f"imageio-ffmpeg has no usable ffmpeg ({e}); {INSTALL_HINT}") from None
