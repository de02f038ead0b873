"""Plain VGG-A0 on real images: its conv init, before and after, with the default recipe.

Rows (VGG-A0 trained directly as conv3x3-BN-ReLU, CIFAR-10 subset, 32x32, batch 64, the `basic`
recipe and its execution default, the budget of `benchmarks/cifar_dev.py`):

- ``before``: torch's default conv init (Kaiming-uniform, ``a = sqrt 5``; ``init="torch"``);
- ``after``: the default, each conv starting at the kernel a fresh RepVGG block fuses to
  (``init="repvgg"``);
- diagnostics: ``init="kaiming"`` (normal, fan-out, as timm's RepVGG and torchvision's VGG),
  and ``before`` at a quarter of the learning rate. (FP32 against bf16 for ``before``:
  ``benchmarks/cpu_paths.py accuracy``, no difference beyond the seed noise.)

The record also holds, per conv init (and RepVGG-A0's 3x3 branches), the relative step plain
SGD takes at the peak learning rate on the first batch at init, ``lr |grad| / |weight|`` of each
3x3 conv from the stem up: how fast each layer moves relative to its size.

Every finished run is saved to the record at once, with the command that produced it, and a
rerun skips what is recorded:

    .venv/bin/python benchmarks/plain_vgg.py \\
        --data cifar10:../shared/data/cifar10-dev/cifar-10-batches-py \\
        --out runs/plain-vgg --record benchmarks/results/plain_vgg_cifar10_dev.json --threads 1

The data is the project's shared 4000 + 660 image CIFAR-10 subset (outside the repository; a
fresh clone does not have it, and no test needs it).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import reparam
from reparam.app.bench.machine import machine_info
from reparam.app.dataspec import load_data
from reparam.app.train import fit, resolve_config
from reparam.files import read_json, write_json
from reparam.models.repvgg import PLAIN_INITS

# row -> overrides of the `basic` recipe (on top of vgg_a0 and the shared budget)
ROWS: dict[str, dict[str, Any]] = {
    "before": {"model_kwargs": {"init": "torch"}},
    "after": {},
    "kaiming": {"model_kwargs": {"init": "kaiming"}},
    "before_lr_quarter": {"model_kwargs": {"init": "torch"}, "lr_per_256": 0.025},
}
MAIN = ("before", "after")


def jobs(seeds: list[int], diagnostic_seeds: list[int]) -> list[tuple[str, int]]:
    """``(row, seed)``: the main rows first, seed by seed (the fix first), then the diagnostics."""
    order = [(row, seed) for seed in seeds for row in reversed(MAIN)]
    diagnostics = [row for row in ROWS if row not in MAIN]
    return order + [(row, seed) for seed in diagnostic_seeds for row in diagnostics]


def relative_steps(model_name: str, args: argparse.Namespace, **kwargs: Any) -> list[float]:
    """``lr |grad| / |weight|`` of each 3x3 conv of ``model_name``, stem first, after one
    backward pass at init (seed 0) on the first ``batch_size`` training images (evaluation
    transform, the recipe's loss)."""
    config = resolve_config("basic", {"data": args.data, "batch_size": args.batch_size})
    data = load_data(args.data, 32, eval_transform=config.preprocessing.transform())
    images, labels = next(iter(DataLoader(data.train, batch_size=args.batch_size)))
    torch.manual_seed(0)
    model = reparam.create_model(model_name, num_classes=data.num_classes, **kwargs).train()
    nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)(model(images), labels).backward()
    return [
        config.resolved_lr * (m.weight.grad.norm() / m.weight.norm()).item()
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]


def train_row(row: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one row and return what the record keeps of it."""
    values = {
        "model": "vgg_a0",
        "data": args.data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": 32,
        "seed": seed,
        "threads": args.threads,
        "force": True,
        "out": str(Path(args.out) / f"{row}-seed{seed}"),
        **ROWS[row],
    }
    config = resolve_config("basic", values)
    metrics = fit(config, progress=False)
    if metrics.get("interrupted"):
        raise SystemExit(f"{row} seed {seed} interrupted; rerun to train it again")
    log = read_json(Path(config.out) / "config.json")
    return {
        "top1": metrics["top1"],
        "best_top1": metrics["best_top1"],
        "train_loss": metrics["train_loss"],
        "train_top1": metrics["train_top1"],
        "amp": log["amp"],
        "channels_last": log["channels_last"],
        "lr": log["lr"],
        "model_kwargs": log["model_kwargs"],
        "seconds": metrics["seconds"],
    }


def table(record: dict[str, Any]) -> str:
    """Markdown: top-1 (%) of the last epoch per row, mean +- std and each seed."""
    lines = ["| row | top-1 % (last epoch) | per seed |", "|---|---|---|"]
    for row in ROWS:
        runs = record["rows"].get(row)
        if not runs:
            continue
        values = [100 * runs[seed]["top1"] for seed in sorted(runs, key=int)]
        spread = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        seeds = ", ".join(
            f"{seed}: {100 * runs[seed]['top1']:.2f}" for seed in sorted(runs, key=int)
        )
        lines.append(
            f"| {row} | {statistics.mean(values):.2f}{spread} (n={len(values)}) | {seeds} |"
        )
    return "\n".join(lines)


def steps_table(record: dict[str, Any]) -> str:
    """Markdown: the relative steps at init of the stem, the largest and the median conv."""
    lines = ["| at init: lr \\|g\\|/\\|w\\| | stem | largest | median |", "|---|---|---|---|"]
    for label, steps in record.get("relative_steps_at_init", {}).items():
        median = statistics.median(steps)
        lines.append(f"| {label} | {steps[0]:.4f} | {max(steps):.4f} | {median:.4f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cifar10:../shared/data/cifar10-dev/cifar-10-batches-py")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", default="0,1", help="seeds of the before and after rows")
    parser.add_argument("--diagnostic-seeds", default="0,1", help="seeds of the other rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/plain-vgg", help="folder: the work folder")
    parser.add_argument(
        "--record",
        default="benchmarks/results/plain_vgg_cifar10_dev.json",
        help="file: the results",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record_path = Path(args.record)
    record = read_json(record_path) if record_path.is_file() else {"rows": {}}
    settings = {"data": args.data, "epochs": args.epochs, "batch_size": args.batch_size}
    if record.get("settings", settings) != settings:
        parser.error(f"{record_path} was recorded with {record['settings']}, not {settings}")
    record["settings"] = settings
    command = shlex.join(["python", *sys.argv])
    if "relative_steps_at_init" not in record:
        subjects = {f"vgg_a0 init={init}": ("vgg_a0", {"init": init}) for init in PLAIN_INITS}
        subjects["repvgg_a0 (3x3 branch)"] = ("repvgg_a0", {})
        record["relative_steps_at_init"] = {
            label: relative_steps(name, args, **kwargs)
            for label, (name, kwargs) in subjects.items()
        }
        write_json(record, record_path)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    diagnostic_seeds = [int(s) for s in args.diagnostic_seeds.split(",") if s]
    for row, seed in jobs(seeds, diagnostic_seeds):
        if str(seed) in record["rows"].get(row, {}):
            continue
        result = {**train_row(row, seed, args), "command": command}
        record["rows"].setdefault(row, {})[str(seed)] = result
        record["machine"] = machine_info()
        record["table"] = table(record)
        write_json(record, record_path)
        print(f"{row} seed {seed}: top-1 {100 * result['top1']:.2f}%", flush=True)
    print(record["table"], steps_table(record), sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
