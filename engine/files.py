"""Files: outputs that never destroy an input, written atomically, and content hashes.

Every command that writes calls `check_output` first (before any long work), then writes through
`atomic_write`. Identity is the device and inode, not the spelling: `in.y4m`, `./in.y4m`, a symlink and
a hard link to it are all the same file. `-` is stdin as an input and stdout as an output.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
import threading
from pathlib import Path

from .errors import HypersrError

# Set by the `hypersr` command's SIGINT/SIGTERM handler. Python delivers the KeyboardInterrupt only when
# the main thread next runs Python code, and a library may swallow it there; the flag cannot be lost, and
# no output is completed once it is set (e.g. a LoRA of a stream cut short by Ctrl-C upstream).
INTERRUPTED = threading.Event()


def _stat(path: str | os.PathLike, dash_fd: int) -> os.stat_result | None:
    try:
        return os.fstat(dash_fd) if str(path) == "-" else os.stat(path)
    except OSError:
        return None


def check_output(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> None:
    """Refuse, before any work, an output that cannot be written or that is the same file as one of the
    inputs (None entries are skipped)."""
    refuse_same_file(output, *inputs)
    if str(output) != "-":
        check_writable(output)


def refuse_same_file(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> None:
    """Refuse an output that is the same file as one of the inputs. Only regular files count: a pipe or
    a terminal on both sides is not a file that could be destroyed."""
    out = _stat(output, 1)
    if out is not None and stat.S_ISREG(out.st_mode):
        for source in inputs:
            if source is None:
                continue
            s = _stat(source, 0)
            if s is not None and stat.S_ISREG(s.st_mode) and (s.st_dev, s.st_ino) == (out.st_dev, out.st_ino):
                shown = "stdout" if str(output) == "-" else str(output)
                raise HypersrError(f"output {shown} is the same file as the input {'stdin' if str(source) == '-' else source}; "
                                   "write to another file (hypersr never overwrites its input)")


def check_writable(path: str | os.PathLike) -> None:
    """Fail before a long job rather than after it: an existing file that is not a regular file (a device,
    a FIFO) must be writable itself; otherwise its folder must exist and be writable."""
    path = Path(path)
    if path.is_dir():
        raise HypersrError(f"cannot write {path}: it is a folder; give a file name")
    if path.exists() and not path.is_file():
        if not os.access(path, os.W_OK):
            raise HypersrError(f"cannot write {path}: permission denied")
        return
    folder = Path(os.path.realpath(path)).parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise HypersrError(f"cannot write {path}: {folder} is not a writable folder; choose a writable location")


def write_error(path: str | os.PathLike, e: OSError) -> HypersrError:
    """An OSError met while writing `path`, as the one line a user sees."""
    where = "stdout" if str(path) == "-" else str(path)
    if e.errno == errno.ENOSPC:
        return HypersrError(f"cannot write {where}: no space left on the device; free some space or write elsewhere")
    return HypersrError(f"cannot write {where}: {e.strerror or e}")


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path), then rename onto `path`: readers never see a half-written file, and nothing
    is completed after an interrupt. A symlink is written through (its target is replaced). An existing
    output that is not a regular file (/dev/null, a FIFO, a device) is written directly: renaming onto it
    would replace the device node itself."""
    path = Path(os.path.realpath(path))
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        try:
            write(str(path))
        except OSError as e:
            raise write_error(path, e) from None
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise HypersrError(f"cannot write {path}: {e.strerror}; choose a writable location") from None
    os.close(fd)
    if mode is None:  # mkstemp makes 0600; a new result should look like any new file
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        os.chmod(tmp, stat.S_IMODE(mode))  # a replaced file keeps its permissions
        write(tmp)
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def readable_file(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """`path` as an existing, readable regular file, or a one-line error naming what is wrong with it."""
    path = Path(path)
    hint = f"; {hint}" if hint else ""
    try:
        with open(path, "rb"):
            pass
    except IsADirectoryError:
        raise HypersrError(f"{what} {path} is a folder, not a file{hint}") from None
    except FileNotFoundError:
        raise HypersrError(f"{what} {path} does not exist{hint}") from None
    except OSError as e:
        raise HypersrError(f"cannot read {what} {path}: {e.strerror}") from None
    if path.is_dir():  # opening a folder read-only succeeds on some systems
        raise HypersrError(f"{what} {path} is a folder, not a file{hint}")
    return path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
