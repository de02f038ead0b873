"""Hyper-Search: train a RepOpt-VGG model's HS model and write its searched scales file.

The HS model (``<model>_hs``: BN(s conv3x3 + t conv1x1 + s_id x) -> ReLU, trainable per-channel
scales) is trained with the training engine, by default with the RepOptimizers repository's
Hyper-Search recipe (preset repopt-hs: 240 epochs, Nesterov SGD, lr 0.1 x batch/256, wd 4e-5 also
on the identity scales, 5 warmup epochs, no label smoothing, no clipping). Its final scales are
written as a safetensors scale file whose metadata records model, data, epochs, seed and top-1. Use it with
``reparam train --model <model> --scales FILE``.

Examples:
  reparam hypersearch --model repopt_vgg_a0 --data digits --epochs 8 --out scales/a0.safetensors
  reparam hypersearch --model repopt_vgg_b1 --data cifar100:DIR \\
      --out scales/b1-c100.safetensors --run-dir runs/hs-b1
"""

from __future__ import annotations

import argparse
import sys

from reparam.app.commands.arguments import add_data, add_out, add_reporting, add_threads
from reparam.files import json_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="RepOpt-VGG model (repopt_vgg_a0 ... repopt_vgg_l2) or its _hs model",
    )
    add_data(parser, "data to search on (default digits; with --resume: the run's)")
    parser.add_argument("--epochs", type=int, default=None, help="HS training epochs")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="absolute learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--recipe",
        default="repopt-hs",
        help="training preset or recipe file (default repopt-hs: the official Hyper-Search recipe)",
    )
    add_out(
        parser,
        "file",
        "the scale file to write (default scales/<model>-<data name>.safetensors; a data "
        "folder's name is followed by a hash of its path)",
    )
    add_threads(parser)
    parser.add_argument(
        "--run-dir",
        default=None,
        metavar="DIR",
        help="the HS run folder (default runs/hs-<model>-<data name>, named as the scale file)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the interrupted search in --run-dir"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing scale file and Hyper-Search run folder (never other files)",
    )
    add_reporting(parser, "the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    from reparam.app.train.hypersearch import default_scale_file, hyper_search

    out = args.out or default_scale_file(args.model, args.data or "digits")
    summary = hyper_search(
        args.model,
        args.data,
        out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        seed=args.seed,
        lr=args.lr,
        run_dir=args.run_dir,
        recipe=args.recipe,
        overrides={"threads": args.threads} if args.threads else None,
        resume=args.resume,
        force=args.force,
        progress=not args.no_progress,
    )
    if args.json:
        print(json_text(summary, sort_keys=True))
    else:
        print(
            f"{summary['hs_model']} on {summary['data']}: top-1 {100 * summary['top1']:.2f}% after "
            f"{summary['epochs']} epochs ({summary['seconds']:.0f} s); scales written to "
            f"{summary['scales']} (use: reparam train --model {summary['model']} "
            f"--scales {summary['scales']})",
            file=sys.stderr,
        )
    return 0
