"""Measure training speed/memory (train) or inference latency (infer), models side by side.

    reparam bench train --models repopt_vgg_a0,repvgg_a0,vgg_a0,timm:repvgg_a0 \\
        --batch-size 32 --image-size 32 --memory-budget-mb 512 --json
    reparam bench infer --models repvgg_a0,timm:repvgg_a0 --batch-size 1,32 --json

Model names: any ``reparam models`` name, or ``timm:NAME`` for a timm model (the peer); append
``@sgd`` / ``@repopt`` to force the optimizer of one entry (``repopt_vgg_a0@sgd`` measures the
RepOpt optimizer's overhead against plain SGD in the same run). Models run interleaved, so their
ratios are measured under the same machine load. ``--json`` prints one JSON list (one object per
model and batch size, each with the ``machine`` it ran on) on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from ..bench.infer import InferBenchConfig, run_infer_bench
from ..bench.subjects import OPTIMIZERS, check_spec, parse_spec
from ..bench.train import TrainBenchConfig, run_train_bench
from ..checkpoint import json_text, write_json
from ..errors import UserError
from .arguments import positive_ints

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", choices=("train", "infer"), help="what to measure")
    parser.add_argument(
        "--models", required=True, help="comma-separated: NAME, timm:NAME, NAME@sgd, NAME@repopt"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_ints,
        default=None,
        help="comma-separated batch sizes (default: train 32, infer 1,32)",
    )
    parser.add_argument("--image-size", type=int, default=32, help="square input size (default 32)")
    parser.add_argument(
        "--num-classes", type=int, default=100, help="classifier outputs (default 100)"
    )
    parser.add_argument("--steps", type=int, default=10, help="calls per timed window (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed windows per subject, interleaved; medians reported (default 5)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch.set_num_threads (and ORT intra-op threads); default: CPU count",
    )
    parser.add_argument(
        "--memory-budget-mb",
        type=float,
        default=None,
        help="train: also find the largest batch whose accounted memory fits",
    )
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="auto",
        help="train: optimizer for entries without @ (auto: RepOptSGD for models "
        "with gradient multipliers, else SGD)",
    )
    parser.add_argument("--no-onnx", action="store_true", help="infer: torch variants only")
    parser.add_argument("--out", default=None, help="also write the JSON list to this file")
    parser.add_argument("--json", action="store_true", help="print the JSON list on stdout")


def _command_line(args: argparse.Namespace) -> str:
    """The command with every option explicit (what the JSON records as ``command``)."""
    words = [
        "reparam",
        "bench",
        args.mode,
        "--models",
        args.models,
        "--batch-size",
        ",".join(map(str, args.batch_size)),
        "--image-size",
        str(args.image_size),
        "--num-classes",
        str(args.num_classes),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ]
    if args.mode == "train":
        words += ["--optimizer", args.optimizer]
        if args.memory_budget_mb is not None:
            words += ["--memory-budget-mb", f"{args.memory_budget_mb:g}"]
    elif args.no_onnx:
        words.append("--no-onnx")
    return shlex.join(words)


def _progress(message: str) -> None:
    print(f"reparam bench: {message}", file=sys.stderr, flush=True)


def _summary_line(record: dict) -> str:
    if record["benchmark"] == "train":
        text = (
            f"{record['model']:<24} batch {record['batch_size']:>4}  "
            f"{record['train_images_per_s']:8.1f} img/s  "
            f"{record['peak_train_memory_mb']:8.1f} MiB  opt {record['optimizer_step_ms']:.2f} ms"
        )
        if "max_batch_size" in record:
            text += f"  max batch {record['max_batch_size']}"
        return text
    return (
        f"{record['model']:<18} {record['variant']:<11} batch {record['batch_size']:>4}  "
        f"{record['latency_ms']:8.2f} ms  {record['images_per_s']:8.1f} img/s"
    )


def run(args: argparse.Namespace) -> int:
    for name in ("image_size", "num_classes", "steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    if args.memory_budget_mb is not None and args.memory_budget_mb <= 0:
        raise UserError(f"--memory-budget-mb must be positive, got {args.memory_budget_mb}")
    if args.batch_size is None:
        args.batch_size = (32,) if args.mode == "train" else (1, 32)
    specs = tuple(check_spec(parse_spec(text, args.optimizer)) for text in args.models.split(","))
    if len(set(specs)) != len(specs):
        raise UserError(f"--models lists an entry twice: {args.models}")
    common = dict(
        specs=specs,
        batch_sizes=args.batch_size,
        image_size=args.image_size,
        num_classes=args.num_classes,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        threads=args.threads,
        command=_command_line(args),
    )
    if args.mode == "train":
        results = run_train_bench(
            TrainBenchConfig(**common, memory_budget_mb=args.memory_budget_mb), _progress
        )
    else:
        results = run_infer_bench(InferBenchConfig(**common, onnx=not args.no_onnx), _progress)
    for record in results:
        _progress(_summary_line(record))
    if args.out:
        write_json(results, args.out)
    if args.json:
        print(json_text(results))
    return 0
