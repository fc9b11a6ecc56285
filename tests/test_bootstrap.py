"""`make test` / `make demo` start with bootstrap.sh: it must say what it needs when no Python >= 3.12 exists."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_suitable_python_gives_a_clear_message(tmp_path):
    shutil.copy(ROOT / "bootstrap.sh", tmp_path / "bootstrap.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    old = bin_dir / "python3"  # an old interpreter on PATH must be passed over, not used
    old.write_text("#!/bin/sh\nif [ \"$1\" = -c ]; then exit 1; fi\necho 'Python 3.8.0'\n")
    old.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYENV_ROOT": str(tmp_path / "no-pyenv"), "HOME": str(tmp_path)}
    tools = {t: shutil.which(t) for t in ("bash", "ls", "sort", "dirname")}
    for name, path in tools.items():
        (bin_dir / name).symlink_to(path)
    env["PATH"] = str(bin_dir)  # nothing else: no system python3, no pyenv
    proc = subprocess.run(["bash", str(tmp_path / "bootstrap.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Python >= 3.12" in proc.stderr and "pyenv install 3.12" in proc.stderr
    assert not (tmp_path / ".venv").exists()
