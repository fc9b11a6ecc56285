#!/usr/bin/env bash
# The prepared run for a lent GPU (one `device` call, at most 9 minutes): train real-x2 (SPAN on the
# real-source mixture) and vsrt-x2 (the transformer over SPAN's features, its card's recipe) longer and
# with bigger batches than a CPU can, run the cuda backend's tests and
# `bench speed --backend cuda`, and leave weights, logs and tables in $OUT. The device machine has torch,
# numpy, safetensors, tqdm and pytest but no VapourSynth, no PyAV and no network; the repository travels
# with `.gpu/` (the wheels and a small training pack), 64 MiB in all.
# (The quality presets are not trained there: every fine-tune of SPAN on the pack lost quality on a CPU,
# presets/quality-x2.json's window_choice.)
#
#   bash training/gpu_session.sh prepare     here, once: .gpu/ gets a small training pack and the wheels the device lacks
#   device run: command "bash training/gpu_session.sh run", carry [".gpu"], timeout_s 580
#   bash training/gpu_session.sh rehearse    here: the same steps at toy size on the CPU, so the real run works first time
#
# Each preset is trained with --install on the device's copy of the tree, so its card records the GPU, the
# steps made and the command; $OUT brings back the card and the weights. If the log shows a gain, copy both
# into presets/ here, retrain the preset's hypernet for the new base (`hypersr train hypernet --preset
# real-x2 --install`, then its clean blend: `hypersr train blend --preset real-x2 --install`), re-run the
# benchmarks for the cards' scores, and commit them with the logs' numbers. The card then records the GPU
# run's command as its recipe (every weight from the installed real-x2): keep its two-stage recipe beside it.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
GPU=.gpu
PRESETS=(real-x2 vsrt-x2)
# real-x2's card defaults are its second stage (the window's average alone, at 5e-3): a longer run trains every weight at stage 1's rate
EXTRA=("--trainable all --lr 1e-4 --clip-grad 1 --no-bf16" "")

case "$MODE" in
prepare)
  mkdir -p "$GPU"
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  # the wheels (VapourSynth 6 MB, PyAV 34 MB) and the repository (18 MiB on 2026-12-06) leave ~5 MB for the pack:
  # 400 crops of 160 px from ~300 stills (8 KB each), every 64th validation frame, the phone clip's first 24 frames
  [ -f "$GPU/pack.npz" ] || .venv/bin/hypersr data pack --crop 160 --crops-per-sqrt-mpx 0.6 --max-scenes 400 --val-stride 64 \
    --clip-frames 24 --out "$GPU/pack.npz" || exit 1
  for pkg in vapoursynth av; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$GPU/wheels" "$pkg==$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$pkg'))")" || exit 1
  done
  # a device call carries the tracked tree and .gpu/ together, 64 MiB at most: say so here, not on the device
  tree=$(git ls-files -z | xargs -0 du -cb | tail -n 1 | cut -f1); gpu=$(du -sb "$GPU" | cut -f1)
  echo "tree $((tree / 1048576)) MiB + $GPU $((gpu / 1048576)) MiB (the pack $(($(stat -c %s "$GPU/pack.npz") / 1048576)) MiB)"
  if [ $((tree + gpu)) -gt $((64 * 1048576)) ]; then
    echo "too big for one device call (64 MiB): make the pack smaller (rm $GPU/pack.npz; a smaller --max-scenes or --crop above)," \
         "or leave a wheel out" >&2; exit 1
  fi
  exit 0 ;;
run)
  OUT=${OUT:?run it through the device tool, which sets OUT}
  DEVICE=cuda; MINUTES=3; STEPS=(8000 8000); BATCH=32; VAL=1000; BANK=16384; SIZE=; TESTS=(-k cuda)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$GPU"/wheels/*.whl || exit 1
  PYTHONPATH_EXTRA=/tmp/site ;;
rehearse)  # in a copy of the tree, so that --install touches nothing here
  OUT=${OUT:-/tmp/hypersr-gpu-rehearsal}; rm -rf "$OUT"; mkdir -p "$OUT"
  DEVICE=cpu; MINUTES=1; STEPS=(4 4); BATCH=2; VAL=2; BANK=16; SIZE=(--size 64x36 --frames 1); TESTS=(-k "cuda or auto_picks")
  PYTHONPATH_EXTRA=; PYTHON=$PWD/.venv/bin/python
  TREE=$(mktemp -d); git ls-files -z | xargs -0 cp --parents -t "$TREE"; ln -s "$PWD/$GPU" "$TREE/$GPU"; cd "$TREE" ;;
*)
  echo "usage: bash training/gpu_session.sh prepare|run|rehearse" >&2; exit 2 ;;
esac

# The repository root is the package `hypersr`: a link named so makes it importable without installing.
mkdir -p /tmp/hypersr-pkg && ln -sfn "$PWD" /tmp/hypersr-pkg/hypersr
export PYTHONPATH=/tmp/hypersr-pkg${PYTHONPATH_EXTRA:+:$PYTHONPATH_EXTRA} PYTHONUNBUFFERED=1 HYPERSR_TESTS_WITHOUT_FFMPEG=1
PY=${PYTHON:-python3}
hsr() { "$PY" -m hypersr "$@"; }

LOG=$OUT/session.txt  # at most 8 files come back: one log, and per preset its card, weights and training log
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"; "$PY" -c 'import torch; print("torch", torch.__version__)'; } \
  | tee "$LOG"
for i in "${!PRESETS[@]}"; do
  p=${PRESETS[$i]}
  hsr train base --preset "$p" --init "$p" --pack "$GPU/pack.npz" --device "$DEVICE" --steps "${STEPS[$i]}" --batch "$BATCH" \
      --val-every "$VAL" --bank "$BANK" --max-minutes "$MINUTES" ${EXTRA[$i]} --out "/tmp/runs/$p" --install 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 5 | tee -a "$LOG"
  cp "presets/$p.json" "presets/$p.safetensors" "$OUT/" && cp "/tmp/runs/$p/log.jsonl" "$OUT/$p.log.jsonl"
done
"$PY" -m pytest -q -p no:cacheprovider tests/test_backends.py "${TESTS[@]}" 2>&1 | tail -n 15 | tee -a "$LOG"
BENCH=(); for p in fast-x2 "${PRESETS[@]}"; do BENCH+=(--preset "$p"); done
hsr bench speed --backend "$DEVICE" "${BENCH[@]}" ${SIZE[@]+"${SIZE[@]}"} 2>&1 | tee -a "$LOG"
ls -la "$OUT"
