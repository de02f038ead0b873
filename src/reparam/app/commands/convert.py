"""Convert an official RepVGG, RepOpt-VGG or VanillaNet checkpoint (or timm's RepVGG) to reparam.

  reparam convert RepVGG-A0-train.pth --model repvgg_a0 --out a0/a0.safetensors
  reparam convert RepVGG-A0-deploy.pth --model vgg_a0 --out a0-fused/fused.safetensors
  reparam convert vanillanet_5.pth --model vanillanet_5 --out v5/v5.safetensors --ema
  reparam convert RepOpt-VGG-B1-target.pth --model repopt_vgg_b1 --scales RepOpt-VGG-B1-scales.pth --out b1/b1.safetensors
  reparam convert RepVGG-B1-train.pth --model repvgg_b1 --class-names imagenet.txt --out b1/b1.safetensors

The source layout (train or deploy form, official or timm) is detected from the keys; --layout
names it instead. Writes the weights and a config.json beside them, so the output folder opens
with reparam eval / reparam.load (a deploy-form checkpoint becomes a fused folder: name the
output fused.safetensors). The output folder must not be a run, fused, deploy or data folder.
Files are read with torch.load(weights_only=True): a checkpoint that needs pickled code to load
is refused.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from reparam.app.commands.arguments import add_out, add_reporting
from reparam.app.converted import check_convert_target, save_converted
from reparam.files import json_text
from reparam.models.convert import LAYOUTS, convert_checkpoint, read_class_names


def layouts_help() -> str:
    """The key layouts convert reads, one line each with an example key (the ``--help`` epilog)."""
    lines = ["key layouts read (detected from the keys; --layout names one):"]
    for layout in LAYOUTS.values():
        models = re.sub(r"\\w\+(\(\?<!_hs\))?", "*", layout.models).replace("(rep)?", "[rep]")
        lines.append(
            f"  {layout.name:<19} {layout.origin:<33} e.g. {layout.example:<32} -> {models}"
        )
    lines.append(
        "  weights may sit under 'state_dict' or 'model' (EMA: 'state_dict_ema', 'model_ema', "
        "'ema'),\n  with or without a DDP 'module.' prefix; reparam's own run and fused folders "
        "need no conversion"
    )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = layouts_help()
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
        "--class-names",
        metavar="FILE",
        help="class names, one per line in class order (e.g. ImageNet's 1000); recorded in "
        "config.json (default: 0, 1, ...)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing output and its config.json (only converted weights)",
    )
    add_reporting(parser)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_convert_target(out, args.force)
    class_names = read_class_names(args.class_names) if args.class_names else None
    converted = convert_checkpoint(
        args.source,
        args.model,
        args.layout,
        ema=args.ema,
        act_learn=args.act_learn,
        scales=args.scales,
        class_names=class_names,
    )
    config_path = save_converted(converted, out, args.force)
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
