"""The paper's story end to end on one data set (default: the built-in digits).

1. Hyper-Search the RepOpt-VGG scales (HS model, ordinary training) -> scale file;
2. train RepOpt-VGG with those scales (RepOptSGD: a plain VGG with gradient masks);
3. train RepVGG (multi-branch training blocks) with the same deploy structure;
4. train the plain VGG of that structure with plain SGD;
5. fuse all three, check fused == unfused, and tabulate top-1 (train form and fused), train
   images/s, params and MACs (train form and deploy form), plus plots: identity variance ratio per
   block (RepOpt fig. 4) and validation top-1 per epoch;
6. export each fused model to ONNX and quantize it to INT8 (ONNX Runtime QDQ, per-tensor
   MinMax, 256 calibration images: the setting that separates the three): INT8 top-1, output
   SQNR and the INT8/FP32 speedup join the table.

Writes OUT/<model>/ run folders, OUT/deploy/<model>/ deploy folders and OUT/report/
(summary.md, summary.json, PNGs).
"""

from __future__ import annotations

import argparse
import csv
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from reparam.analysis.identity import identity_variance_ratios
from reparam.app.commands.arguments import add_data, add_out, add_reporting, positive_int
from reparam.app.dataspec import load_eval_data
from reparam.app.deploy.pipeline import deploy
from reparam.app.deploy.predict import preprocessing_of
from reparam.app.plots import pyplot
from reparam.app.report import plot_identity_variance
from reparam.app.train import execution_defaults, fit, hyper_search, load_model, resolve_config
from reparam.errors import RunInterrupted, Terminated
from reparam.files import json_text, read_json, write_json
from reparam.fuse import reparameterize
from reparam.models.summary import count_macs, count_params
from reparam.quant.ort import QuantSettings

