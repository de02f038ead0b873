"""Top-1 of a run folder, checkpoint, fused model folder or ONNX file on a data set's val split.

  reparam eval runs/a0                           (on the data it was trained on)
  reparam eval deploy/a0 --data digits            (fused folder, data given)
  reparam eval deploy/a0/model.int8.onnx --data digits --json

Reports top1 (fraction, as in metrics.json), n_images, seconds (time spent in the model) and
images_per_s, and which checkpoint the weights are from. Images are prepared as in training: the
preprocessing the run, fused folder or ONNX file records (--image-size changes only its size);
the data's class names must be the model's.
"""

from __future__ import annotations

import argparse

from reparam.app.commands.arguments import add_data, add_reporting, add_threads, positive_int
from reparam.app.deploy.predict import evaluate_data, open_model
from reparam.app.train.state import describe_checkpoint
from reparam.files import json_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="MODEL", help="run folder, .safetensors, fused folder or .onnx"
    )
    add_data(parser, "its val split is evaluated (default: the data the model was trained on)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=64, help="evaluation batch size (default 64)"
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        help="input size (default: the model's; the recorded preprocessing is otherwise kept)",
    )
    add_threads(parser)
    add_reporting(parser)


def run(args: argparse.Namespace) -> int:
    predictor = open_model(args.model, args.threads)
    metrics = evaluate_data(
        predictor, args.data, args.image_size, args.batch_size, not args.no_progress
    )
    if args.json:
        print(json_text(metrics, indent=2))
    else:
        print(
            f"{args.model} ({metrics['kind']}; {describe_checkpoint(metrics['checkpoint'])}) on "
            f"{metrics['data']} val: top-1 {100 * metrics['top1']:.2f}% of "
            f"{metrics['n_images']} images, {metrics['seconds']:.2f} s in the model"
        )
    return 0
