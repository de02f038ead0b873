"""Render the recorded benchmark JSON into docs/benchmarks.md, the README's headline table and plots.

    python benchmarks/render.py [--results benchmarks/results] [--docs docs/benchmarks.md]
                                [--readme README.md] [--no-plots]

The words live in the Jinja2 templates in ``benchmarks/templates/``; this script loads the JSON of
the results folder, computes the figures and table rows, and fills the templates:

- ``benchmarks.md.j2`` -> ``--docs``, from ``speed_train_a0.json`` (the headline run; required)
  and, where recorded, ``speed_train_b1.json``, ``speed_curve_<image size>.json``,
  ``cpu_paths.json``, ``cpu_paths_accuracy.json``, ``speed_infer.json`` and
  ``speed_optimizer_profile.json`` (a section whose JSON is absent is left out);
- ``readme_headline.md.j2`` -> ``readme_headline.md`` in the results folder and the block between
  :data:`BEGIN` and :data:`END` in ``--readme``, from ``cifar10_dev.json`` and
  ``qat_cifar10_dev.json`` (both left alone when ``cifar10_dev.json`` is absent);
- the ``speed_*.png`` plots beside the JSON.

Every speed ratio is paired: the median over rounds of the per-round ratio of two interleaved
models. Rendering needs Jinja2 only (no torch); the plots need matplotlib.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

HEADLINE_BATCH = 32
TEMPLATES = Path(__file__).resolve().parent / "templates"
BEGIN, END = "<!-- begin: results-headline -->", "<!-- end: results-headline -->"
# bounds on RepOpt-VGG's cost: (ratio key, image size or None for all) -> bound
CURVE_TARGETS = {
    ("repopt_over_plain_memory", None): ("<=", 1.01),
    ("repopt_over_plain_throughput", None): (">=", 0.99),
    ("repopt_over_repvgg_memory", 32): ("<=", 0.90),
    ("repopt_over_repvgg_memory", 224): ("<=", 0.72),
}
DEPLOY_VARIANTS = {
    "fused": "torch eager",
    "compiled": "torch.compile",
    "onnx_fp32": "ONNX Runtime FP32",
    "onnx_int8": "ONNX Runtime INT8",
}
MEMORY_PARTS = (
    "parameters_mb",
    "buffers_mb",
    "gradients_mb",
    "optimizer_state_mb",
    "activations_mb",
)

Record = dict[str, Any]
Rows = list[list[str]]


def _load(path: Path) -> list[Record] | Record | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _find(records: list[Record], model: str, batch: int) -> Record | None:
    return next((r for r in records if r["model"] == model and r["batch_size"] == batch), None)


def _step_ms(record: Record) -> list[float]:
    return [1e3 * record["batch_size"] / x for x in record["window_images_per_s"]]


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of ``a[r] / b[r]``: ``reparam.app.bench.timing.paired_ratio``, the
    definition the benchmarks record by, restated so that rendering imports no torch."""
    if len(a) != len(b) or not a:
        raise ValueError(
            f"paired ratio needs two equally long, non-empty series; got {len(a)}, {len(b)}"
        )
    return statistics.median(x / y for x, y in zip(a, b))


def _mb(x: float) -> str:
    return f"{x:.1f}"


def _commands(records: list[Record]) -> list[str]:
    return sorted({r["command"] for r in records})


# --- training --------------------------------------------------------------------------------------


