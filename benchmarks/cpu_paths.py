"""The CPU training paths side by side: speed against the measured peak, and the accuracy check.

Paths (``reparam.app.train`` runs each with ``TrainConfig.amp`` / ``channels_last``):

- ``fp32``: FP32, NCHW, eager (the reference; the default on CPUs without native bf16);
- ``bf16``: bf16 autocast of the forward and the loss (``torch.autocast("cpu", torch.bfloat16)``);
- ``channels_last``: FP32 with the model and the batch in NHWC memory format;
- ``bf16_channels_last``: both (the default on CPUs with native bf16 from 32 px,
  ``reparam.app.train.execution_defaults``).

``speed`` times one training step of RepOpt-VGG-A0 (RepOptSGD), RepVGG-A0 and plain VGG-A0 on
every path, all interleaved (``reparam.app.bench.timing``), and reports the FLOP/s each reaches as a
fraction of the machine's peak. Training FLOPs per image = 3 x forward MACs x 2 (backward costs two
forwards; convolutions and linear layers only, ``reparam.models.summary.count_macs``). The peak is
the **measured matmul peak**, the best ``torch.mm`` of two square matrices (4096 by default) in
FP32 and in bf16 at the same thread count, not a datasheet figure:

    .venv/bin/python benchmarks/cpu_paths.py speed --settings 32x64,224x16 \\
        --record benchmarks/results/cpu_paths.json

``accuracy`` trains each model with three seeds on the CIFAR-10 subset (``basic`` recipe, 15
epochs, batch 64, as ``benchmarks/cifar_dev.py``) on ``fp32`` and on each path in ``--paths``, so
that a faster path becomes the CPU default only if its top-1 matches FP32 within noise (Welch's
t-test at 95 %: with 3 seeds a side the t quantile is 3-4, not the large-sample 2). Every
finished run is saved to the record at once; a rerun skips what is recorded:

    .venv/bin/python benchmarks/cpu_paths.py accuracy --paths bf16 \\
        --record benchmarks/results/cpu_paths_accuracy.json
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from reparam import create_model
from reparam.app.bench.machine import machine_info
from reparam.app.bench.subjects import ModelSpec, TrainSubject
from reparam.app.bench.timing import interleaved_windows, paired_ratio
from reparam.app.bench.train import in_fresh_process
from reparam.app.train import fit, resolve_config
from reparam.extras import require
from reparam.files import read_json, write_json
from reparam.models.summary import count_macs

MODELS = ("repopt_vgg_a0", "repvgg_a0", "vgg_a0")
PATHS = {  # name -> TrainSubject / TrainConfig options
    "fp32": {"amp": False, "channels_last": False},
    "bf16": {"amp": True, "channels_last": False},
    "channels_last": {"amp": False, "channels_last": True},
    "bf16_channels_last": {"amp": True, "channels_last": True},
}
NUM_CLASSES = 100  # speed only; the accuracy runs use the data's 10 classes
TRAIN_FLOPS_PER_MAC = 3 * 2  # forward + backward (two forwards' work), 2 FLOPs per MAC


def matmul_peak_flops(dtype: torch.dtype, size: int, repeats: int) -> float:
    """The best FLOP/s of ``torch.mm`` on two ``size x size`` matrices of ``dtype``."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
    torch.mm(a, b)  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _parse_settings(text: str) -> list[tuple[int, int]]:
    """``"32x64,224x16"`` -> ``[(32, 64), (224, 16)]`` (image size x batch)."""
    settings = []
    for item in text.split(","):
        size, _, batch = item.partition("x")
        settings.append((int(size), int(batch)))
    return settings


def _parse_paths(text: str) -> list[str]:
    paths = [p for p in text.split(",") if p]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown path(s) {unknown}; choose from {list(PATHS)}")
    return paths


def _one_step(model: str, path: str, size: int, batch: int, threads: int) -> None:
    torch.set_num_threads(threads)
    TrainSubject(ModelSpec(model), batch, size, NUM_CLASSES, **PATHS[path]).step()


