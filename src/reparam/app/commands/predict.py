"""Classify image files with a trained model: the top classes, their names and probabilities.

  reparam predict cat.png dog.jpg --model runs/a0                  run folder (or .safetensors)
  reparam predict digit.png --model deploy/a0 --top-k 3             fused folder
  reparam predict digit.png --model deploy/a0/model.onnx --json     ONNX file (ONNX Runtime)

Each image is prepared as the model was trained (the preprocessing recorded in the run, deploy
folder or ONNX metadata: resize to the model's size, the same mean/std). Class names are the
data set's (class folders of folder:DIR, CIFAR label names); runs that predate them show the
class indices.
"""

from __future__ import annotations

import argparse

from reparam.app.commands.arguments import add_threads, positive_int
from reparam.app.deploy.predict import open_model, predict_images
from reparam.files import json_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    parser.add_argument(
        "--model", required=True, help="run folder, .safetensors, fused folder or .onnx file"
    )
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes shown (default 5)")
    add_threads(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON list on stdout")


def run(args: argparse.Namespace) -> int:
    predictor = open_model(args.model, args.threads)
    results = predict_images(predictor, args.images, args.top_k)
    if args.json:
        print(json_text(results, indent=2))
        return 0
    for result in results:
        print(result["image"])
        for entry in result["top_k"]:
            print(f"  {100 * entry['probability']:6.2f}%  {entry['name']} ({entry['class']})")
    return 0
