"""Convert an official RepVGG, RepOpt-VGG or VanillaNet checkpoint (or timm's RepVGG) to reparam.

  reparam convert RepVGG-A0-train.pth --model repvgg_a0 --out a0/a0.safetensors
  reparam convert RepVGG-A0-deploy.pth --model vgg_a0 --out a0-fused/fused.safetensors
  reparam convert vanillanet_5.pth --model vanillanet_5 --out v5/v5.safetensors --ema
  reparam convert RepOpt-VGG-B1-target.pth --model repopt_vgg_b1 --scales RepOpt-VGG-B1-scales.pth --out b1/b1.safetensors

The source layout (train or deploy form, official or timm) is detected from the keys; --layout
names it instead. Writes the weights and a config.json beside them, so the output folder opens
with reparam eval / reparam.load (a deploy-form checkpoint becomes a fused folder: name the
output fused.safetensors). Files are read with torch.load(weights_only=True): a checkpoint that
needs pickled code to load is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import check_writable, json_text
from ..errors import UserError
from ..models.convert import LAYOUTS, convert_checkpoint, save_converted
from .arguments import add_out, add_reporting


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="official checkpoint (.pth or .safetensors)")
    parser.add_argument("--model", required=True, help="the reparam model, e.g. repvgg_a0")
    add_out(
        parser,
        "file",
        "the .safetensors to write (config.json is written beside it)",
        required=True,
    )
    parser.add_argument(
        "--layout", choices=sorted(LAYOUTS), help="the source key layout (default: detected)"
    )
    parser.add_argument(
        "--ema", action="store_true", help="convert the EMA weights of a training checkpoint"
    )
    parser.add_argument(
        "--act-learn",
        type=float,
        help="VanillaNet training form: the official act_learn (default 1.0, end of training)",
    )
    parser.add_argument(
        "--scales", metavar="FILE", help="RepOpt-VGG target: its scale file (official .pth)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an existing output and its config.json"
    )
    add_reporting(parser)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    taken = [p for p in (out, out.parent / "config.json") if p.exists()]
    if taken and not args.force:
        raise UserError(f"{taken[0]} exists; pass --force to replace it")
    check_writable(out)
    converted = convert_checkpoint(
        args.source,
        args.model,
        args.layout,
        ema=args.ema,
        act_learn=args.act_learn,
        scales=args.scales,
    )
    config_path = save_converted(converted, out)
    summary = {
        "out": str(out),
        "config": str(config_path),
        "model": converted.model,
        "num_classes": converted.num_classes,
        "layout": converted.layout.name,
        "fused": converted.layout.fused,
        "tensors": len(converted.state_dict),
    }
    if args.json:
        print(json_text(summary, indent=2))
    else:
        form = "deploy form" if converted.layout.fused else "training form"
        print(
            f"{args.source} ({converted.layout.name}) -> {out} + {config_path.name}: "
            f"{converted.model}, {form}, {converted.num_classes} classes; "
            f"open it with reparam eval {out.parent if converted.layout.fused else out}"
        )
    return 0