def crash_of(model: str, path: str, size: int, batch: int, threads: int) -> str | None:
    """``None`` when one training step of ``model`` on ``path`` runs in a fresh process, else
    what killed it. Channels-last steps are probed so: oneDNN's 1x1 stride-2 NHWC weight
    gradient with fewer input channels than its block (RepVGG's stem branch, 3 channels)
    writes past its workspace (uxlfoundation/oneDNN#6035); here it kills RepVGG-A0 at 224 px."""
    try:
        in_fresh_process(_one_step, model, path, size, batch, threads)
    except BrokenProcessPool:
        return "the process died in its first training step (native crash)"
    return None


def measure_speed(
    size: int, batch: int, args: argparse.Namespace, peak: dict[str, float]
) -> list[dict[str, Any]]:
    """One row per (model, path) at ``size`` px and ``batch``, all subjects interleaved; a
    channels-last subject that crashes its probe (:func:`crash_of`) gets an ``error`` row."""
    setting = {"image_size": size, "batch_size": batch}
    crashed = {
        (model, path): error
        for model in MODELS
        for path in args.paths
        if PATHS[path]["channels_last"]
        and (error := crash_of(model, path, size, batch, args.threads))
    }
    keys = [(m, p) for m in MODELS for p in args.paths if (m, p) not in crashed]
    subjects = {
        (model, path): TrainSubject(ModelSpec(model), batch, size, NUM_CLASSES, **PATHS[path])
        for model, path in keys
    }
    macs = {m: count_macs(create_model(m, num_classes=NUM_CLASSES), size) for m in MODELS}
    windows = interleaved_windows(
        [subject.step for subject in subjects.values()], args.steps, args.warmup, args.repeats
    )
    images_per_s = {
        key: [batch / w.seconds_per_call for w in subject_windows]
        for key, subject_windows in zip(keys, windows)
    }
    rows = []
    for model in MODELS:
        for path in args.paths:
            if (model, path) in crashed:
                rows.append(
                    {"model": model, "path": path, **setting, "error": crashed[model, path]}
                )
                continue
            median = statistics.median(images_per_s[model, path])
            flops = median * TRAIN_FLOPS_PER_MAC * macs[model]
            fp32 = images_per_s.get((model, "fp32"))
            rows.append(
                {
                    "model": model,
                    "path": path,
                    **setting,
                    "optimizer": subjects[model, path].optimizer_name,
                    "train_images_per_s": median,
                    "window_images_per_s": images_per_s[model, path],
                    "speedup_vs_fp32": None
                    if fp32 is None
                    else paired_ratio(images_per_s[model, path], fp32),
                    "forward_macs_per_image": macs[model],
                    "train_flops_per_s": flops,
                    "fraction_of_fp32_matmul_peak": flops / peak["fp32_flops_per_s"],
                    "fraction_of_bf16_matmul_peak": flops / peak["bf16_flops_per_s"],
                }
            )
    return rows


def speed_table(record: dict[str, Any]) -> str:
    """Markdown: the rows, then the measured matmul peaks they are a fraction of."""
    peak = record["peak"]
    lines = [
        "| model | px | batch | path | train img/s | x fp32 (paired) | GFLOP/s | % of FP32 "
        "matmul peak | % of BF16 matmul peak |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['image_size']} | {r['batch_size']} | {r['path']} | "
                f"{r['error']} | | | | |"
            )
            continue
        speedup = "" if r["speedup_vs_fp32"] is None else f"{r['speedup_vs_fp32']:.2f}x"
        lines.append(
            f"| {r['model']} | {r['image_size']} | {r['batch_size']} | {r['path']} | "
            f"{r['train_images_per_s']:.1f} | {speedup} | {r['train_flops_per_s'] / 1e9:.1f} | "
            f"{100 * r['fraction_of_fp32_matmul_peak']:.1f} | "
            f"{100 * r['fraction_of_bf16_matmul_peak']:.1f} |"
        )
    lines += [
        "",
        f"Peak = the measured matmul peak (best `torch.mm` of two {peak['matmul_size']}x"
        f"{peak['matmul_size']} matrices, {peak['threads']} threads): FP32 "
        f"{peak['fp32_flops_per_s'] / 1e9:.0f} GFLOP/s, BF16 {peak['bf16_flops_per_s'] / 1e9:.0f} "
        "GFLOP/s. Training FLOPs per image = 3 x forward MACs x 2 (convolutions and linear "
        "layers).",
    ]
    return "\n".join(lines)


