"""Measure training speed/memory (train) or inference latency (infer), models side by side.

    reparam bench train --models repopt_vgg_a0,repvgg_a0,vgg_a0,timm:repvgg_a0 \\
        --batch-size 32 --image-size 32 --memory-budget-mb 512 --json
    reparam bench infer --models repvgg_a0,timm:repvgg_a0 --batch-size 1,32 --compile --json

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

from reparam.app.bench.infer import InferBenchConfig, run_infer_bench
from reparam.app.bench.subjects import OPTIMIZERS, check_spec, parse_spec
from reparam.app.bench.train import TrainBenchConfig, run_train_bench
from reparam.app.commands.arguments import (
    add_out,
    add_reporting,
    add_threads,
    positive_int,
    positive_ints,
)
from reparam.errors import UserError
from reparam.files import json_text, write_json

__all__ = ["add_arguments", "run"]


MODES = {
    "train": "training throughput, accounted memory and (with --memory-budget-mb) the largest "
    "batch, per model, side by side",
    "infer": "inference latency of each deploy path (train form, fused, ONNX FP32 / INT8, "
    "optionally torch.compile), per model, side by side",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    modes = parser.add_subparsers(dest="mode", metavar="MODE", required=True)
    for mode, summary in MODES.items():
        sub = modes.add_parser(mode, help=summary, description=f"{summary}.\n\n{__doc__}")
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        sub.set_defaults(parser=sub)
        _add_common(sub, default_batch="32" if mode == "train" else "1,32")
        if mode == "train":
            sub.add_argument(
                "--memory-budget-mb",
                type=float,
                default=None,
                help="also find the largest batch whose accounted memory fits",
            )
            sub.add_argument(
                "--optimizer",
                choices=OPTIMIZERS,
                default="auto",
                help="optimizer for entries without @ (auto: RepOptSGD for models with gradient "
                "multipliers, else SGD)",
            )
        else:
            sub.set_defaults(optimizer="auto", memory_budget_mb=None)  # train-only options
            sub.add_argument("--no-onnx", action="store_true", help="torch variants only")
            sub.add_argument(
                "--compile",
                action="store_true",
                help="also time torch.compile(fused) (compile time recorded apart; a failed "
                "compile is recorded with its reason)",
            )


def _add_common(parser: argparse.ArgumentParser, default_batch: str) -> None:
    parser.add_argument(
        "--models", required=True, help="comma-separated: NAME, timm:NAME, NAME@sgd, NAME@repopt"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_ints,
        default=positive_ints(default_batch),
        help=f"comma-separated batch sizes (default {default_batch})",
    )
    parser.add_argument(
        "--image-size", type=positive_int, default=32, help="square input size (default 32)"
    )
    parser.add_argument(
        "--num-classes", type=positive_int, default=100, help="classifier outputs (default 100)"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=10, help="calls per timed window (default 10)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=5,
        help="timed windows per subject, interleaved; medians reported (default 5)",
    )
    add_threads(parser, default=os.cpu_count() or 1)
    add_out(parser, "file", "also write the JSON list of records here")
    add_reporting(parser, "the JSON list of records")


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
    else:
        words += ["--no-onnx"] * args.no_onnx + ["--compile"] * args.compile
    return shlex.join(words)


def _progress(message: str) -> None:
    print(f"reparam bench: {message}", file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    pass


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
    head = f"{record['model']:<18} {record['variant']:<11} batch {record['batch_size']:>4}  "
    if record["latency_ms"] is None:
        return head + f"failed: {record['error']}"
    return head + f"{record['latency_ms']:8.2f} ms  {record['images_per_s']:8.1f} img/s"


def run(args: argparse.Namespace) -> int:
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    if args.memory_budget_mb is not None and args.memory_budget_mb <= 0:
        raise UserError(f"--memory-budget-mb must be positive, got {args.memory_budget_mb}")
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
    progress = _quiet if args.no_progress else _progress
    if args.mode == "train":
        config = TrainBenchConfig(**common, memory_budget_mb=args.memory_budget_mb)
        results = run_train_bench(config, progress)
    else:
        config = InferBenchConfig(**common, onnx=not args.no_onnx, compile=args.compile)
        results = run_infer_bench(config, progress)
    if args.out:
        write_json(results, args.out)
    if args.json:
        print(json_text(results))
    else:  # the table, for people
        print("\n".join(_summary_line(record) for record in results))
    return 0
