"""ONNX Runtime INT8 (QDQ) vs FP32 latency on the A0-width VGG deploy structure, 32x32, batch 32.

vgg_a0 and repopt_vgg_a0 fuse to the same graph (22 conv3x3 + ReLU, fc), so one of them is
enough for speed; both are measured. Weights do not change the speed: fresh models, INT8
calibrated on 64 synthetic images. FP32 and INT8 sessions are timed in alternating rounds; each
round gives the median of --repeats runs, and the reported figures are the medians over rounds and
the ratio of the round whose ratio is the median (one side-by-side run):

    .venv/bin/python benchmarks/int8_latency.py --record benchmarks/results/int8_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import reparam
from reparam.app.bench.machine import machine_info
from reparam.app.deploy.predict import session_latency_ms
from reparam.quant.onnx import export_onnx, open_session
from reparam.quant.ort import QuantSettings, quantize_onnx
from reparam.saved import build_deploy_model


def measure(name: str, args: argparse.Namespace, folder: Path) -> dict:
    fused = build_deploy_model({"model": name, "num_classes": 10})
    fp32_path = export_onnx(fused, folder / f"{name}.onnx", args.image_size)
    calib = np.random.default_rng(0).standard_normal(
        (64, 3, args.image_size, args.image_size), dtype=np.float32
    )
    result = {}
    for granularity in ("per-channel", "per-tensor"):
        int8_path = folder / f"{name}.{granularity}.int8.onnx"
        quantize_onnx(
            fp32_path, int8_path, calib, QuantSettings(granularity=granularity, calib_images=64)
        )
        sessions = {
            "fp32": open_session(fp32_path, args.threads),
            "int8": open_session(int8_path, args.threads),
        }
        rounds = []
        for _ in range(args.rounds):
            rounds.append(
                {
                    kind: session_latency_ms(s, args.batch_size, args.repeats)["median_ms"]
                    for kind, s in sessions.items()
                }
            )
        ratios = [r["fp32"] / r["int8"] for r in rounds]
        middle = rounds[sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]]
        result[granularity] = {
            "fp32_ms_median": statistics.median(r["fp32"] for r in rounds),
            "int8_ms_median": statistics.median(r["int8"] for r in rounds),
            "speedup_median_round": middle["fp32"] / middle["int8"],
            "side_by_side_round": middle,
            "speedup_min": min(ratios),
            "speedup_max": max(ratios),
            "rounds": rounds,
        }
        print(
            f"{name} {granularity}: FP32 {result[granularity]['fp32_ms_median']:.1f} ms, INT8 "
            f"{result[granularity]['int8_ms_median']:.1f} ms, speedup "
            f"{result[granularity]['speedup_median_round']:.2f}x "
            f"(range {min(ratios):.2f}-{max(ratios):.2f})",
            flush=True,
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg_a0,repopt_vgg_a0")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="ORT intra-op threads")
    parser.add_argument("--record", help="write the results JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # export only; keeps torch off the cores ORT is timed on
    start = time.perf_counter()
    models = [m for m in args.models.split(",") if m in reparam.list_models()]
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: measure(name, args, Path(tmp)) for name in models}
    load = os.getloadavg()
    record = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            **machine_info(),
            "ort_intra_op_threads": args.threads,
            "load_average_1_5_15min_after": load,
        },
        "setup": {
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "repeats_per_round": args.repeats,
            "format": "QDQ, uint8 activations, int8 weights, minmax calibration",
        },
        "results": results,
        "seconds": time.perf_counter() - start,
    }
    if args.record:
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        Path(args.record).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