ARCH_FAMILIES = ("repopt_vgg", "repvgg", "vgg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data(parser, "data to train and quantize on (default digits)", default="digits")
    parser.add_argument(
        "--arch", default="a0", help="deploy structure shared by the three (a0, a1, ...)"
    )
    parser.add_argument("--epochs", type=positive_int, default=8, help="epochs per trained model")
    parser.add_argument("--hs-epochs", type=positive_int, default=8, help="Hyper-Search epochs")
    parser.add_argument("--image-size", type=positive_int, default=32)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    add_out(
        parser,
        "folder",
        "runs, deploy folders and the report (default runs/demo)",
        default="runs/demo",
    )
    add_reporting(parser, "the summary as one JSON object")


@torch.no_grad()
def _logits(
    model: torch.nn.Module, dataset, batch_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    outputs, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch_size):
        outputs.append(model(images))
        labels.append(targets)
    return torch.cat(outputs), torch.cat(labels)


def _compare_forms(run_dir: Path, dataset, image_size: int) -> dict[str, Any]:
    """Top-1 of the trained model and of its fused copy, their max logit difference, sizes."""
    model, _ = load_model(run_dir, weights="last")
    fused = reparameterize(model)
    logits, labels = _logits(model, dataset)
    fused_logits, _ = _logits(fused, dataset)
    return {
        "top1": (logits.argmax(1) == labels).float().mean().item(),
        "top1_fused": (fused_logits.argmax(1) == labels).float().mean().item(),
        "max_abs_diff": (fused_logits - logits).abs().max().item(),
        "params": count_params(model),
        "params_fused": count_params(fused),
        "macs": count_macs(model, image_size),
        "macs_fused": count_macs(fused, image_size),
        "model": model,
    }


def _plot_curves(runs: dict[str, Path], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, run_dir in runs.items():
        with open(run_dir / "log.csv") as f:
            rows = list(csv.DictReader(f))
        ax.plot(
            [int(r["epoch"]) for r in rows],
            [100 * float(r["top1"]) for r in rows],
            marker="o",
            label=label,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _execution_label(settings: dict[str, Any]) -> str:
    precision = "bf16 autocast" if settings["amp"] else "FP32"
    return f"{precision}, {'channels-last' if settings['channels_last'] else 'NCHW'}"


def _markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    lines = [
        f"# reparam demo: {settings['data']}, deploy structure {settings['arch'].upper()}",
        "",
        f"Command: `{settings['command']}`  ",
        f"{settings['epochs']} epochs per model ({settings['hs_epochs']} for Hyper-Search), "
        f"{settings['image_size']}x{settings['image_size']}, batch {settings['batch_size']}, "
        f"seed {settings['seed']}, {_execution_label(settings)}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. "
        f"INT8: ONNX Runtime QDQ, {settings['int8']['granularity']} int8 weights, "
        f"{settings['int8']['calibration']} calibration on {settings['int8']['calib_images']} "
        "train images; speedup = ORT FP32 / ORT INT8 latency at batch 32.",
        "",
        "| model | optimizer | top-1 % | top-1 % fused | max abs logit diff | train img/s | "
        "params (train) | params (deploy) | MMACs (train) | MMACs (deploy) | top-1 % INT8 | "
        "output SQNR dB | INT8 speedup |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['optimizer']} | {100 * r['top1']:.2f} | {100 * r['top1_fused']:.2f} | "
            f"{r['max_abs_diff']:.1e} | {r['train_images_per_s']:.0f} | {r['params'] / 1e6:.2f}M | "
            f"{r['params_fused'] / 1e6:.2f}M | {r['macs'] / 1e6:.1f} | {r['macs_fused'] / 1e6:.1f} | "
            f"{100 * r['top1_int8']:.2f} | {r['output_sqnr_db']:.1f} | {r['int8_speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


class _Stages:
    """Announces each stage on stderr and remembers which one is running."""

    def __init__(self) -> None:
        self.current = "its set-up"

    def start(self, number: int, what: str) -> None:
        self.current = f"stage [{number}/6] ({what})"
        print(f"[{number}/6] {what}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run the stages; a signal stops the demo in the stage it reached (exit 128 + signal)."""
    stages = _Stages()
    try:
        return _run(args, stages)
    except RunInterrupted as err:
        raise RunInterrupted(f"{stages.current}: {err}", err.signal) from None
    except KeyboardInterrupt as err:
        signum = signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT
        message = f"stopped by {signum.name} in {stages.current}"
        raise RunInterrupted(message, signum) from None


def _run(args: argparse.Namespace, stages: _Stages) -> int:
    started = time.perf_counter()
    progress = not args.no_progress
    out = Path(args.out)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    common = {
        "data": args.data,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "seed": args.seed,
    }
    repopt, repvgg, vgg = (f"{family}_{args.arch}" for family in ARCH_FAMILIES)

    stages.start(1, f"Hyper-Search for {repopt} on {args.data}")
    scales = report / f"{repopt}-scales.safetensors"
    search = hyper_search(
        repopt,
        args.data,
        scales,
        epochs=args.hs_epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        seed=args.seed,
        run_dir=out / f"{repopt}_hs",
        recipe="basic",  # the demo's short CPU schedule, as for the three models below
        overrides={"weight_decay": 4e-5, "label_smoothing": 0.1, "grad_clip": 5.0},
        progress=progress,
        force=True,  # the demo owns its output folder: a second `make demo` starts afresh
    )

    runs: dict[str, Path] = {}
    plan = [(repopt, {"scales": str(scales)}, "RepOptSGD"), (repvgg, {}, "SGD"), (vgg, {}, "SGD")]
    metrics = {}
    for step, (name, model_kwargs, _) in enumerate(plan, start=2):
        stages.start(step, f"training {name}")
        runs[name] = out / name
        config = resolve_config(
            "basic",
            {
                **common,
                "model": name,
                "model_kwargs": model_kwargs,
                "out": str(runs[name]),
                "force": True,
            },
        )
        metrics[name] = fit(config, progress=progress)
        if metrics[name].get("interrupted"):  # saved; the demo ends here, not half-trained
            raise RunInterrupted(
                f"{metrics[name]['stopped']}; the same command runs the demo afresh",
                metrics[name].get("signal"),
            )

    stages.start(5, "fusing, evaluating, plotting")
    recorded = read_json(runs[repopt] / "config.json")  # the three runs share data and size
    val = load_eval_data(args.data, preprocessing_of(recorded)).val
    rows, ratios = [], {}
    probe = torch.stack([val[i][0] for i in range(min(128, len(val)))])
    hs_model, _ = load_model(out / f"{repopt}_hs", weights="last")
    ratios[f"{repopt} HS model"] = identity_variance_ratios(hs_model, probe)
    for name, optimizer in ((p[0], p[2]) for p in plan):
        forms = _compare_forms(runs[name], val, args.image_size)
        block_ratios = identity_variance_ratios(forms.pop("model"), probe)
        if block_ratios:  # the plain VGG has no identity path
            ratios[name] = block_ratios
        rows.append(
            {
                "name": name,
                "optimizer": optimizer,
                "train_images_per_s": metrics[name]["train_images_per_s"],
                **forms,
            }
        )
    stages.start(6, "ONNX export and INT8 quantization (per-tensor MinMax)")
    quant_settings = QuantSettings(granularity="per-tensor", calibration="minmax")
    for row in rows:
        int8 = deploy(
            runs[row["name"]],
            out / "deploy" / row["name"],
            onnx=True,
            int8=True,
            calib_data=args.data,
            settings=quant_settings,
            force=True,
        )["int8"]
        row.update(
            top1_int8=int8["top1_int8"],
            output_sqnr_db=int8["output_sqnr_db"],
            int8_speedup=int8["speedup"],
        )
    plot_identity_variance(ratios, report / "identity_variance.png")
    _plot_curves(runs, report / "val_top1.png")

    settings = {
        **common,
        "arch": args.arch,
        "hs_epochs": args.hs_epochs,
        "int8": asdict(quant_settings),
        "command": " ".join(["reparam", *sys.argv[1:]]),
        # the execution path the three were trained on: the default on this machine
        **execution_defaults("auto", args.image_size),
    }
    summary = {
        "settings": settings,
        "hypersearch": {k: search[k] for k in ("top1", "epochs", "seconds")},
        "models": rows,
        "identity_variance": ratios,
        "seconds": time.perf_counter() - started,
    }
    write_json(summary, report / "summary.json")
    table = _markdown(rows, settings)
    (report / "summary.md").write_text(table)
    if args.json:
        print(json_text(summary))
    else:
        print(table)
        print(
            f"report: {report}/ (summary.md, summary.json, identity_variance.png, val_top1.png); "
            f"{summary['seconds']:.0f} s in all"
        )
    return 0