def headline(
    records: list[Record], batch: int = HEADLINE_BATCH, width: str = "a0"
) -> dict[str, Any]:
    """The headline training-cost ratios from one interleaved train run (keys left out where a
    model is absent): RepOpt-VGG (``repopt_vgg_<width>``) vs RepVGG, plain VGG, itself with plain SGD
    (``@sgd``) and timm's RepVGG."""
    names = (
        f"repopt_vgg_{width}",
        f"repvgg_{width}",
        f"vgg_{width}",
        f"repopt_vgg_{width}@sgd",
        f"timm:repvgg_{width}",
    )
    repopt, repvgg, plain, sgd, timm = (_find(records, name, batch) for name in names)
    out: dict[str, Any] = {"batch_size": batch, "width": width}
    if repopt and repvgg:
        out["repopt_over_repvgg_throughput"] = paired_ratio(
            repopt["window_images_per_s"], repvgg["window_images_per_s"]
        )
        out["repopt_over_repvgg_memory"] = (
            repopt["peak_train_memory_mb"] / repvgg["peak_train_memory_mb"]
        )
        out["repopt_over_repvgg_activations"] = (
            repopt["memory"]["activations_mb"] / repvgg["memory"]["activations_mb"]
        )
        if repopt.get("rss_train_mb") and repvgg.get("rss_train_mb"):
            out["repopt_over_repvgg_rss"] = repopt["rss_train_mb"] / repvgg["rss_train_mb"]
        if "max_batch_size" in repopt and repvgg.get("max_batch_size"):
            out["repopt_over_repvgg_max_batch"] = (
                repopt["max_batch_size"] / repvgg["max_batch_size"]
            )
    if repopt and plain:
        out["repopt_over_plain_vgg_throughput"] = paired_ratio(
            repopt["window_images_per_s"], plain["window_images_per_s"]
        )
        out["repopt_over_plain_vgg_memory"] = (
            repopt["peak_train_memory_mb"] / plain["peak_train_memory_mb"]
        )
    if repopt and sgd:
        masks = repopt["memory"]["optimizer_state_mb"] - sgd["memory"]["optimizer_state_mb"]
        out["repopt_grad_mask_memory_mb"] = masks
        out["repopt_optimizer_step_over_sgd"] = paired_ratio(
            repopt["window_optimizer_step_ms"], sgd["window_optimizer_step_ms"]
        )
        overhead = [
            (a - b) / step
            for a, b, step in zip(
                repopt["window_optimizer_step_ms"], sgd["window_optimizer_step_ms"], _step_ms(sgd)
            )
        ]
        out["repopt_optimizer_overhead_of_step"] = statistics.median(overhead)
        out["repopt_step_slowdown_vs_sgd"] = paired_ratio(_step_ms(repopt), _step_ms(sgd)) - 1
    if repvgg and timm:
        out["reparam_repvgg_over_timm_repvgg_throughput"] = paired_ratio(
            repvgg["window_images_per_s"], timm["window_images_per_s"]
        )
    return out


def train_rows(records: list[Record]) -> Rows:
    """One row per model and batch of a ``reparam bench train`` record."""
    rows = []
    for r in records:
        m = r["memory"]
        parts = " / ".join(
            _mb(m[k])
            for k in ("parameters_mb", "gradients_mb", "optimizer_state_mb", "activations_mb")
        )
        rows.append(
            [
                r["model"],
                str(r["batch_size"]),
                r["optimizer"],
                f"{r['parameters'] / 1e6:.2f}",
                f"{r['train_images_per_s']:.1f}",
                f"{r['step_ms']:.1f}",
                f"{r['optimizer_step_ms']:.2f}",
                f"**{_mb(r['peak_train_memory_mb'])}** ({parts})",
                f"{m['activations_per_image_mb']:.3f}",
                _mb(r["rss_train_mb"]) if r.get("rss_train_mb") is not None else "n/a",
                str(r.get("max_batch_size", "")),
            ]
        )
    return rows


def train_section(records: list[Record], batch: int, width: str) -> dict[str, Any]:
    return {
        "ratios": headline(records, batch, width),
        "rows": train_rows(records),
        "machine": records[0]["machine"],
        "commands": _commands(records),
        "max_batch": any("max_batch_size" in r for r in records),
    }


# --- cost curves over image size -------------------------------------------------------------------


def load_curves(results: Path) -> dict[int, list[Record]]:
    """``{image size: records}`` from every ``speed_curve_<size>.json``, by ascending size."""
    curves = {
        int(path.stem.rsplit("_", 1)[1]): _load(path) for path in results.glob("speed_curve_*.json")
    }
    return dict(sorted(curves.items()))