def run_speed(args: argparse.Namespace) -> dict[str, Any]:
    peak = {
        "matmul_size": args.matmul_size,
        "threads": args.threads,
        "fp32_flops_per_s": matmul_peak_flops(torch.float32, args.matmul_size, args.repeats),
        "bf16_flops_per_s": matmul_peak_flops(torch.bfloat16, args.matmul_size, args.repeats),
    }
    machine = machine_info()
    rows = []
    for size, batch in args.settings:
        print(f"speed: {size} px, batch {batch}", file=sys.stderr, flush=True)
        rows += measure_speed(size, batch, args, peak)
    machine["load_average_after"] = machine_info()["load_average"]
    record = {"peak": peak, "rows": rows, "machine": machine}
    record["table"] = speed_table(record)
    return record


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def welch(sample: list[float], reference: list[float]) -> tuple[float, float, float]:
    """``(difference of the means, its 95 % noise bound, two-sided p)`` by Welch's t-test: the
    bound is ``t(0.975, df) * se``, with ``se = sqrt(s1^2 / n1 + s2^2 / n2)`` and the
    Welch-Satterthwaite ``df`` (with 3 seeds a side, ``t`` is 3-4, not the large-sample 2)."""
    a, b = (statistics.variance(x) / len(x) for x in (sample, reference))
    se = math.sqrt(a + b)
    df = (a + b) ** 2 / (a**2 / (len(sample) - 1) + b**2 / (len(reference) - 1))
    diff = statistics.mean(sample) - statistics.mean(reference)
    t = require("scipy.stats", extra="bench").t
    return diff, t.ppf(0.975, df) * se, 2 * t.sf(abs(diff) / se, df)


