"""PTQ drop of RepVGG vs RepOpt-VGG vs plain VGG (same deploy structure), identical INT8 settings.

Trains each model on the data spec (reparam.app.train.fit, one shared short schedule; an existing
run folder under OUT/runs/<model> is reused), then quantizes every model with each settings
preset through reparam.app.deploy.compare_ptq and records the tables:

    .venv/bin/python benchmarks/quant_compare.py --data digits --epochs 5 \
        --out runs/quant_compare --record benchmarks/results/quant_compare.json

The same comparison from the CLI (one settings preset): ``reparam deploy --compare repvgg_a0
repopt_vgg_a0 vgg_a0 --calib-data digits --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import reparam
from reparam.app.bench.machine import machine_info
from reparam.app.deploy.compare import compare_ptq
from reparam.app.report import ptq_table
from reparam.files import write_json
from reparam.quant.ort import QuantSettings

PRESETS = {
    "per-tensor-minmax": dict(granularity="per-tensor", calibration="minmax"),
    "per-channel-minmax": dict(granularity="per-channel", calibration="minmax"),
    "per-tensor-entropy": dict(granularity="per-tensor", calibration="entropy"),
}


def train_if_missing(
    name: str, data: str, out: Path, epochs: int, image_size: int, lr: float | None
) -> Path:
    from reparam.app.train import TrainConfig, fit

    if not (out / "metrics.json").is_file():
        fit(
            TrainConfig(
                model=name,
                data=data,
                epochs=epochs,
                image_size=image_size,
                lr=lr,
                out=str(out),
                device="cpu",
                amp=False,  # the recorded table's path, FP32 NCHW
                channels_last=False,
            ),
            progress=True,
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--models", default="repvgg_a0,repopt_vgg_a0,vgg_a0")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, help="absolute lr for all models (default: recipe)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--calib-images", type=int, default=256)
    parser.add_argument("--presets", default=",".join(PRESETS), help=f"of {', '.join(PRESETS)}")
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--out", default="runs/quant_compare")
    parser.add_argument("--record", help="write the results JSON here")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads (1: 2 threads on a shared 2-core CPU ran 10x slower)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)

    start = time.perf_counter()
    out = Path(args.out)
    models = [m for m in args.models.split(",") if m]
    missing = [m for m in models if m not in reparam.list_models()]
    if missing:
        parser.error(f"unknown models {missing}")
    runs = [
        str(train_if_missing(m, args.data, out / "runs" / m, args.epochs, args.image_size, args.lr))
        for m in models
    ]
    train_seconds = time.perf_counter() - start
    results = {}
    for preset in args.presets.split(","):
        settings = QuantSettings(calib_images=args.calib_images, **PRESETS[preset])
        results[preset] = compare_ptq(
            runs,
            args.data,
            out / preset,
            settings,
            image_size=args.image_size,
            latency_repeats=args.latency_repeats,
        )
        print(ptq_table(results[preset]) + "\n", flush=True)
    record = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(),
        "train": {
            "epochs": args.epochs,
            "lr": args.lr,
            "image_size": args.image_size,
            "data": args.data,
            "seconds": train_seconds,
        },
        "seconds": time.perf_counter() - start,
        "results": results,
        "tables": {preset: ptq_table(result) for preset, result in results.items()},
    }
    if args.record:
        write_json(record, args.record)
    print(json.dumps({"seconds": record["seconds"], "train_seconds": train_seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
