"""List the registered models with parameters and MACs (train form and fused form).

Names are those of reparam.create_model; with timm use the reparam_ prefix
(timm.create_model("reparam_repvgg_a0")).
"""

from __future__ import annotations

import argparse
import fnmatch

from tqdm import tqdm

from reparam.app.commands.arguments import add_reporting, positive_int
from reparam.files import json_text
from reparam.fuse import prepare_for_deploy, reparameterize
from reparam.models import create_model, list_models
from reparam.models.summary import count_macs, count_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pattern", nargs="?", default="*", help="shell-style filter, e.g. 'repvgg_*'"
    )
    parser.add_argument(
        "--image-size", type=positive_int, default=224, help="input size for MACs (default 224)"
    )
    parser.add_argument("--num-classes", type=positive_int, default=1000)
    parser.add_argument(
        "--names-only", action="store_true", help="list names without building models"
    )
    add_reporting(parser)


def model_row(name: str, image_size: int, num_classes: int) -> dict:
    model = create_model(name, num_classes=num_classes).eval()
    row = {"model": name, "params": count_params(model), "macs": count_macs(model, image_size)}
    fused = reparameterize(prepare_for_deploy(model))  # what the model fuses to at the end
    row.update(fused_params=count_params(fused), fused_macs=count_macs(fused, image_size))
    return row


def run(args: argparse.Namespace) -> int:
    names = [n for n in list_models() if fnmatch.fnmatch(n, args.pattern)]
    if args.names_only:
        rows = [{"model": n} for n in names]
    else:
        rows = [
            model_row(n, args.image_size, args.num_classes)
            for n in tqdm(names, desc="models", disable=args.no_progress or len(names) < 4)
        ]
    if args.json:
        print(
            json_text(
                {"image_size": args.image_size, "num_classes": args.num_classes, "models": rows}
            )
        )
        return 0
    if args.names_only:
        print("\n".join(names))
        return 0

    def millions(value: int) -> str:
        return f"{value / 1e6:.2f}M"

    def giga(value: int) -> str:
        return f"{value / 1e9:.3f}G"

    print(
        f"{'model':<24} {'params':>9} {'MACs':>9} {'fused params':>13} {'fused MACs':>11}   @ {args.image_size}px"
    )
    for r in rows:
        print(
            f"{r['model']:<24} {millions(r['params']):>9} {giga(r['macs']):>9} "
            f"{millions(r['fused_params']):>13} {giga(r['fused_macs']):>11}"
        )
    return 0
