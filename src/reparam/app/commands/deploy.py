"""Fuse a trained model and export it: fused weights, ONNX (checked against torch), INT8 (ORT PTQ).

  reparam deploy runs/a0 --out deploy/a0                       fused.safetensors + config.json
  reparam deploy runs/a0 --out deploy/a0 --onnx                + model.onnx (ORT vs torch checked)
  reparam deploy runs/a0 --out deploy/a0 --int8 --data digits --granularity per-tensor
                                                               + model.int8.onnx, quant.json
  reparam deploy --compare repvgg_a0 vgg_a0 runs/x --data digits --out cmp --epochs 8
      trains the model names (run folders are used as they are), quantizes every model with the
      same settings and prints the PTQ-drop table.

INT8: post-training static quantization, QDQ format, uint8 activations, int8 weights, by ONNX
Runtime's quantize_static (--backend ort, the default) or PyTorch's PT2E flow from torchao
(--backend pt2e: the same scheme, min/max calibration only). Calibration
uses --calib-images images of the data's train split; top-1 FP32/INT8 and agreement come from its
val split. Entropy calibration searches a --num-bins histogram (ORT's quantize_static alone would
silently fall back to MinMax); on ReLU VGGs that search clips the sparse late activations hard,
so check top-1 agreement before trusting it. Quantization-aware training: `reparam qat`.
"""

from __future__ import annotations

import argparse

import torch

from reparam.app.commands.arguments import (
    add_data,
    add_deploy_folder,
    deploy_folder_kwargs,
    positive_int,
    settings_from,
)
from reparam.app.train.state import describe_checkpoint
from reparam.errors import UserError
from reparam.files import json_text
from reparam.quant.ort import BACKENDS, CALIBRATIONS, GRANULARITIES, QuantSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="RUN_DIR_OR_CKPT",
        help="run folder, .safetensors checkpoint or fused folder (with --compare: "
        "several, or model names to train)",
    )
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (dynamic batch)")
    parser.add_argument(
        "--int8", action="store_true", help="also write model.int8.onnx + quant.json"
    )
    add_data(parser, "INT8 calibration (train split) and evaluation (val split)", "--calib-data")
    parser.add_argument(
        "--calib-images", type=int, default=256, help="calibration images (default 256)"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="ort",
        help="INT8 by ONNX Runtime (default) or PyTorch PT2E (torchao)",
    )
    parser.add_argument(
        "--granularity",
        choices=GRANULARITIES,
        default="per-channel",
        help="weight scales (default per-channel)",
    )
    parser.add_argument(
        "--calibration",
        choices=CALIBRATIONS,
        default="minmax",
        help="activation range method (default minmax)",
    )
    parser.add_argument(
        "--num-bins", type=int, default=2048, help="histogram bins for percentile/entropy"
    )
    parser.add_argument(
        "--percentile", type=float, default=99.999, help="percentile calibration cut"
    )
    parser.add_argument(
        "--keep-first-last-float",
        action="store_true",
        help="leave the first conv and the classifier in float",
    )
    parser.add_argument(
        "--image-size", type=int, help="export size (default: the run's image_size)"
    )
    parser.add_argument(
        "--latency-batch", type=positive_int, default=32, help="batch for FP32/INT8 latency"
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="quantize several models with identical settings and print the table",
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=8, help="--compare: epochs for model names"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=64, help="--compare: training batch size"
    )
    add_deploy_folder(parser, " (with --compare: the comparison folder)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    from reparam.app.deploy.compare import compare_ptq
    from reparam.app.deploy.pipeline import deploy
    from reparam.app.report import ptq_table

    settings = settings_from(args, QuantSettings)
    if args.compare:
        if not args.data:
            raise UserError(
                "--compare needs --data SPEC (training, calibration and evaluation data)"
            )
        result = compare_ptq(
            args.sources,
            args.data,
            args.out,
            settings,
            image_size=args.image_size or 32,
            train={"epochs": args.epochs, "batch_size": args.batch_size, "seed": 0},
            **deploy_folder_kwargs(args),
        )
        print(json_text(result, indent=2) if args.json else ptq_table(result))
        return 0
    if len(args.sources) != 1:
        raise UserError(
            f"deploy takes one model (got {len(args.sources)}); use --compare for several"
        )
    summary = deploy(
        args.sources[0],
        args.out,
        onnx=args.onnx,
        int8=args.int8,
        calib_data=args.data,
        settings=settings,
        image_size=args.image_size,
        latency_batch=args.latency_batch,
        **deploy_folder_kwargs(args),
    )
    if args.json:
        print(json_text(summary, indent=2))
        return 0
    print(f"fused model: {summary['fused']} ({describe_checkpoint(summary['checkpoint'])})")
    if "onnx" in summary:
        print(
            f"ONNX: {summary['onnx']['path']} "
            f"(max abs error vs torch {summary['onnx']['max_abs_err']:.2e})"
        )
    if "int8" in summary:
        q = summary["int8"]
        print(
            f"INT8: {q['path']}  top-1 FP32 {100 * q['top1_fp32']:.2f}% -> INT8 {100 * q['top1_int8']:.2f}% "
            f"(agreement {100 * q['top1_agreement']:.2f}%, "
            f"output SQNR {float(q['output_sqnr_db']):.1f} dB), "
            f"latency {q['latency_fp32_ms']:.1f} -> {q['latency_int8_ms']:.1f} ms "
            f"({q['speedup']:.2f}x, batch {args.latency_batch})"
        )
    return 0
