"""Train a model into a run folder (config.json, metrics.json, log.csv, TensorBoard, checkpoints).

Every field of the recipe can be overridden: the flags below, or --set KEY=VALUE for any field
(e.g. --set ema=true --set mixup=0.2). Presets: basic (default), repopt-vgg, repopt-hs,
repvgg, vanillanet, resnet-rs, resnet-rs50 ... resnet-rs420; or a YAML/JSON recipe file.
--list-recipes shows them with their sources; --list-recipes --json adds the JSON schema of the
fields (types, defaults, allowed ranges).

Examples:
  reparam train --model repvgg_a0 --data digits --epochs 8 --image-size 32
  reparam train --recipe resnet-rs50 --data folder:imagenet --out runs/rs50
  reparam train --out runs/rs50 --resume                # continue an interrupted run
  reparam train --list-recipes --json                   # presets and the config's JSON schema
  torchrun --nproc_per_node=4 -m reparam train --model repvgg_b1 --data cifar10:DIR ...
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from reparam.app.commands.arguments import DATA_SPECS, add_reporting
from reparam.app.train import (
    TrainConfig,
    fit,
    parse_overrides,
    parse_value,
    recipes,
    resolve_config,
    resume_config,
)
from reparam.errors import RunInterrupted, UserError
from reparam.files import json_text

# CLI flag -> (config field, type, help); everything else goes through --set
_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--model", "model", str, "registered model name (reparam models)"),
    ("--data", "data", str, f"data to train on ({DATA_SPECS})"),
    ("--epochs", "epochs", int, "training epochs"),
    ("--batch-size", "batch_size", int, "global batch size (all processes)"),
    ("--image-size", "image_size", int, "input resolution"),
    ("--lr", "lr", float, "absolute learning rate (default: lr_per_256 x batch/256)"),
    ("--optimizer", "optimizer", str, "sgd | adamw | lamb"),
    ("--weight-decay", "weight_decay", float, "weight decay"),
    ("--label-smoothing", "label_smoothing", float, "label smoothing"),
    ("--warmup-epochs", "warmup_epochs", float, "linear warmup length in epochs"),
    ("--randaugment", "randaugment", str, "timm RandAugment string, e.g. rand-m15-n2-mmax15"),
    ("--drop-rate", "drop_rate", float, "dropout before the classifier"),
    ("--drop-path-rate", "drop_path_rate", float, "stochastic depth rate (residual models)"),
    ("--grad-clip", "grad_clip", float, "clip the global gradient norm"),
    ("--accum-steps", "accum_steps", int, "gradient accumulation steps"),
    ("--seed", "seed", int, "random seed"),
    ("--workers", "workers", int, "data loader worker processes"),
    ("--threads", "threads", int, "CPU threads per training process (default: all cores)"),
    ("--out", "out", str, "folder: the run folder (default runs/<model>-<data>)"),
]
_SWITCHES = [
    ("ema", "EMA of weights and BN buffers (evaluated too)"),
    (
        "amp",
        "bf16 autocast (default: on for a CPU with native bf16 and images of 32 px or more, the measured fastest path)",
    ),
    ("channels_last", "channels_last memory format (default: as --amp)"),
    ("compile", "torch.compile the model"),
    ("nesterov", "Nesterov momentum for sgd"),
    ("grad_mult", "RepOpt gradient multipliers when the model has them"),
    (
        "force",
        "start afresh in an --out that holds a run (its run files are replaced; never other folders)",
    ),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="basic", help="preset name or .yaml/.json recipe file")
    for flag, dest, kind, help_text in _FLAGS:
        parser.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS, help=help_text)
    for name, help_text in _SWITCHES:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=argparse.SUPPRESS,
            action=argparse.BooleanOptionalAction,
            help=help_text,
        )
    parser.add_argument(
        "--scales",
        default=None,
        metavar="FILE",
        help="RepOpt scales file, passed as model_kwargs['scales']",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe field (repeatable)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from last.state.pt (its config.json is reused)",
    )
    parser.add_argument(
        "--list-recipes",
        action="store_true",
        help="print the presets (name -> source, fields) as JSON and exit; with --json, one "
        'object {"recipes": the presets, "schema": the JSON schema of the config fields}',
    )
    add_reporting(
        parser, "the metrics (with --list-recipes: the presets and schema) as one JSON object"
    )


def _explicit(args: argparse.Namespace) -> dict[str, Any]:
    values = {dest: getattr(args, dest) for _, dest, _, _ in _FLAGS if hasattr(args, dest)}
    values.update({name: getattr(args, name) for name, _ in _SWITCHES if hasattr(args, name)})
    values.update(parse_overrides(args.overrides))
    if args.scales is not None:
        kwargs = values.get("model_kwargs", {})
        if isinstance(kwargs, str):
            kwargs = parse_value(kwargs)
        values["model_kwargs"] = {**kwargs, "scales": args.scales}
    return values


def build_config(args: argparse.Namespace) -> Any:
    """The resolved :class:`TrainConfig` for parsed CLI arguments (saved config on --resume)."""
    explicit = _explicit(args)
    if args.resume:
        if "out" not in explicit:
            raise UserError("--resume needs --out DIR (the run folder to continue)")
        return resume_config(explicit["out"], explicit)
    config = resolve_config(args.recipe, explicit)
    if "out" not in explicit:
        data_name = config.data.split(":")[0]
        config.out = str(Path("runs") / f"{config.model}-{data_name}")
    return config


def _stopped(result: dict[str, Any], out: str, command_line: str) -> int:
    """Say (on rank 0) what a stopped run left and how to go on: planned stops exit 0,
    signals 128 + the signal number (:class:`RunInterrupted`)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return 128 + result["signal"] if result["signal"] else 0
    if result["resumable"]:
        message = (
            f"{result['stopped']}; continue with: reparam train --out {shlex.quote(out)} --resume"
        )
    else:
        message = f"{result['stopped']}; nothing to resume, start again with: {command_line}"
    if result["signal"]:
        raise RunInterrupted(message, result["signal"])
    print(f"reparam train: {message}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list_recipes:
        listing = recipes()
        if args.json:
            listing = {"recipes": listing, "schema": TrainConfig.model_json_schema()}
        print(json_text(listing, indent=2, sort_keys=True))
        return 0
    config = build_config(args)
    try:
        metrics = fit(config, progress=not args.no_progress)
    except ValueError as err:  # a model that rejects the recipe's kwargs
        raise UserError(str(err)) from None
    if metrics.get("interrupted"):
        return _stopped(metrics, config.out, args.command_line)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports
    if args.json:
        print(json_text(metrics, sort_keys=True))
    else:
        print(
            f"{config.model} on {config.data}: {_figures(metrics)}; {metrics['epochs']} epochs, "
            f"{metrics['seconds']:.1f} s ({metrics['train_images_per_s']:.0f} img/s); run folder "
            f"{config.out}",
            file=sys.stderr,
        )
    return 0


def _figures(metrics: dict[str, Any]) -> str:
    """The top-1 of the checkpoint that eval, deploy and load use (``best.safetensors``, its
    epoch and weights), then the last epoch's when that is another epoch."""
    ema = f", EMA {100 * metrics['top1_ema']:.2f}%" if metrics["top1_ema"] is not None else ""
    last = f"last epoch {metrics['epochs']}: top-1 {100 * metrics['top1']:.2f}%{ema}"
    if metrics["best_source"] is None:  # no checkpoint qualified (annealing unfinished)
        return f"{last} (no best.safetensors: eval, deploy and load use last.safetensors)"
    weights = "EMA" if metrics["best_source"] == "ema" else "raw"
    best = (
        f"top-1 {100 * metrics['best_top1']:.2f}% at epoch {metrics['best_epoch']} ({weights} "
        "weights in best.safetensors, which eval, deploy and load use)"
    )
    return best if metrics["best_epoch"] == metrics["epochs"] else f"{best}; {last}"
