#!/usr/bin/env bash
# Set up .venv for hypersr: find a Python >= 3.12 (PATH first, then pyenv's installed versions),
# create the virtual environment and install hypersr editable with its [dev] extra.
set -euo pipefail
cd "$(dirname "$0")"

usable() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

find_python() {
  local c p root
  for c in "${HYPERSR_PYTHON:-}" python3.12 python3.13 python3.14 python3 python; do
    [ -n "$c" ] || continue
    p=$(command -v "$c" 2>/dev/null) || continue
    usable "$p" && { echo "$p"; return 0; }  # pyenv shims of unselected versions fail here and are skipped
  done
  root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
  for p in $(ls -d "$root"/versions/*/bin/python3 2>/dev/null | sort -V); do
    usable "$p" && { echo "$p"; return 0; }
  done
  return 1
}

if [ -x .venv/bin/python ] && ! usable .venv/bin/python; then
  echo "bootstrap: .venv uses Python < 3.12; recreating it" >&2
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  if ! PY=$(find_python); then
    echo "bootstrap: hypersr needs Python >= 3.12 (VapourSynth R74+ ships wheels for CPython 3.12+ only)." >&2
    echo "  none was found on PATH or under pyenv's versions. Install one, e.g. 'pyenv install 3.12'," >&2
    echo "  or name it with HYPERSR_PYTHON=/path/to/python3.12 make test" >&2
    exit 1
  fi
  echo "bootstrap: creating .venv with $PY ($("$PY" --version))" >&2
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
# vspipe finds its Python through VapourSynth's runtime configuration (one entry per installation).
.venv/bin/vapoursynth config >/dev/null
touch .venv/.installed
