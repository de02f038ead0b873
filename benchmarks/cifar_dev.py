"""The methods side by side on real images: a CIFAR-10 subset, same budget for every row.

Rows (A0 width, 32x32, batch 64, the `basic` recipe with the CIFAR defaults: 4-pixel padded crop,
flip, CIFAR mean/std; the same epochs everywhere):

- Hyper-Search of RepOpt-VGG-A0's scales (the `repopt-hs` recipe at this budget), then
  RepOpt-VGG-A0 with those scales (RepOptSGD), RepVGG-A0, plain VGG-A0 (torch SGD), each with
  its INT8 PTQ top-1 (ONNX Runtime QDQ, MinMax, per-tensor and per-channel);
- the RepOptimizer paper's ablation rows and `identity_init="scale"`;
- ReduceNet-20 against the same 11-layer network trained directly.

Every finished run is saved to the record at once, and a rerun skips what is recorded, so the
table can be built over several invocations:

    .venv/bin/python benchmarks/cifar_dev.py \\
        --data cifar10:../shared/data/cifar10-dev/cifar-10-batches-py \\
        --out runs/cifar-dev --record benchmarks/results/cifar10_dev.json

The data is the project's shared 4000 + 660 image CIFAR-10 subset (outside the repository; a
fresh clone does not have it, and no test needs it).
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
from reparam.app.train import ablation_overrides, fit, hyper_search, resolve_config
from reparam.files import read_json, write_json
from reparam.quant.ort import QuantSettings

MAIN = ("repopt_vgg_a0", "repvgg_a0", "vgg_a0")
PLAIN_KWARGS = {"vgg_a0": {"init": "torch"}}
ABLATIONS = (
    "no_reinit",
    "no_grad_mult",
    "all_ones",
    "hs_init_constants",
    "channel_averaged",
    "identity_init_scale",
)
DEPTH = {"reducenet20": {}, "reducenet20_plain": {"plain": True}}


def jobs(seeds: list[int], ablation_seeds: list[int]) -> list[tuple[str, int]]:
    """``(row, seed)`` in the order that makes a partial table most useful."""
    order = [(row, seed) for seed in seeds for row in ("hs", *MAIN)]
    order += [(row, seed) for seed in ablation_seeds for row in ABLATIONS]
    order += [(row, seed) for seed in ablation_seeds for row in DEPTH]
    return order


# the recorded table's path, FP32 NCHW (the reference of benchmarks/cpu_paths.py accuracy, which
# trains the same runs on the other paths)
FP32 = {"amp": False, "channels_last": False}


def train_row(row: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    common = {
        "data": args.data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": 32,
        "seed": seed,
        "threads": args.threads,
        "force": True,
        **FP32,
    }
    out = Path(args.out)
    scales = out / f"scales-seed{seed}.safetensors"
    if row == "hs":
        summary = hyper_search(
            "repopt_vgg_a0",
            args.data,
            scales,
            epochs=args.epochs,
            batch_size=args.batch_size,
            image_size=32,
            seed=seed,
            run_dir=out / f"hs-seed{seed}",
            overrides={"threads": args.threads, **FP32},
            force=True,
            progress=False,
        )
        return {"top1": summary["top1"], "seconds": summary["seconds"]}
    if row in MAIN:
        # the recorded plain row is torch's default conv init (benchmarks/plain_vgg.py has both)
        kwargs = {"scales": str(scales)} if row == "repopt_vgg_a0" else PLAIN_KWARGS.get(row, {})
        values = {**common, "model": row, "model_kwargs": kwargs}
    elif row in DEPTH:
        values = {**common, "model": "reducenet20", "model_kwargs": DEPTH[row]}
    elif row == "identity_init_scale":
        kwargs = {"scales": str(scales), "identity_init": "scale"}
        values = {**common, "model": "repopt_vgg_a0", "model_kwargs": kwargs}
    else:
        values = {**common, "model": "repopt_vgg_a0", **ablation_overrides(scales)[row]}
    run = out / f"{row}-seed{seed}"
    metrics = fit(resolve_config("basic", {**values, "out": str(run)}), progress=False)
    result = {
        "top1": metrics["top1"],
        "train_images_per_s": metrics["train_images_per_s"],
        "seconds": metrics["seconds"],
    }
    if row in MAIN:
        for granularity in ("per-tensor", "per-channel"):
            int8 = deploy(
                run,
                out / "deploy" / f"{row}-seed{seed}-{granularity}",
                int8=True,
                calib_data=args.data,
                settings=QuantSettings(granularity=granularity, calibration="minmax"),
                latency_repeats=3,
                threads=args.threads,
                force=True,
            )["int8"]
            result[f"top1_int8_{granularity}"] = int8["top1_int8"]
            result[f"output_sqnr_db_{granularity}"] = int8["output_sqnr_db"]
    return result


def table(record: dict[str, Any]) -> str:
    """Markdown: mean +- std of top-1 (%) per row over the seeds recorded so far."""

    def cell(row: str, key: str) -> str:
        values = [100 * r[key] for r in record["rows"].get(row, {}).values() if key in r]
        if not values:
            return "-"
        spread = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.2f}{spread} (n={len(values)})"

    lines = [
        "| row | top-1 % | INT8 per-tensor % | INT8 per-channel % |",
        "|---|---|---|---|",
    ]
    for row in ("hs", *MAIN, *ABLATIONS, *DEPTH):
        if row in record["rows"]:
            lines.append(
                f"| {row} | {cell(row, 'top1')} | {cell(row, 'top1_int8_per-tensor')} "
                f"| {cell(row, 'top1_int8_per-channel')} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cifar10:../shared/data/cifar10-dev/cifar-10-batches-py")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the main rows")
    parser.add_argument("--ablation-seeds", default="0,1", help="seeds of the other rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/cifar-dev", help="folder: the work folder")
    parser.add_argument(
        "--record", default="benchmarks/results/cifar10_dev.json", help="file: the results"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record_path = Path(args.record)
    record = read_json(record_path) if record_path.is_file() else {"rows": {}}
    settings = {"data": args.data, "epochs": args.epochs, "batch_size": args.batch_size}
    if record.get("settings", settings) != settings:
        parser.error(f"{record_path} was recorded with {record['settings']}, not {settings}")
    record.update(settings=settings, command=shlex.join(["python", *sys.argv]))
    seeds = [int(s) for s in args.seeds.split(",") if s]
    ablation_seeds = [int(s) for s in args.ablation_seeds.split(",") if s]
    for row, seed in jobs(seeds, ablation_seeds):
        if str(seed) in record["rows"].get(row, {}):
            continue
        start = time.perf_counter()
        result = train_row(row, seed, args)
        record["rows"].setdefault(row, {})[str(seed)] = result
        record["machine"] = machine_info()
        record["table"] = table(record)
        write_json(record, record_path)
        print(f"{row} seed {seed}: top-1 {100 * result['top1']:.2f}% "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    print(record["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
