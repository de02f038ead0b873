#!/usr/bin/env bash
# Record the speed and memory benchmarks behind docs/benchmarks.md and the README's performance
# section, then render them. About 8 minutes on the project's 2-core CPU; run it on a quiet
# machine (ratios are paired per round, but a loaded CPU still adds noise).
#
#   benchmarks/run_speed.sh            # record into benchmarks/results/, render docs/benchmarks.md
#   QUICK=1 benchmarks/run_speed.sh    # tiny settings into /tmp/reparam-speed-quick (pipeline check)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
THREADS=${THREADS:-2}
if [[ "${QUICK:-0}" == 1 ]]; then
  OUT=${OUT:-/tmp/reparam-speed-quick}; DOCS=${DOCS:-$OUT/benchmarks.md}
  TRAIN="--batch-size 4,8 --steps 1 --warmup 0 --repeats 2 --memory-budget-mb 150"
  PROFILE="--steps 1 --repeats 2"; INFER="--batch-size 1,4 --steps 1 --warmup 0 --repeats 2"
  B1="--batch-size 4 --steps 1 --warmup 0 --repeats 2"; HEADLINE=8
else
  OUT=${OUT:-benchmarks/results}; DOCS=${DOCS:-docs/benchmarks.md}
  TRAIN="--batch-size 16,32,64 --steps 6 --warmup 2 --repeats 9 --memory-budget-mb 256"
  PROFILE="--steps 10 --repeats 15"; INFER="--batch-size 1,32 --steps 10 --warmup 3 --repeats 5"
  B1="--batch-size 32 --steps 2 --warmup 1 --repeats 5"; HEADLINE=32
fi
mkdir -p "$OUT"
stage() { echo "== $1 ($(date +%T))" >&2; }

stage "train, A0 width: RepOpt-VGG, RepVGG, plain VGG, RepOpt-VGG with plain SGD, timm, ReduceNet"
# shellcheck disable=SC2086
"$BIN/reparam" bench train \
  --models repopt_vgg_a0,repvgg_a0,vgg_a0,repopt_vgg_a0@sgd,timm:repvgg_a0,reducenet20 \
  --image-size 32 --threads "$THREADS" $TRAIN --out "$OUT/speed_train_a0.json"

stage "RepOptSGD step profile"
# shellcheck disable=SC2086
"$BIN/python" benchmarks/profile_optimizer.py --threads "$THREADS" $PROFILE \
  --record "$OUT/speed_optimizer_profile.json"

stage "inference: train form, fused, ONNX Runtime FP32/INT8; timm's fused RepVGG"
# shellcheck disable=SC2086
"$BIN/reparam" bench infer --models repopt_vgg_a0,repvgg_a0,timm:repvgg_a0,reducenet20 \
  --image-size 32 --threads "$THREADS" $INFER --out "$OUT/speed_infer.json"

stage "train, B1 width"
# shellcheck disable=SC2086
"$BIN/reparam" bench train --models repopt_vgg_b1,repvgg_b1,vgg_b1 --image-size 32 \
  --threads "$THREADS" $B1 --out "$OUT/speed_train_b1.json"

stage "render"
"$BIN/python" benchmarks/render.py --results "$OUT" --docs "$DOCS" --batch "$HEADLINE"
stage "done"
