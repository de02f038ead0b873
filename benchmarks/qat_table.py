"""INT8 on real images: PTQ (ONNX Runtime and PT2E) against QAT, for the models of the CIFAR table.

For each trained run of ``benchmarks/cifar_dev.py`` (RepOpt-VGG-A0, RepVGG-A0, plain VGG-A0; 15
epochs on the 4000 + 660 image CIFAR-10 subset, seeds 0-2), with the same 256 calibration images:

- PTQ, MinMax, per-tensor and per-channel weights, by ORT's ``quantize_static`` and by torchao's
  PT2E flow (``reparam deploy --int8 --backend ort|pt2e``);
- QAT (``reparam qat``, per-tensor weights, ``--epochs`` epochs at 1% of the run's learning rate):
  the default route (training structure for RepOpt-VGG and VGG, the official fuse + BN route for
  RepVGG) and, for RepVGG, the naive multi-branch route (``--route train``).

Every finished cell is saved at once and a rerun skips what is recorded:

    .venv/bin/python benchmarks/qat_table.py \\
        --data cifar10:../shared/data/cifar10-dev/cifar-10-batches-py \\
        --runs runs/cifar-dev --record benchmarks/results/qat_cifar10_dev.json
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from reparam.app.bench.machine import machine_info
from reparam.app.deploy import deploy
from reparam.app.deploy.qat import QATSettings, qat
from reparam.files import read_json, write_json
from reparam.quant.ort import QuantSettings

MODELS = ("repopt_vgg_a0", "repvgg_a0", "vgg_a0")
PTQ = tuple(f"ptq_{b}_{g}" for b in ("ort", "pt2e") for g in ("per-tensor", "per-channel"))
COLUMNS = (*PTQ, "qat", "qat_naive")


def cells(seeds: list[int]) -> list[tuple[str, int, str]]:
    """``(model, seed, column)`` in the order that makes a partial table most useful."""
    return [
        (model, seed, column)
        for seed in seeds
        for model in MODELS
        for column in COLUMNS
        if column != "qat_naive" or model == "repvgg_a0"
    ]


def measure(model: str, seed: int, column: str, args: argparse.Namespace) -> dict[str, Any]:
    run = Path(args.runs) / f"{model}-seed{seed}"
    out = Path(args.out) / f"{model}-seed{seed}-{column}"
    common = dict(latency_repeats=3, threads=args.threads, force=True)
    start = time.perf_counter()
    if column.startswith("ptq_"):
        _, backend, granularity = column.split("_")
        settings = QuantSettings(backend=backend, granularity=granularity, calibration="minmax")
        int8 = deploy(run, out, int8=True, calib_data=args.data, settings=settings, **common)
    else:
        route = "train" if column == "qat_naive" else "auto"
        settings = QATSettings(epochs=args.qat_epochs, granularity="per-tensor", route=route)
        int8 = qat(run, args.data, out, settings, **common)
    int8 = int8["int8"]
    return {
        "top1_fp32": int8["top1_fp32"],
        "top1_int8": int8["top1_int8"],
        "top1_agreement": int8["top1_agreement"],
        "output_sqnr_db": int8["output_sqnr_db"],
        "latency_int8_ms": int8["latency_int8_ms"],
        "route": int8["settings"].get("route"),
        "seconds": time.perf_counter() - start,
    }


def table(record: dict[str, Any]) -> str:
    """Markdown: mean +- std (%) over the seeds recorded so far; QAT time in seconds."""

    def cell(model: str, column: str, key: str = "top1_int8", scale: float = 100) -> str:
        values = [
            scale * r[column][key]
            for r in record["rows"].get(model, {}).values()
            if column in r and r[column].get(key) is not None
        ]
        if not values:
            return "-"
        spread = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.2f}{spread}"

    lines = [
        "| model | FP32 | ORT PTQ per-tensor | ORT PTQ per-channel | PT2E PTQ per-tensor "
        "| PT2E PTQ per-channel | QAT per-tensor | QAT s | naive multi-branch QAT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        if model not in record["rows"]:
            continue
        row = [cell(model, "ptq_ort_per-tensor", "top1_fp32")]
        row += [cell(model, column) for column in (*PTQ, "qat")]
        row += [cell(model, "qat", "seconds", 1), cell(model, "qat_naive")]
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cifar10:../shared/data/cifar10-dev/cifar-10-batches-py")
    parser.add_argument("--runs", default="runs/cifar-dev", help="folder: cifar_dev.py's runs")
    parser.add_argument("--out", default="runs/qat-dev", help="folder: the deploy folders")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--record", default="benchmarks/results/qat_cifar10_dev.json", help="file: the results"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record_path = Path(args.record)
    record = read_json(record_path) if record_path.is_file() else {"rows": {}}
    settings = {"data": args.data, "qat_epochs": args.qat_epochs, "calib_images": 256}
    if record.get("settings", settings) != settings:
        parser.error(f"{record_path} was recorded with {record['settings']}, not {settings}")
    record.update(settings=settings, command=shlex.join(["python", *sys.argv]))
    for model, seed, column in cells([int(s) for s in args.seeds.split(",") if s]):
        if column in record["rows"].get(model, {}).get(str(seed), {}):
            continue
        result = measure(model, seed, column, args)
        record["rows"].setdefault(model, {}).setdefault(str(seed), {})[column] = result
        record["machine"] = machine_info()
        record["table"] = table(record)
        write_json(record, record_path)
        print(f"{model} seed {seed} {column}: top-1 {100 * result['top1_int8']:.2f}% "
              f"({result['seconds']:.0f} s)", flush=True)  # fmt: skip
    print(record["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