def curve_batch(curves: dict[int, list[Record]], preferred: int = HEADLINE_BATCH) -> int:
    """``preferred`` when every image size has it, else the largest batch they all have."""
    common = set.intersection(*({r["batch_size"] for r in records} for records in curves.values()))
    if not common:
        raise SystemExit("speed_curve_*.json: no batch size is recorded at every image size")
    return preferred if preferred in common else max(common)


def curve_ratios(records: list[Record], batch: int) -> dict[str, float]:
    """RepOpt-VGG over RepVGG and plain VGG at one image size and batch: paired throughput
    ratios, accounted-memory ratios and (with a budget) the largest-batch ratio."""
    repopt, repvgg, plain = (
        _find(records, m, batch) for m in ("repopt_vgg_a0", "repvgg_a0", "vgg_a0")
    )
    out: dict[str, float] = {}
    for name, other in (("repvgg", repvgg), ("plain", plain)):
        if repopt and other:
            out[f"repopt_over_{name}_throughput"] = paired_ratio(
                repopt["window_images_per_s"], other["window_images_per_s"]
            )
            out[f"repopt_over_{name}_memory"] = (
                repopt["peak_train_memory_mb"] / other["peak_train_memory_mb"]
            )
            if repopt.get("max_batch_size") and other.get("max_batch_size"):
                out[f"repopt_over_{name}_max_batch"] = (
                    repopt["max_batch_size"] / other["max_batch_size"]
                )
    return out


CURVE_COLUMNS = (
    "repopt_over_repvgg_throughput",
    "repopt_over_repvgg_memory",
    "repopt_over_plain_throughput",
    "repopt_over_plain_memory",
    "repopt_over_repvgg_max_batch",
)


def _target_cell(key: str, size: int, value: float) -> str:
    bound = CURVE_TARGETS.get((key, size)) or CURVE_TARGETS.get((key, None))
    if bound is None:
        return f"{value:.3f}x"
    sign, limit = bound
    met = value <= limit if sign == "<=" else value >= limit
    return f"{value:.3f}x ({sign} {limit:.2f}x: {'met' if met else '**not met**'})"


def curve_ratio_rows(curves: dict[int, list[Record]], batch: int) -> Rows:
    """Per image size, the :data:`CURVE_COLUMNS` ratios with their bounds (met or not)."""
    rows = []
    for size, records in curves.items():
        ratios = curve_ratios(records, batch)
        cells = [_target_cell(k, size, ratios[k]) if k in ratios else "" for k in CURVE_COLUMNS]
        rows.append([str(size), *cells])
    return rows


def _curve_models(curves: dict[int, list[Record]]) -> list[str]:
    return list(dict.fromkeys(r["model"] for records in curves.values() for r in records))


def max_batch_rows(curves: dict[int, list[Record]]) -> Rows:
    """Largest batch per model (rows) and image size (columns)."""
    rows = []
    for model in _curve_models(curves):
        cells = [model]
        for records in curves.values():
            record = next((r for r in records if r["model"] == model), {})
            cells.append(str(record.get("max_batch_size", "")))
        rows.append(cells)
    return rows


