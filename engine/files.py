"""Files written atomically (temp file + rename) and content hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

from .errors import HypersrError


# Set by the `hypersr` command's SIGINT/SIGTERM handler. Python delivers the KeyboardInterrupt only when
# the main thread next runs Python code, and a library may swallow it there; the flag cannot be lost, and
# no output is completed once it is set (e.g. a LoRA of a stream cut short by Ctrl-C upstream).
INTERRUPTED = threading.Event()


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path), then rename onto `path`: readers never see a half-written file, and nothing
    is completed after an interrupt."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise HypersrError(f"cannot write {path}: {e.strerror}; choose a writable location") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any new file
        write(tmp)
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



def check_writable(path: str | os.PathLike) -> None:
    """Fail before a long job rather than after it: the folder of `path` must exist and be writable."""
    folder = Path(path).parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise HypersrError(f"cannot write {path}: {folder} is not a writable folder; choose a writable location")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
