"""``reparam report``: markdown + PNG plots from run folders, deploy folders and PTQ comparisons.

- run folder (``metrics.json``, ``log.csv``): a metrics row and training curves (every numeric
  ``log.csv`` column whose name holds ``loss`` or ``top1``, against ``epoch``);
- deploy folder with ``quant.json`` (``reparam deploy --int8``): the end-to-end INT8 figures, a
  per-layer table, per-layer weight violins of the fused model (RepOpt fig. 10 style) and per-layer
  weight SQNR bars (per-tensor and per-channel int8);
- comparison folder (``compare.json``, ``reparam deploy --compare``): the PTQ-drop table, each of
  its deploy folders as above, and all models' per-layer SQNR in one plot;
- run folders of models with identity paths (RepVGG, RepOpt-VGG, Hyper-Search models): the
  identity variance ratio per block (RepOpt paper fig. 4) on 128 validation images, as a table
  and one plot for all of them.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reparam.analysis import identity_variance_ratios
from reparam.app.dataspec import load_eval_data
from reparam.app.folders import atomic_folder, check_replaceable, exclusive_lock
from reparam.app.plots import pyplot
from reparam.errors import DeployError
from reparam.files import load_weights, read_json
from reparam.saved import load_model, preprocessing_of

__all__ = ["ptq_table", "write_report"]

VIOLIN_SAMPLES = 2_000


def _conv_layers(quant: dict[str, Any]) -> list[dict[str, Any]]:
    return [layer for layer in quant["layers"] if layer["kind"] == "Conv2d"]


def plot_weight_violins(deploy_dir: Path, quant: dict[str, Any], path: Path) -> Path:
    """One violin per fused conv: the distribution of its weights (symmetric log y-axis).

    Layers with more than ``VIOLIN_SAMPLES`` weights are drawn from a fixed-seed random subset
    plus their minimum and maximum (the density estimate is quadratic in the sample count)."""
    plt = pyplot()
    weights = load_weights(deploy_dir / "fused.safetensors")
    layers = _conv_layers(quant)
    rng = np.random.default_rng(0)
    data = []
    for layer in layers:
        values = weights[f"{layer['name']}.weight"].flatten().double().numpy()
        if values.size > VIOLIN_SAMPLES:
            subset = rng.choice(values, VIOLIN_SAMPLES, replace=False)
            values = np.concatenate([subset, [values.min(), values.max()]])
        data.append(values)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(data)), 4.0))
    ax.violinplot(data, showextrema=True, widths=0.9)
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xticks(
        range(1, len(data) + 1), [layer["name"] for layer in layers], rotation=90, fontsize=7
    )
    ax.set_ylabel("weight value (symlog)")
    ax.set_title(f"{quant['model']}: fused conv weights per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sqnr_bars(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """Per-layer weight SQNR (dB): per-tensor solid, per-channel hatched, one colour per model."""
    plt = pyplot()
    names = [layer["name"] for layer in _conv_layers(next(iter(models.values())))]
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.4 * len(names) * len(models))), 4.0))
    width = 0.8 / (2 * len(models))
    x = np.arange(len(names))
    for i, (label, quant) in enumerate(models.items()):
        layers = _conv_layers(quant)
        for j, key in enumerate(("sqnr_per_tensor_db", "sqnr_per_channel_db")):
            offset = (2 * i + j - len(models) + 0.5) * width
            values = [float(layer[key]) for layer in layers]
            ax.bar(
                x[: len(values)] + offset,
                values,
                width,
                color=f"C{i}",
                hatch="//" if j else None,
                label=f"{label} ({'per-channel' if j else 'per-tensor'})",
            )
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_ylabel("weight SQNR, int8 (dB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_training_curves(
    logs: Mapping[str, str | os.PathLike],
    path: str | os.PathLike,
    columns: Sequence[str] | None = None,
) -> Path | None:
    """Curves against ``epoch`` from ``log.csv`` files (``{label: path}``): the ``columns``
    named (default: every column whose name holds ``loss`` or ``top1``), losses on one axis,
    top-1 in % (a fraction in ``log.csv``) on another. A line is named by its column (one log),
    its log's label (one column) or both. ``None`` when nothing is drawn."""
    curves = []  # (label, column, rows)
    for label, log_csv in logs.items():
        with open(log_csv) as handle:
            rows = list(csv.DictReader(handle))
        if not rows or "epoch" not in rows[0]:
            continue
        found = [c for c in rows[0] if "loss" in c or "top1" in c]
        curves += [(label, c, rows) for c in found if columns is None or c in columns]
    if not curves:
        return None
    kinds = [kind for kind in ("loss", "top1") if any(kind in c for _, c, _ in curves)]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.5), squeeze=False)
    for label, column, rows in curves:
        scale = 100.0 if "top1" in column else 1.0
        values = [scale * float(r[column]) if r[column] not in ("", None) else np.nan for r in rows]
        if len(logs) == 1 or len({c for _, c, _ in curves}) > 1:
            name = column if len(logs) == 1 else f"{label} {column}"
        else:
            name = label
        ax = axes[0][kinds.index("loss" if "loss" in column else "top1")]
        ax.plot([float(r["epoch"]) for r in rows], values, marker="o", ms=3, label=name)
    for ax, kind in zip(axes[0], kinds):
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if kind == "loss" else "top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _deploy_section(deploy_dir: Path, out_dir: Path, tag: str) -> tuple[list[str], dict[str, Any]]:
    quant = read_json(deploy_dir / "quant.json")
    e2e, latency, s = quant["end_to_end"], quant["latency"], quant["settings"]
    violins = plot_weight_violins(deploy_dir, quant, out_dir / f"{tag}_weights.png")
    bars = plot_sqnr_bars({quant["model"]: quant}, out_dir / f"{tag}_sqnr.png")
    lines = [
        f"## {quant['model']} INT8 ({deploy_dir})",
        "",
        f"Settings: {s['format']}, {s['activations']} activations, {s['weights']} weights, "
        f"{s['granularity']}, {s['calibration']} calibration on "
        f"{quant['calib_images_used']} images, "
        f"float nodes: {', '.join(quant['float_nodes']) or 'none'}.",
        "",
        f"Top-1 FP32 {100 * e2e['top1_fp32']:.2f}% -> INT8 {100 * e2e['top1_int8']:.2f}% "
        f"(agreement {100 * e2e['top1_agreement']:.2f}%, "
        f"output SQNR {float(e2e['output_sqnr_db']):.1f} dB, "
        f"{e2e['n_images']} images); ORT latency batch {latency['fp32']['batch_size']}: FP32 "
        f"{latency['fp32']['median_ms']:.1f} ms, INT8 {latency['int8']['median_ms']:.1f} ms "
        f"({latency['speedup']:.2f}x).",
        "",
        "| layer | std | absmax | max/std | excess kurtosis | channel absmax spread "
        "| centre/surround std | SQNR tensor dB | SQNR channel dB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for layer in quant["layers"]:
        ratio = layer["centre_over_surround_std"]
        lines.append(
            f"| {layer['name']} | {layer['std']:.4f} | {layer['absmax']:.3f} "
            f"| {float(layer['max_over_std']):.1f} | {layer['excess_kurtosis']:.1f} "
            f"| {float(layer['channel_absmax_spread']):.1f} "
            f"| {'-' if ratio is None else f'{float(ratio):.2f}'} "
            f"| {float(layer['sqnr_per_tensor_db']):.1f} "
            f"| {float(layer['sqnr_per_channel_db']):.1f} |"
        )
    lines += ["", f"![weights]({violins.name})", "", f"![sqnr]({bars.name})", ""]
    return lines, quant


def _run_section(run_dir: Path, out_dir: Path, tag: str) -> list[str]:
    metrics = read_json(run_dir / "metrics.json")
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    cells = [
        f"{100 * v:.2f}" if "top1" in k else f"{v:.4g}" if isinstance(v, float) else str(v)
        for k, v in shown.items()
    ]
    lines = [
        f"## Run {run_dir} ({config.get('model', '?')} on {config.get('data', '?')})",
        "",
        "| " + " | ".join(f"{k} %" if "top1" in k else k for k in shown) + " |",
        "|" + "---|" * len(shown),
        "| " + " | ".join(cells) + " |",
        "",
    ]
    if (run_dir / "log.csv").is_file():
        curves = plot_training_curves(
            {run_dir.name: run_dir / "log.csv"}, out_dir / f"{tag}_curves.png"
        )
        if curves:
            lines += [f"![curves]({curves.name})", ""]
    return lines


def ptq_table(result: dict[str, Any]) -> str:
    """Markdown table of a PTQ comparison (``compare.json``, :func:`reparam.app.deploy.compare_ptq`),
    preceded by the settings used."""
    s = result["settings"]
    lines = [
        f"PTQ on {result['data']} ({result['image_size']}x{result['image_size']}), "
        "ONNX Runtime QDQ "
        f"(uint8 activations, int8 weights), {s['granularity']} weights, {s['calibration']} "
        f"calibration on {s['calib_images']} images, first/last layer "
        f"{'float' if s['keep_first_last_float'] else 'int8'}",
        "",
        "| model | FP32 top-1 % | INT8 top-1 % | drop | agreement % | output SQNR dB "
        "| weight SQNR dB (tensor / channel, median) | max/std (max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {100 * r['top1_fp32']:.2f} | {100 * r['top1_int8']:.2f} "
            f"| {100 * r['top1_drop']:+.2f} | {100 * r['top1_agreement']:.2f} "
            f"| {float(r['output_sqnr_db']):.1f} "
            f"| {r['weight_sqnr_per_tensor_db_median']:.1f} "
            f"/ {r['weight_sqnr_per_channel_db_median']:.1f} "
            f"| {r['max_over_std_max']:.1f} |"
        )
    return "\n".join(lines)


def write_report(
    sources: list[str | os.PathLike], out_dir: str | os.PathLike, force: bool = False
) -> Path:
    """Write ``report.md`` and its PNGs into ``out_dir`` for run, deploy and comparison folders.

    The folder is written whole and swapped in when complete (nothing is left when a source
    fails); an existing ``out_dir`` is replaced only with ``force`` and only when it is a report
    folder (:func:`reparam.app.folders.check_replaceable`)."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir, "report", legacy_report_files)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise DeployError(f"{out_dir}: already exists; pass --force to replace it")
    with exclusive_lock(out_dir), atomic_folder(out_dir, "report", legacy_report_files) as work:
        _write_report(list(map(Path, sources)), work)
    return out_dir / "report.md"


def legacy_report_files(folder: Path) -> set[str]:
    """The names a report folder written before markers holds: ``report.md`` and its PNGs."""
    if not (folder / "report.md").is_file():
        return set()
    return {"report.md", *(p.name for p in folder.glob("*.png"))}


def _write_report(sources: list[Path], out_dir: Path) -> None:
    lines = ["# reparam report", ""]
    quants: dict[str, dict[str, Any]] = {}
    identity_ratios: dict[str, dict[str, float]] = {}
    for index, source in enumerate(sources):
        tag = f"{index:02d}_{source.name}"
        if (source / "compare.json").is_file():
            result = read_json(source / "compare.json")
            lines += ["## PTQ comparison", "", ptq_table(result), ""]
            for row in result["rows"]:
                section, quant = _deploy_section(
                    Path(row["deploy_dir"]), out_dir, f"{tag}_{row['model']}"
                )
                lines += section
                quants[row["model"]] = quant
        elif (source / "quant.json").is_file():
            section, quant = _deploy_section(source, out_dir, tag)
            lines += section
            quants[f"{quant['model']} ({source.name})"] = quant
        elif (source / "metrics.json").is_file():
            lines += _run_section(source, out_dir, tag)
            ratios = run_identity_variance(source)
            if ratios:
                identity_ratios[source.name] = ratios
        else:
            raise DeployError(
                f"{source}: not a run folder (metrics.json), deploy folder (quant.json) "
                "or comparison folder (compare.json)"
            )
    if len(quants) > 1:
        bars = plot_sqnr_bars(quants, out_dir / "sqnr_all.png")
        lines += ["## Per-layer weight SQNR, all models", "", f"![sqnr]({bars.name})", ""]
    if identity_ratios:
        plot = plot_identity_variance(identity_ratios, out_dir / "identity_variance.png")
        lines += [
            "## Identity variance ratio per block (RepOpt fig. 4)",
            "",
            "| run | blocks | min | median | max |",
            "|---|---|---|---|---|",
        ]
        for name, ratios in identity_ratios.items():
            values = sorted(ratios.values())
            lines.append(
                f"| {name} | {len(values)} | {values[0]:.3g} | "
                f"{values[len(values) // 2]:.3g} | {values[-1]:.3g} |"
            )
        lines += ["", f"![identity variance]({plot.name})", ""]
    (out_dir / "report.md").write_text("\n".join(lines))


def plot_identity_variance(
    results: Mapping[str, Mapping[str, float]], path: str | os.PathLike
) -> Path:
    """PNG: identity variance ratio per block (x: block order), one line per model label."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, ratios in results.items():
        ax.plot(range(1, len(ratios) + 1), list(ratios.values()), marker="o", ms=3, label=label)
    ax.set_xlabel("block with identity (network order)")
    ax.set_ylabel("Var(identity) / Var(block output)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_identity_variance(run_dir: str | os.PathLike, images: int = 128) -> dict[str, float]:
    """:func:`identity_variance_ratios` of a run's last weights, measured on the first ``images``
    validation images of its data, prepared as the model's inputs (empty for models without
    identity paths)."""
    model, config = load_model(run_dir, weights="last")
    val = load_eval_data(config["data"], preprocessing_of(config)).val
    probe = torch.stack([val[i][0] for i in range(min(images, len(val)))])
    return identity_variance_ratios(model, probe)
