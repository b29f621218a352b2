#!/usr/bin/env bash
# Issue 10's table on one GPU, as JSON lines (one per figure), in about 6 minutes.
#
#   benchmarks/gpu_suite.sh --data-dir DIR [--device cuda|cpu] [--smoke] [--out FILE]
#
# --data-dir: a folder with the four Fashion-MNIST IDX files (gzipped or not).
# --smoke:    every code path at tiny settings (<= 60 s on a GPU); the full suite runs it first
#             and stops if it fails. --device cpu --smoke proves the paths on a machine without
#             a GPU (the figures then mean nothing; --compile uses the aot_eager backend there).
# Timing rows run alone on the GPU; the two accuracy-only rows run at the same time, last.
#
# Rows (benchmark names):
#   speed_b256_eager      images/s at batch 256 (modern) and the plain torchvision loop's
#   speed_b1024_fast      images/s at batch 1024 (fast recipe) and the plain loop's  (goal >= 40,000)
#   speed_b256_compile    --compile at batch 256, with warmup_s                     (goal >= 1.3x eager)
#   time_to_95_fast       seconds from process start to 95.0% test top-1, fast recipe (goal <= 60 s)
#   one_epoch_8192        V2 alpha 0.5, 1 epoch, 8,192 images, batch 256              (goal >= 70%)
#   accuracy_40ep_long    V2 alpha 1, 40 epochs, long recipe, final test top-1        (goal >= 95.5%)
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR="" DEVICE=cuda SMOKE=0 OUT=""  # --out FILE: also append the lines there
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$DATA_DIR" ] || { echo "gpu_suite.sh: --data-dir DIR (Fashion-MNIST IDX files) is required" >&2; exit 2; }
[ -d "$DATA_DIR" ] || { echo "gpu_suite.sh: --data-dir $DATA_DIR: no such folder" >&2; exit 2; }
# The project's .venv (scripts/setup.sh) when there is one, else $PYTHON or python.
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY="${PYTHON:-python}"; fi
B="benchmarks/train_fashion_mnist.py"
COMMON=(--device "$DEVICE" --data-dir "$DATA_DIR")

row() {  # row NAME ARGS...: one benchmark run, its JSON line on stdout (and in --out)
  local name="$1"; shift
  local line
  line=$("$PY" "$B" "${COMMON[@]}" --label "$name" "$@" | grep '^{')
  echo "$line"
  if [ -n "$OUT" ]; then echo "$line" >> "$OUT"; fi
}

if [ "$SMOKE" = 1 ]; then
  if [ "$DEVICE" = cpu ]; then  # the compiled-step path, traced without minutes of C++ builds
    export MOBILENETS_COMPILE_BACKEND="${MOBILENETS_COMPILE_BACKEND:-aot_eager}"
  fi
  T=(--width 0.25 --max-train-samples 2048 --max-eval-samples 500)
  row speed_b256_eager --recipe modern --epochs 2 "${T[@]}" --peer --peer-steps 6
  row speed_b1024_fast --recipe fast --epochs 2 "${T[@]}" --peer --peer-steps 3
  row speed_b256_compile --recipe modern --epochs 2 "${T[@]}" --compile
  row time_to_95_fast --recipe fast --epochs 1 "${T[@]}" --target 0.5
  row one_epoch_8192 --model mobilenet_v2 --width 0.25 --recipe modern --epochs 1 \
    --max-train-samples 1024 --max-eval-samples 500 &
  p1=$!
  row accuracy_40ep_long --recipe long --epochs 2 "${T[@]}" --save-every 2 --plots end &
  p2=$!
  wait $p1; wait $p2
  exit 0
fi

"$0" --data-dir "$DATA_DIR" --device "$DEVICE" --smoke > /dev/null  # every path first, tiny
# Timing rows: alone on the GPU. 2 epochs of 61,440 images; epoch 2 is the steady rate.
SPEED=(--epochs 2 --max-train-samples 61440 --max-eval-samples 2000)
row speed_b256_eager --recipe modern --batch-size 256 "${SPEED[@]}" --peer
row speed_b1024_fast --recipe fast "${SPEED[@]}" --peer
row speed_b256_compile --recipe modern --batch-size 256 "${SPEED[@]}" --compile
row time_to_95_fast --recipe fast --epochs 15 --target 0.95
# Accuracy only: may share the GPU.
row one_epoch_8192 --model mobilenet_v2 --width 0.5 --recipe modern --epochs 1 \
  --batch-size 256 --max-train-samples 8192 &
p1=$!
row accuracy_40ep_long --recipe long --epochs 40 --save-every 10 &
p2=$!
wait $p1; wait $p2