def accuracy_table(record: dict[str, Any]) -> str:
    """Markdown: top-1 mean +- std per model and path, and the difference to fp32 with its 95 %
    noise bound and p-value (:func:`welch`); a path matches fp32 when the difference is within
    the bound."""
    lines = [
        "| model | path | top-1 % (mean +- std, n) | train img/s | top-1 - fp32 (pp) | "
        "noise bound (pp) | p | matches fp32 |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for model, by_path in record["rows"].items():
        reference = [100 * r["top1"] for r in by_path.get("fp32", {}).values()]
        for path, by_seed in by_path.items():
            top1 = [100 * r["top1"] for r in by_seed.values()]
            speed = statistics.mean(r["train_images_per_s"] for r in by_seed.values())
            mean, std = _mean_std(top1)
            cells = ["", "", "", ""]
            if path != "fp32" and len(top1) > 1 and len(reference) > 1:
                diff, bound, p = welch(top1, reference)
                matches = "yes" if abs(diff) <= bound else "no"
                cells = [f"{diff:+.2f}", f"{bound:.2f}", f"{p:.2f}", matches]
            lines.append(
                f"| {model} | {path} | {mean:.2f} +- {std:.2f} (n={len(top1)}) | {speed:.1f} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def _scales_file(pattern: str, seed: int) -> str | None:
    return pattern.format(seed=seed) if pattern else None


def train_run(model: str, path: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One CIFAR-10 run (``reparam.app.train.fit``) of ``model`` on ``path``."""
    scales = _scales_file(args.scales, seed)
    kwargs = {"scales": scales} if model == "repopt_vgg_a0" and scales else {}
    values = {
        "data": args.data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": 32,
        "seed": seed,
        "threads": args.threads,
        "force": True,
        "model": model,
        "model_kwargs": kwargs,
        **PATHS[path],
        "out": str(Path(args.out) / f"{model}-{path}-seed{seed}"),
    }
    metrics = fit(resolve_config("basic", values), progress=False)
    return {
        "top1": metrics["top1"],
        "train_images_per_s": metrics["train_images_per_s"],
        "seconds": metrics["seconds"],
    }


def _copy_fp32_rows(
    record: dict[str, Any], source: Path, settings: dict[str, Any], parser: argparse.ArgumentParser
) -> None:
    """Take the ``fp32`` runs from ``benchmarks/cifar_dev.py``'s record (the same recipe, data,
    epochs, batch and scale files) instead of training them again."""
    other = read_json(source)
    same = {k: other["settings"].get(k) for k in ("data", "epochs", "batch_size")}
    if same != {k: settings[k] for k in same}:
        parser.error(f"{source} was recorded with {other['settings']}, not {settings}")
    for model in MODELS:
        runs = other["rows"].get(model, {})
        fp32 = record["rows"].setdefault(model, {}).setdefault("fp32", {})
        for seed, row in runs.items():
            fp32.setdefault(seed, {k: row[k] for k in ("top1", "train_images_per_s", "seconds")})
    record["fp32_from"] = str(source)


def run_accuracy(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    record_path = Path(args.record)
    record = read_json(record_path) if record_path.is_file() else {"rows": {}}
    settings = {
        "data": args.data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "scales": args.scales,
    }
    if record.get("settings", settings) != settings:
        parser.error(f"{record_path} was recorded with {record['settings']}, not {settings}")
    missing = [
        s for seed in args.seeds if (s := _scales_file(args.scales, seed)) and not Path(s).is_file()
    ]
    if missing:
        parser.error(
            f"no scale file {missing}: run benchmarks/cifar_dev.py first, or pass --scales '' "
            "to train RepOpt-VGG with the Hyper-Search init constants"
        )
    record.update(settings=settings, command=args.command)
    if args.fp32_from:
        _copy_fp32_rows(record, Path(args.fp32_from), settings, parser)
    paths = ["fp32", *(p for p in args.paths if p != "fp32")]
    for seed in args.seeds:
        for model in MODELS:
            for path in paths:
                done = record["rows"].setdefault(model, {}).setdefault(path, {})
                if str(seed) in done:
                    continue
                start = time.perf_counter()
                done[str(seed)] = train_run(model, path, seed, args)
                record["machine"] = machine_info()
                record["table"] = accuracy_table(record)
                write_json(record, record_path)
                print(
                    f"{model} {path} seed {seed}: top-1 {100 * done[str(seed)]['top1']:.2f}% "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    record["table"] = accuracy_table(record)
    write_json(record, record_path)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    speed = modes.add_parser("speed", help="training throughput of every path, side by side")
    speed.add_argument(
        "--settings",
        type=_parse_settings,
        default=_parse_settings("32x64"),
        help="image size x batch, comma-separated (default 32x64)",
    )
    speed.add_argument("--paths", type=_parse_paths, default=list(PATHS))
    speed.add_argument("--steps", type=int, default=4, help="steps per timed window")
    speed.add_argument("--warmup", type=int, default=2)
    speed.add_argument("--repeats", type=int, default=7, help="interleaved rounds; medians")
    speed.add_argument("--matmul-size", type=int, default=4096, help="peak matmul side")
    speed.add_argument("--record", default="benchmarks/results/cpu_paths.json")
    accuracy = modes.add_parser("accuracy", help="CIFAR-10 top-1 of fp32 against --paths")
    accuracy.add_argument(
        "--paths",
        type=_parse_paths,
        default=["bf16"],
        help="paths compared with fp32 (default bf16)",
    )
    accuracy.add_argument(
        "--data", default="cifar10:../shared/data/cifar10-dev/cifar-10-batches-py"
    )
    accuracy.add_argument("--epochs", type=int, default=15)
    accuracy.add_argument("--batch-size", type=int, default=64)
    accuracy.add_argument(
        "--seeds", type=lambda t: [int(s) for s in t.split(",") if s], default=[0, 1, 2]
    )
    accuracy.add_argument(
        "--scales",
        default="runs/cifar-dev/scales-seed{seed}.safetensors",
        help="RepOpt-VGG's scale file per seed ({seed}); '' = HS-init constants",
    )
    accuracy.add_argument("--out", default="runs/cpu-paths", help="folder: the run folders")
    accuracy.add_argument(
        "--fp32-from",
        metavar="FILE",
        help="take the fp32 runs from benchmarks/cifar_dev.py's record (same settings)",
    )
    accuracy.add_argument("--record", default="benchmarks/results/cpu_paths_accuracy.json")
    for sub in (speed, accuracy):
        sub.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.command = shlex.join(["python", *sys.argv])
    torch.set_num_threads(args.threads)
    if args.mode == "speed":
        record = run_speed(args) | {"command": args.command}
        write_json(record, args.record)
    else:
        record = run_accuracy(args, parser)
    print(record["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