def curve_explanation(curves: dict[int, list[Record]], batch: int) -> dict[str, Any] | None:
    """The figures that say where RepOpt-VGG's memory difference comes from, at the smallest and
    the largest image size recorded; None when RepOpt-VGG, RepVGG or plain VGG is missing.
    ``breakeven_batch``: the batch from which RepOpt-VGG needs less memory than RepVGG (0: every
    batch, None: no batch)."""
    small, large = min(curves), max(curves)

    def three(size: int) -> tuple[Record, Record, Record] | None:
        found = tuple(
            _find(curves[size], m, batch) for m in ("repopt_vgg_a0", "repvgg_a0", "vgg_a0")
        )
        return found if all(found) else None

    found = three(small), three(large)
    if not all(found):
        return None
    (repopt, repvgg, plain), (repopt_l, repvgg_l, _) = found
    fixed = {
        name: r["peak_train_memory_mb"] - r["memory"]["activations_mb"]
        for name, r in (("repopt", repopt), ("repvgg", repvgg), ("plain", plain))
    }
    masks = repopt["memory"]["optimizer_state_mb"] - plain["memory"]["optimizer_state_mb"]
    per_image = {
        "repopt": repopt["memory"]["activations_per_image_mb"],
        "repvgg": repvgg["memory"]["activations_per_image_mb"],
        "repopt_large": repopt_l["memory"]["activations_per_image_mb"],
        "repvgg_large": repvgg_l["memory"]["activations_per_image_mb"],
    }
    gap = per_image["repvgg"] - per_image["repopt"]
    extra_fixed = fixed["repopt"] - fixed["repvgg"]
    if extra_fixed <= 0:
        breakeven = 0.0
    else:
        breakeven = extra_fixed / gap if gap > 0 else None
    ratios = {size: curve_ratios(curves[size], batch) for size in (small, large)}
    return {
        "batch": batch,
        "small": small,
        "large": large,
        "plain_fixed_mb": fixed["plain"],
        "repvgg_extra_fixed_mb": fixed["repvgg"] - fixed["plain"],
        "masks_mb": masks,
        "masks_share": masks / plain["peak_train_memory_mb"],
        "per_image_mb": per_image,
        "repvgg_over_repopt_per_image_large": per_image["repvgg_large"] / per_image["repopt_large"],
        "memory_ratio": {
            small: repopt["peak_train_memory_mb"] / repvgg["peak_train_memory_mb"],
            large: repopt_l["peak_train_memory_mb"] / repvgg_l["peak_train_memory_mb"],
        },
        "over_plain_throughput": {s: r["repopt_over_plain_throughput"] for s, r in ratios.items()},
        "over_repvgg_throughput": {
            s: r["repopt_over_repvgg_throughput"] for s, r in ratios.items()
        },
        "breakeven_batch": breakeven,
    }


def curve_section(curves: dict[int, list[Record]], batch: int) -> dict[str, Any]:
    batch = curve_batch(curves, batch)
    records = [r for rs in curves.values() for r in rs]
    budgets = sorted(
        {r["max_batch"]["budget_mb"] for rs in curves.values() for r in rs if "max_batch" in r}
    )
    return {
        "batch": batch,
        "ratio_rows": curve_ratio_rows(curves, batch),
        "why": curve_explanation(curves, batch),
        "sizes": list(curves),
        "budgets": budgets,
        "max_batch_rows": max_batch_rows(curves) if budgets else [],
        "machine": records[0]["machine"],
        "commands": _commands(records),
    }


# --- inference -------------------------------------------------------------------------------------


def _batches(records: list[Record]) -> list[int]:
    return sorted({r["batch_size"] for r in records})


def infer_rows(records: list[Record]) -> Rows:
    """One row per model and variant: latency / images/s per batch, error against the train form."""
    batches, rows = _batches(records), []
    for model, variant in dict.fromkeys((r["model"], r["variant"]) for r in records):
        by_batch = {
            r["batch_size"]: r for r in records if r["model"] == model and r["variant"] == variant
        }
        first = next(iter(by_batch.values()))
        cells = [
            f"{by_batch[b]['latency_ms']:.2f} / {by_batch[b]['images_per_s']:.0f}"
            if b in by_batch
            else ""
            for b in batches
        ]
        diff = f"{first['max_rel_diff_vs_train_form']:.1e}"
        if "max_rel_diff_vs_reparam_fused" in first:
            diff += f" (vs reparam's fused: {first['max_rel_diff_vs_reparam_fused']:.1e})"
        rows.append(
            [model, variant, first["runtime"], f"{first['parameters'] / 1e6:.2f}", *cells, diff]
        )
    return rows


