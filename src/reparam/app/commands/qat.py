"""Quantization-aware training: fine-tune a trained run with fake INT8 and write a deploy folder.

  reparam qat runs/a0 --data cifar10:DIR --epochs 2 --out deploy/a0-qat
  reparam qat runs/repvgg --data digits --route train --out deploy/naive     (multi-branch QAT)

PyTorch's PT2E flow (torchao) with ONNX Runtime's QDQ scheme: uint8 activations, int8 symmetric
weights per channel (or per tensor). RepOpt-VGG and plain VGG are fine-tuned in their training
structure (conv-BN-ReLU, RepOpt grad mults kept). RepVGG by default takes the official route:
fuse, put a BN after each fused conv, QAT that plain network (--route fused-bn); --route train
quantizes every branch instead and deploys the branches unfused. The folder holds what
`reparam deploy --int8` writes (fused.safetensors, model.onnx, model.int8.onnx, quant.json,
deploy.json): top-1 FP32 (the run) and INT8 (after QAT) on the data's val split, agreement,
output SQNR and ORT latency. `reparam eval` and `reparam report` read it as they read PTQ ones.
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
from reparam.files import json_text
from reparam.quant.ort import GRANULARITIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_DIR", help="trained run folder or checkpoint")
    add_data(parser, "QAT training (train split) and evaluation (val split)", required=True)
    parser.add_argument("--epochs", type=positive_int, default=2, help="QAT epochs (default 2)")
    parser.add_argument(
        "--granularity", choices=GRANULARITIES, default="per-channel", help="weight scales"
    )
    parser.add_argument(
        "--route",
        choices=("auto", "train", "fused-bn"),
        default="auto",
        help="train: QAT of the training structure; fused-bn: fuse, add BNs, QAT (official "
        "RepVGG); auto (default): train when training and deploy structures match",
    )
    parser.add_argument("--lr", type=float, help="QAT learning rate (default: 1%% of the run's)")
    parser.add_argument("--batch-size", type=positive_int, help="default: the run's")
    parser.add_argument(
        "--distill", action="store_true", help="logit distillation from the FP32 model"
    )
    parser.add_argument(
        "--freeze-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="BN normalises with its running statistics during QAT (default: on)",
    )
    parser.add_argument("--seed", type=int, default=0, help="data order seed")
    parser.add_argument(
        "--eval-images",
        type=positive_int,
        default=256,
        help="train-split images that check model.int8.onnx against torch",
    )
    add_deploy_folder(parser)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    from reparam.app.deploy.qat import QATSettings, qat

    settings = settings_from(args, QATSettings)
    summary = qat(
        args.source,
        args.data,
        args.out,
        settings,
        eval_images=args.eval_images,
        **deploy_folder_kwargs(args),
    )
    if args.json:
        print(json_text(summary, indent=2))
        return 0
    q = summary["int8"]
    print(
        f"QAT INT8 ({q['settings']['route']} route, {q['settings']['granularity']}) of "
        f"{describe_checkpoint(summary['checkpoint'])}: {q['path']}  "
        f"top-1 FP32 {100 * q['top1_fp32']:.2f}% -> INT8 {100 * q['top1_int8']:.2f}% "
        f"(agreement {100 * q['top1_agreement']:.2f}%), latency {q['latency_fp32_ms']:.1f} -> "
        f"{q['latency_int8_ms']:.1f} ms"
    )
    return 0
