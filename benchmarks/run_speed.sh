#!/usr/bin/env bash
# Record the speed and memory benchmarks behind docs/benchmarks.md, then render them (and the
# README's headline table, from the CIFAR-10 results). About 40 minutes on a 2-core CPU (A0, B1,
# optimizer profile and inference about 10, torch.compile 2 more, the cost curves over image sizes
# about 15, the CPU paths at four image sizes about 13); run it on a quiet machine (ratios are
# paired per round, but a loaded CPU still adds noise).
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
  # cost curves: "image size|batch sizes|steps|warmup|repeats", one `bench train` run each
  CURVES=("32|4,8|1|0|2" "64|4,8|1|0|2"); CURVE_BUDGET=150
  CPU_PATHS="--settings 32x8 --steps 1 --warmup 0 --repeats 2 --matmul-size 1024"
else
  OUT=${OUT:-benchmarks/results}; DOCS=${DOCS:-docs/benchmarks.md}
  TRAIN="--batch-size 16,32,64 --steps 6 --warmup 2 --repeats 9 --memory-budget-mb 256"
  PROFILE="--steps 10 --repeats 15"; INFER="--batch-size 1,32 --steps 10 --warmup 3 --repeats 5"
  B1="--batch-size 32 --steps 2 --warmup 1 --repeats 5"; HEADLINE=32
  # fewer steps, rounds and batches at larger images, so each size takes about 2-5 minutes
  CURVES=("32|8,16,32,64,128|4|1|9" "64|8,16,32,64,128|2|1|7" "128|8,16,32,64,128|1|1|5"
    "224|8,16,32,64|1|1|7"); CURVE_BUDGET=512
  CPU_PATHS="--settings 32x64,64x32,128x16,224x16 --steps 4 --warmup 2 --repeats 7"
fi
mkdir -p "$OUT"
stage() { echo "== $1 ($(date +%T))" >&2; }

stage "train, A0 width: RepOpt-VGG, RepVGG, plain VGG, RepOpt-VGG with plain SGD, timm, ReduceNet"
# shellcheck disable=SC2086
"$BIN/reparam" bench train \
  --models repopt_vgg_a0,repvgg_a0,vgg_a0,repopt_vgg_a0@sgd,timm:repvgg_a0,reducenet20 \
  --image-size 32 --threads "$THREADS" $TRAIN --out "$OUT/speed_train_a0.json"

for curve in "${CURVES[@]}"; do
  IFS='|' read -r size batches steps warmup repeats <<<"$curve"
  stage "cost curve at ${size}x${size}: plain VGG, RepOpt-VGG, RepVGG, timm's RepVGG"
  "$BIN/reparam" bench train --models vgg_a0,repopt_vgg_a0,repvgg_a0,timm:repvgg_a0 \
    --image-size "$size" --batch-size "$batches" --steps "$steps" --warmup "$warmup" \
    --repeats "$repeats" --memory-budget-mb "$CURVE_BUDGET" --threads "$THREADS" \
    --out "$OUT/speed_curve_$size.json"
done

stage "CPU training paths: FP32, bf16 autocast, channels-last, both"
# shellcheck disable=SC2086
"$BIN/python" benchmarks/cpu_paths.py speed --threads "$THREADS" $CPU_PATHS \
  --record "$OUT/cpu_paths.json"

stage "RepOptSGD step profile"
# shellcheck disable=SC2086
"$BIN/python" benchmarks/profile_optimizer.py --threads "$THREADS" $PROFILE \
  --record "$OUT/speed_optimizer_profile.json"

stage "inference: train form, fused, torch.compile, ONNX Runtime FP32/INT8; timm's fused RepVGG"
# shellcheck disable=SC2086
"$BIN/reparam" bench infer --models repopt_vgg_a0,repvgg_a0,timm:repvgg_a0,reducenet20 \
  --image-size 32 --threads "$THREADS" $INFER --compile --out "$OUT/speed_infer.json"

stage "train, B1 width"
# shellcheck disable=SC2086
"$BIN/reparam" bench train --models repopt_vgg_b1,repvgg_b1,vgg_b1 --image-size 32 \
  --threads "$THREADS" $B1 --out "$OUT/speed_train_b1.json"

stage "render"
"$BIN/python" benchmarks/render.py --results "$OUT" --docs "$DOCS" --batch "$HEADLINE"
stage "done"