def deploy_rows(records: list[Record]) -> Rows:
    """Fused-model latency per runtime (rows) and batch (columns), with the paired speed-up over
    torch eager and torch.compile's compile time per batch (not part of the latency)."""
    batches, rows = _batches(records), []
    for model in dict.fromkeys(r["model"] for r in records if r["variant"] == "fused"):
        eager = {
            r["batch_size"]: r for r in records if r["model"] == model and r["variant"] == "fused"
        }
        for variant, runtime in DEPLOY_VARIANTS.items():
            by_batch = {
                r["batch_size"]: r
                for r in records
                if r["model"] == model and r["variant"] == variant
            }
            if not by_batch:
                continue
            first = next(iter(by_batch.values()))
            if first.get("error"):
                rows.append([model, runtime, f"failed: {first['error']}"])
                continue
            cells = []
            for b in batches:
                if b not in by_batch:
                    cells.append("")
                    continue
                speedup = paired_ratio(
                    eager[b]["window_latency_ms"], by_batch[b]["window_latency_ms"]
                )
                cells.append(f"{by_batch[b]['latency_ms']:.2f} ({speedup:.2f}x)")
            compile_s = " / ".join(
                f"{by_batch[b]['compile_s']:.1f}"
                for b in batches
                if "compile_s" in by_batch.get(b, {})
            )
            rows.append([model, runtime, *cells, compile_s])
    return rows


def infer_section(records: list[Record]) -> dict[str, Any]:
    measured = [r for r in records if r["latency_ms"] is not None]  # failed compiles left out
    return {
        "deploy_batches": _batches(records),
        "deploy_rows": deploy_rows(records),
        "batches": _batches(measured),
        "rows": infer_rows(measured),
        "machine": measured[0]["machine"],
        "commands": _commands(measured),
    }


# --- optimizer -------------------------------------------------------------------------------------


def in_training(training: Record) -> dict[str, Any]:
    """Heavy-ball ``step()`` timed inside training, and what RepOptSGD's time is made of (ms)."""
    ms = training["optimizer_step_ms"]
    torch_ms = ms["torch SGD heavy-ball"]
    repopt, unmasked = ms["RepOptSGD heavy-ball"], ms["RepOptSGD heavy-ball, no masks"]
    per_tap = ms["RepOptSGD heavy-ball, per-tap masks only"]
    return {
        **{k: training[k] for k in ("model", "image_size", "batch_size")},
        "rows": [[label, f"{v:.2f}", f"{v / torch_ms:.2f}x"] for label, v in ms.items()],
        "repopt": repopt,
        "torch": torch_ms,
        "fused": ms["torch SGD heavy-ball, fused"],
        "unmasked": unmasked,
        "masks": repopt - unmasked,
        "per_tap": per_tap - unmasked,
        "diagonal": repopt - per_tap,
    }


def optimizer_section(profile: Record) -> dict[str, Any]:
    """Per model: ms per ``optimizer.step()`` and optimizer-state MiB of every optimizer; an empty
    ``models`` for a record taken before factored masks (its figures no longer describe the code)."""
    models = [
        {
            "name": name,
            "parameters": result["parameters"],
            "masked": result["masked_elements"],
            "rows": [
                [label, f"{ms:.2f}", f"{result['optimizer_state_mib'][label]:.1f}"]
                for label, ms in result["optimizer_step_ms"].items()
            ],
        }
        for name, result in profile.get("models", {}).items()
    ]
    return {
        "models": models,
        "in_training": in_training(profile["in_training"]) if "in_training" in profile else None,
        "machine": profile.get("machine"),
        "command": profile.get("command"),
    }


# --- CIFAR-10 headline -----------------------------------------------------------------------------


def _mean_std(values: list[float], sign: str = "") -> str:
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):{sign}.2f}{spread}"


def cifar_rows(cifar: Record, qat: Record | None) -> dict[str, dict[str, str]]:
    """Per row of ``cifar10_dev.json``: seeds, FP32 top-1 % (mean ± std), train images/s and,
    where ``qat_cifar10_dev.json`` has the model, the INT8 top-1 change in points (PTQ by ONNX
    Runtime per tensor; QAT), paired per seed against the same fused FP32 model."""
    out = {}
    for row, seeds in cifar["rows"].items():
        speeds = [r["train_images_per_s"] for r in seeds.values() if "train_images_per_s" in r]
        out[row] = {
            "seeds": str(len(seeds)),
            "top1": _mean_std([100 * r["top1"] for r in seeds.values()]),
            "images_per_s": f"{statistics.mean(speeds):.0f}" if speeds else "-",
        }
        int8 = (qat or {}).get("rows", {}).get(row, {}).values()
        for key, column in (("ptq", "ptq_ort_per-tensor"), ("qat", "qat")):
            changes = [
                100 * (seed[column]["top1_int8"] - seed[column]["top1_fp32"])
                for seed in int8
                if column in seed
            ]
            out[row][key] = _mean_std(changes, "+") if changes else "-"
    return out


