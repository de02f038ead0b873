"""The demo pipeline behind ``reparam demo`` (its ``--help`` tells the story): Hyper-Search the
RepOpt-VGG scales, train RepOpt-VGG, RepVGG and plain VGG of one deploy structure, fuse and
evaluate the three, export each to ONNX and INT8, and write one summary.

Writes OUT/<model>/ run folders, OUT/deploy/<model>/ deploy folders and OUT/report/
(summary.md, summary.json, PNGs).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from reparam.analysis.identity import identity_variance_ratios
from reparam.app.dataspec import load_eval_data
from reparam.app.deploy.pipeline import deploy
from reparam.app.deploy.predict import preprocessing_of
from reparam.app.report import plot_identity_variance, plot_training_curves
from reparam.app.train import execution_defaults, fit, hyper_search, load_model, resolve_config
from reparam.errors import RunInterrupted, Terminated
from reparam.files import read_json, write_json
from reparam.fuse import reparameterize
from reparam.models.summary import count_macs, count_params
from reparam.quant.ort import QuantSettings

__all__ = ["ARCH_FAMILIES", "REPORT_FILES", "demo_table", "run_demo"]

ARCH_FAMILIES = ("repopt_vgg", "repvgg", "vgg")
REPORT_FILES = "summary.md, summary.json, identity_variance.png, val_top1.png"


def run_demo(
    out: str | os.PathLike = "runs/demo",
    data: str = "digits",
    arch: str = "a0",
    *,
    epochs: int = 8,
    hs_epochs: int = 8,
    image_size: int = 32,
    batch_size: int = 64,
    seed: int = 0,
    command: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the six stages (Hyper-Search; RepOpt-VGG, RepVGG and VGG training; fusing,
    evaluation and plots; ONNX and INT8) into ``out``, replacing what an earlier demo wrote
    there, and announce each on stderr; returns the summary, also written as
    ``out/report/summary.json`` (``command`` is recorded in its settings). A signal stops the
    demo in the stage it reached: :class:`RunInterrupted` naming the stage (exit 128 + signal)."""
    stages = _Stages()
    settings = dict(data=data, epochs=epochs, image_size=image_size, batch_size=batch_size)
    settings.update(seed=seed, arch=arch, hs_epochs=hs_epochs, command=command)
    try:
        return _run(Path(out), settings, stages, progress)
    except RunInterrupted as err:
        raise RunInterrupted(f"{stages.current}: {err}", err.signal) from None
    except KeyboardInterrupt as err:
        signum = signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT
        message = f"stopped by {signum.name} in {stages.current}"
        raise RunInterrupted(message, signum) from None


def demo_table(summary: dict[str, Any]) -> str:
    """The markdown of ``summary.md``: the settings, then one row per model."""
    settings = summary["settings"]
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
    for r in summary["models"]:
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


def _run(out: Path, settings: dict[str, Any], stages: _Stages, progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    data, image_size = settings["data"], settings["image_size"]
    common = {k: settings[k] for k in ("data", "epochs", "image_size", "batch_size", "seed")}
    repopt, repvgg, vgg = (f"{family}_{settings['arch']}" for family in ARCH_FAMILIES)

    stages.start(1, f"Hyper-Search for {repopt} on {data}")
    scales = report / f"{repopt}-scales.safetensors"
    search = hyper_search(
        repopt,
        data,
        scales,
        epochs=settings["hs_epochs"],
        batch_size=settings["batch_size"],
        image_size=image_size,
        seed=settings["seed"],
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
    val = load_eval_data(data, preprocessing_of(recorded)).val
    rows, ratios = [], {}
    probe = torch.stack([val[i][0] for i in range(min(128, len(val)))])
    hs_model, _ = load_model(out / f"{repopt}_hs", weights="last")
    ratios[f"{repopt} HS model"] = identity_variance_ratios(hs_model, probe)
    for name, optimizer in ((p[0], p[2]) for p in plan):
        forms = _compare_forms(runs[name], val, image_size)
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
            calib_data=data,
            settings=quant_settings,
            force=True,
        )["int8"]
        row.update(
            top1_int8=int8["top1_int8"],
            output_sqnr_db=int8["output_sqnr_db"],
            int8_speedup=int8["speedup"],
        )
    plot_identity_variance(ratios, report / "identity_variance.png")
    logs = {name: run_dir / "log.csv" for name, run_dir in runs.items()}
    plot_training_curves(logs, report / "val_top1.png", columns=["top1"])

    summary = {
        "settings": {
            **common,
            "arch": settings["arch"],
            "hs_epochs": settings["hs_epochs"],
            "int8": asdict(quant_settings),
            "command": settings["command"],
            # the execution path the three were trained on: the default on this machine
            **execution_defaults("auto", image_size),
        },
        "hypersearch": {k: search[k] for k in ("top1", "epochs", "seconds")},
        "models": rows,
        "identity_variance": ratios,
        "seconds": time.perf_counter() - started,
    }
    write_json(summary, report / "summary.json")
    (report / "summary.md").write_text(demo_table(summary))
    return summary


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


def _execution_label(settings: dict[str, Any]) -> str:
    precision = "bf16 autocast" if settings["amp"] else "FP32"
    return f"{precision}, {'channels-last' if settings['channels_last'] else 'NCHW'}"
