#!/usr/bin/env bash
# The main job on a CPU: get Fashion-MNIST, train a small MobileNet for a few minutes,
# evaluate it on the test set, and say where the checkpoint, curves and confusion matrix are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="${1:-runs/demo}"
mn=.venv/bin/mobilenets
$mn summary mobilenet_v1 --width 0.25 --resolution 28 --small-input --in-chans 1 --num-classes 10 | tail -9
$mn train --model mobilenet_v1 --width 0.25 --data fashion-mnist --epochs 3 --batch-size 128 \
  --out "$out" --seed 0
$mn eval "$out/last.ckpt" --data fashion-mnist --out "$out/eval"
echo
echo "checkpoint:        $out/last.ckpt  (model.safetensors + config.json)"
echo "training curves:   $out/curves.png   metrics: $out/metrics.jsonl  summary: $out/summary.json"
echo "confusion matrix:  $out/eval/confusion_matrix.png  (and .json)"
