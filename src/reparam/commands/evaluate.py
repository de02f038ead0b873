"""Top-1 of a run folder, checkpoint, fused model folder or ONNX file on a data set's val split.

  reparam eval runs/a0                           (on the data it was trained on)
  reparam eval deploy/a0 --data digits            (fused folder, data given)
  reparam eval deploy/a0/model.int8.onnx --data digits --json

Reports top1 (fraction, as in metrics.json), n_images, seconds (time spent in the model) and images_per_s. The image size
defaults to the model's own (the run's image_size, or the size the ONNX file was exported at).
"""

from __future__ import annotations

import argparse

from ..checkpoint import json_text
from ..data import load_data
from ..deploy.predict import evaluate, open_model
from ..errors import UserError
from .arguments import add_data, add_reporting, add_threads, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="MODEL", help="run folder, .safetensors, fused folder or .onnx"
    )
    add_data(parser, "its val split is evaluated (default: the data the model was trained on)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=64, help="evaluation batch size (default 64)"
    )
    parser.add_argument("--image-size", type=positive_int, help="input size (default: the model's)")
    add_threads(parser)
    add_reporting(parser)


def run(args: argparse.Namespace) -> int:
    predictor = open_model(args.model, args.threads)
    image_size = args.image_size or predictor.image_size
    if not image_size:
        raise UserError(
            f"{args.model}: the model does not record its image size; pass --image-size"
        )
    data = args.data or predictor.config.get("data")
    if not data:
        raise UserError(f"{args.model}: the model does not record its data; pass --data SPEC")
    bundle = load_data(data, image_size)
    progress = not args.no_progress
    metrics = evaluate(predictor, bundle.val, bundle.num_classes, args.batch_size, progress)
    metrics.update(data=data, image_size=image_size)
    if args.json:
        print(json_text(metrics, indent=2))
    else:
        print(
            f"{args.model} ({metrics['kind']}) on {data} val: top-1 {100 * metrics['top1']:.2f}% "
            f"of {metrics['n_images']} images, {metrics['seconds']:.2f} s in the model"
        )
    return 0