def render_headline(results: Path) -> str | None:
    """The README's headline block (markers included); None without ``cifar10_dev.json``."""
    cifar = _load(results / "cifar10_dev.json")
    if cifar is None:
        return None
    qat = _load(results / "qat_cifar10_dev.json")
    rows = cifar_rows(cifar, qat)
    text = _template("readme_headline.md.j2").render(
        rows=rows,
        settings=cifar["settings"],
        machine=cifar["machine"],
        qat=qat and qat["settings"],
    )
    return f"{BEGIN}\n{text}{END}\n"


def replace_block(text: str, block: str, name: str = "README.md") -> str:
    """``text`` with its part from :data:`BEGIN` to :data:`END` (both included) replaced by
    ``block``, which starts and ends with the markers; nothing else changes."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start or text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(
            f"{name}: expected one '{BEGIN}' line followed by one '{END}' line "
            "where the headline table goes"
        )
    return text[:start] + block.removesuffix("\n") + text[end + len(END) :]


# --- documents -------------------------------------------------------------------------------------


def _md_rows(rows: Rows) -> str:
    return "\n".join("| " + " | ".join(cells) + " |" for cells in rows)


def _template(name: str) -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["fmt"] = format
    env.filters["rows"] = _md_rows
    return env.get_template(name)


def render_docs(results: Path, batch: int = HEADLINE_BATCH) -> str:
    """docs/benchmarks.md from the JSON in ``results``."""
    headline_file = results / "speed_train_a0.json"
    train = _load(headline_file)
    if not train:
        raise SystemExit(f"{headline_file}: not found; run benchmarks/run_speed.sh first")
    train_b1 = _load(results / "speed_train_b1.json")
    infer = _load(results / "speed_infer.json")
    curves = load_curves(results)
    profile = _load(results / "speed_optimizer_profile.json")
    budget = next((r["max_batch"]["budget_mb"] for r in train if "max_batch" in r), None)
    return _template("benchmarks.md.j2").render(
        budget=budget,
        a0=train_section(train, batch, "a0"),
        b1=train_section(train_b1, batch, "b1") if train_b1 else None,
        curves=curve_section(curves, batch) if curves else None,
        cpu_paths=_load(results / "cpu_paths.json"),
        cpu_accuracy=_load(results / "cpu_paths_accuracy.json"),
        infer=infer_section(infer) if infer else None,
        optimizer=optimizer_section(profile) if profile else None,
        results="../benchmarks/results",
    )


# --- plots -----------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_train(records: list[Record], out: Path) -> list[str]:
    plt = _pyplot()
    written = []
    models = list(dict.fromkeys(r["model"] for r in records))
    batches = _batches(records)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for model in models:
        rows = sorted((r for r in records if r["model"] == model), key=lambda r: r["batch_size"])
        ax.plot(
            [r["batch_size"] for r in rows],
            [r["train_images_per_s"] for r in rows],
            "o-",
            label=model,
        )
    ax.set(
        xlabel="batch size",
        ylabel="training images/s",
        xticks=batches,
        title="Training throughput (median of interleaved windows)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "speed_train_throughput.png", dpi=120)
    written.append("speed_train_throughput.png")
    plt.close(fig)

    batch = HEADLINE_BATCH if HEADLINE_BATCH in batches else batches[0]
    rows = [r for r in records if r["batch_size"] == batch]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    bottom = [0.0] * len(rows)
    for part in MEMORY_PARTS:
        values = [r["memory"][part] for r in rows]
        ax.bar([r["model"] for r in rows], values, bottom=bottom, label=part.removesuffix("_mb"))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(ylabel="MiB", title=f"Accounted training memory, batch {batch}")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "speed_train_memory.png", dpi=120)
    written.append("speed_train_memory.png")
    plt.close(fig)

    with_max = [r for r in rows if "max_batch_size" in r]
    if with_max:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        ax.bar([r["model"] for r in with_max], [r["max_batch_size"] for r in with_max])
        budget = with_max[0]["max_batch"]["budget_mb"]
        ax.set(ylabel="largest batch", title=f"Largest training batch within {budget:g} MiB")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        fig.tight_layout()
        fig.savefig(out / "speed_max_batch.png", dpi=120)
        written.append("speed_max_batch.png")
        plt.close(fig)
    return written


def plot_infer(records: list[Record], out: Path) -> list[str]:
    plt = _pyplot()
    batches = _batches(records)
    fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rows = [r for r in records if r["batch_size"] == batch]
        ax.barh([f"{r['model']} {r['variant']}" for r in rows], [r["images_per_s"] for r in rows])
        ax.set(xlabel="images/s", title=f"Inference, batch {batch}")
        ax.tick_params(axis="y", labelsize=7)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "speed_infer.png", dpi=120)
    plt.close(fig)
    return ["speed_infer.png"]


def plot_curves(curves: dict[int, list[Record]], batch: int, out: Path) -> list[str]:
    """Training images/s against image size at ``batch``, and accounted memory against batch
    (one panel per image size); one line per model."""
    plt = _pyplot()
    from matplotlib.ticker import NullLocator

    sizes, models = list(curves), _curve_models(curves)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for model in models:
        points = [(s, _find(curves[s], model, batch)) for s in sizes]
        points = [(s, r["train_images_per_s"]) for s, r in points if r]
        ax.plot(*zip(*points), "o-", label=model)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="image size (px)",
        ylabel="training images/s",
        title=f"Training throughput, batch {batch}",
    )
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "speed_curve_throughput.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(sizes), figsize=(3.6 * len(sizes), 3.8), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for model in models:
            rows = sorted(
                (r for r in curves[size] if r["model"] == model), key=lambda r: r["batch_size"]
            )
            ax.plot(
                [r["batch_size"] for r in rows],
                [r["peak_train_memory_mb"] for r in rows],
                "o-",
                label=model,
            )
        ax.set(xscale="log", xlabel="batch size", ylabel="accounted MiB", title=f"{size} px")
        batches = _batches(curves[size])
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(NullLocator())
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Accounted training memory against batch")
    fig.tight_layout()
    fig.savefig(out / "speed_curve_memory.png", dpi=120)
    plt.close(fig)
    return ["speed_curve_throughput.png", "speed_curve_memory.png"]


def plot_all(results: Path, batch: int = HEADLINE_BATCH) -> list[str]:
    """Every ``speed_*.png`` whose JSON is recorded, written beside it."""
    written = plot_train(_load(results / "speed_train_a0.json"), results)
    infer = [r for r in _load(results / "speed_infer.json") or [] if r["latency_ms"] is not None]
    if infer:
        written += plot_infer(infer, results)
    curves = load_curves(results)
    if curves:
        written += plot_curves(curves, curve_batch(curves, batch), results)
    return written


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a sibling file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    part.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument(
        "--readme", type=Path, default=Path("README.md"), help="file: gets the headline block"
    )
    parser.add_argument("--batch", type=int, default=HEADLINE_BATCH, help="headline batch size")
    parser.add_argument("--no-plots", action="store_true", help="write the markdown only")
    args = parser.parse_args()
    _write(args.docs, render_docs(args.results, args.batch))
    if not args.no_plots:
        plot_all(args.results, args.batch)
    block = render_headline(args.results)
    if block is None:
        print(
            f"{args.results / 'cifar10_dev.json'}: not found; headline left alone", file=sys.stderr
        )
        return 0
    _write(args.results / "readme_headline.md", block)
    try:
        _write(args.readme, replace_block(args.readme.read_text(), block, str(args.readme)))
    except (OSError, ValueError) as exc:
        print(f"render.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
