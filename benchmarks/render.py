"""Render the recorded benchmark JSON into docs/benchmarks.md, PNG plots and the README section.

    .venv/bin/python benchmarks/render.py [--results benchmarks/results --docs docs/benchmarks.md]

Reads ``speed_train_a0.json`` (the headline run), optional ``speed_train_b1.json``,
``speed_curve_<image size>.json`` (cost curves over image sizes), ``speed_infer.json``,
``speed_optimizer_profile.json``, ``cpu_paths.json`` and ``cpu_paths_accuracy.json`` (written by
``benchmarks/cpu_paths.py``) from the results folder (the rest written by
``benchmarks/run_speed.sh``); writes the ``speed_*.png`` plots beside them, ``docs/benchmarks.md``
(every figure, with the command lines and machines) and ``speed_README_section.md`` (the README's
performance section); a section whose JSON is absent is left out. Every speed ratio is
paired: the median over rounds of the per-round ratio of two interleaved models.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from reparam.app.bench.timing import paired_ratio  # noqa: E402

HEADLINE_BATCH = 32
CURVE_MODELS = ("vgg_a0", "repopt_vgg_a0", "repvgg_a0", "timm:repvgg_a0")
# issue 17's targets for RepOpt-VGG's cost: (ratio key, image size or None for all) -> bound
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


def _load(path: Path) -> list[Record] | Record | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _find(records: list[Record], model: str, batch: int) -> Record | None:
    return next((r for r in records if r["model"] == model and r["batch_size"] == batch), None)


def _step_ms(record: Record) -> list[float]:
    return [1e3 * record["batch_size"] / x for x in record["window_images_per_s"]]


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


def _mb(x: float) -> str:
    return f"{x:.1f}"


def _commands(records: list[Record]) -> list[str]:
    return sorted({r["command"] for r in records})


def _machine_line(machine: Record) -> str:
    load = machine.get("load_average") or [float("nan")]
    after = machine.get("load_average_after") or [float("nan")]
    return (
        f"{machine['cpu_model']}, {machine['cores']} cores, torch {machine['torch_version']}, "
        f"{machine['threads']} threads, timm {machine.get('timm_version')}, onnxruntime "
        f"{machine.get('onnxruntime_version')}; 1-min load average {load[0]:.2f} before, "
        f"{after[0]:.2f} after"
    )


def train_table(records: list[Record]) -> str:
    lines = [
        "| model | batch | optimizer | params (M) | train img/s | step ms | optimizer ms | "
        "accounted memory MiB (params / grads / opt state / activations) | activations per "
        "image MiB | process RSS for training MiB | max batch |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in records:
        m = r["memory"]
        parts = " / ".join(
            _mb(m[k])
            for k in ("parameters_mb", "gradients_mb", "optimizer_state_mb", "activations_mb")
        )
        rss = _mb(r["rss_train_mb"]) if r.get("rss_train_mb") is not None else "n/a"
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['optimizer']} | {r['parameters'] / 1e6:.2f} | "
            f"{r['train_images_per_s']:.1f} | {r['step_ms']:.1f} | {r['optimizer_step_ms']:.2f} | "
            f"**{_mb(r['peak_train_memory_mb'])}** ({parts}) | {m['activations_per_image_mb']:.3f} | "
            f"{rss} | {r.get('max_batch_size', '')} |"
        )
    return "\n".join(lines)


def infer_table(records: list[Record]) -> str:
    batches = sorted({r["batch_size"] for r in records})
    head = " | ".join(f"batch {b}: ms / img/s" for b in batches)
    lines = [
        f"| model | variant | runtime | params (M) | {head} | max rel diff vs train form |",
        "|---|---|---|---:|" + "---:|" * len(batches) + "---:|",
    ]
    keys = list(dict.fromkeys((r["model"], r["variant"]) for r in records))
    for model, variant in keys:
        rows = {
            r["batch_size"]: r for r in records if r["model"] == model and r["variant"] == variant
        }
        first = next(iter(rows.values()))
        cells = " | ".join(
            f"{rows[b]['latency_ms']:.2f} / {rows[b]['images_per_s']:.0f}" if b in rows else ""
            for b in batches
        )
        diff = f"{first['max_rel_diff_vs_train_form']:.1e}"
        if "max_rel_diff_vs_reparam_fused" in first:
            diff += f" (vs reparam's fused: {first['max_rel_diff_vs_reparam_fused']:.1e})"
        lines.append(
            f"| {model} | {variant} | {first['runtime']} | {first['parameters'] / 1e6:.2f} "
            f"| {cells} | {diff} |"
        )
    return "\n".join(lines)


def plot_train(records: list[Record], out: Path) -> list[str]:
    written = []
    models = list(dict.fromkeys(r["model"] for r in records))
    batches = sorted({r["batch_size"] for r in records})
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
    batches = sorted({r["batch_size"] for r in records})
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


def _target_cell(key: str, size: int, value: float) -> str:
    bound = CURVE_TARGETS.get((key, size)) or CURVE_TARGETS.get((key, None))
    if bound is None:
        return f"{value:.3f}x"
    sign, limit = bound
    met = value <= limit if sign == "<=" else value >= limit
    return f"{value:.3f}x ({sign} {limit:.2f}x: {'met' if met else '**not met**'})"


def curve_ratio_table(curves: dict[int, list[Record]], batch: int) -> str:
    columns = (
        ("repopt_over_repvgg_throughput", "RepOpt-VGG / RepVGG img/s"),
        ("repopt_over_repvgg_memory", "RepOpt-VGG / RepVGG memory"),
        ("repopt_over_plain_throughput", "RepOpt-VGG / plain VGG img/s"),
        ("repopt_over_plain_memory", "RepOpt-VGG / plain VGG memory"),
        ("repopt_over_repvgg_max_batch", "RepOpt-VGG / RepVGG largest batch"),
    )
    lines = [
        f"| image size (batch {batch}) | " + " | ".join(title for _, title in columns) + " |",
        "|---:|" + "---|" * len(columns),
    ]
    for size, records in curves.items():
        ratios = curve_ratios(records, batch)
        cells = (_target_cell(k, size, ratios[k]) if k in ratios else "" for k, _ in columns)
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def max_batch_table(curves: dict[int, list[Record]]) -> str | None:
    """Largest batch per model (rows) and image size (columns); None without a budget."""
    budgets = {
        r["max_batch"]["budget_mb"] for rs in curves.values() for r in rs if "max_batch" in r
    }
    if not budgets:
        return None
    sizes = list(curves)
    lines = [
        f"| largest batch within {' / '.join(f'{b:g}' for b in sorted(budgets))} MiB | "
        + " | ".join(f"{s} px" for s in sizes)
        + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for model in _curve_models(curves):
        cells = []
        for size in sizes:
            record = next((r for r in curves[size] if r["model"] == model), {})
            cells.append(str(record.get("max_batch_size", "")))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _curve_models(curves: dict[int, list[Record]]) -> list[str]:
    return list(dict.fromkeys(r["model"] for records in curves.values() for r in records))


def curve_explanation(curves: dict[int, list[Record]], batch: int) -> str | None:
    """Where RepOpt-VGG's memory difference comes from, in numbers from the smallest and the
    largest image size recorded; None when RepOpt-VGG, RepVGG or plain VGG is missing."""
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
        size: (a["memory"]["activations_per_image_mb"], b["memory"]["activations_per_image_mb"])
        for size, (a, b) in ((small, (repopt, repvgg)), (large, (repopt_l, repvgg_l)))
    }
    gap = per_image[small][1] - per_image[small][0]
    extra_fixed = fixed["repopt"] - fixed["repvgg"]
    if extra_fixed <= 0:
        breakeven = "at every batch size"
    elif gap > 0:
        breakeven = f"from batch {extra_fixed / gap:.0f} on at {small} px"
    else:
        breakeven = "at no batch size"

    def memory_ratio(a: Record, b: Record) -> str:
        return f"{a['peak_train_memory_mb'] / b['peak_train_memory_mb']:.2f}x"

    def throughput(size: int, other: str) -> str:
        return f"{curve_ratios(curves[size], batch)[f'repopt_over_{other}_throughput']:.2f}x"

    return (
        "Where the difference comes from. RepOpt-VGG trains the plain VGG network itself, so its "
        "parameters, gradients, momentum and saved activations are plain VGG's "
        f"({fixed['plain']:.1f} MiB that do not grow with the batch; "
        f"{per_image[small][0]:.3f} MiB of saved activations per image at {small} px, "
        f"{per_image[large][0]:.2f} MiB at {large} px). RepOptSGD adds one cost, its gradient "
        f"masks in the optimizer state: {masks:.1f} MiB "
        f"({100 * masks / plain['peak_train_memory_mb']:.1f}% of plain VGG's accounted memory at "
        f"batch {batch}, {small} px). RepVGG instead trains extra 1x1 and identity branches: "
        f"{fixed['repvgg'] - fixed['plain']:.1f} MiB more fixed memory (branch weights, their "
        "gradients and momentum, BatchNorm buffers) and the activations every branch saves for "
        f"backward, {per_image[small][1]:.3f} MiB per image at {small} px and "
        f"{per_image[large][1]:.2f} MiB at {large} px "
        f"({per_image[large][1] / per_image[large][0]:.2f}x RepOpt-VGG's). The masks are a fixed "
        "cost and saved activations grow with batch x pixels, so RepOpt-VGG's advantage grows "
        f"with resolution and batch: RepOpt-VGG / RepVGG memory is {memory_ratio(repopt, repvgg)} "
        f"at {small} px and {memory_ratio(repopt_l, repvgg_l)} at {large} px (batch {batch}), and "
        f"RepOpt-VGG needs less memory than RepVGG {breakeven}. Speed: RepOpt-VGG runs plain "
        "VGG's forward and backward, its one extra the masked update, so it trains at "
        f"{throughput(small, 'plain')} plain VGG's images/s at {small} px and "
        f"{throughput(large, 'plain')} at {large} px, against RepVGG "
        f"{throughput(small, 'repvgg')} and {throughput(large, 'repvgg')} (paired medians)."
    )


def plot_curves(curves: dict[int, list[Record]], batch: int, out: Path) -> list[str]:
    """Training images/s against image size at ``batch``, and accounted memory against batch
    (one panel per image size); one line per model."""
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
        batches = sorted({r["batch_size"] for r in curves[size]})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(NullLocator())
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Accounted training memory against batch")
    fig.tight_layout()
    fig.savefig(out / "speed_curve_memory.png", dpi=120)
    plt.close(fig)
    return ["speed_curve_throughput.png", "speed_curve_memory.png"]


def curve_section(
    curves: dict[int, list[Record]], batch: int, results: Path, rel: Path
) -> list[str]:
    """The cost-curve section of docs/benchmarks.md (plots written into ``results``)."""
    batch = curve_batch(curves, batch)
    plot_curves(curves, batch, results)
    records = [r for rs in curves.values() for r in rs]
    doc = [
        "## Cost curves over image size (A0 width)",
        "",
        "Plain VGG, RepOpt-VGG (RepOptSGD), RepVGG and timm's RepVGG, side by side per image "
        "size (one `reparam bench train` run each). Targets (issue 17): RepOpt-VGG memory at "
        "most 1% above plain VGG's and throughput at least 0.99x plain VGG's; RepOpt-VGG / "
        "RepVGG memory at most 0.90x at 32 px and 0.72x at 224 px.",
        "",
        curve_ratio_table(curves, batch),
        "",
    ]
    explanation = curve_explanation(curves, batch)
    if explanation:
        doc += [explanation, ""]
    largest = max_batch_table(curves)
    if largest:
        doc += [largest, ""]
    doc += [
        f"![throughput against image size]({rel}/speed_curve_throughput.png)",
        f"![memory against batch]({rel}/speed_curve_memory.png)",
        "",
        "Machine: " + _machine_line(records[0]["machine"]),
        "",
        "Commands:",
        "",
    ]
    return doc + [f"    {c}" for c in _commands(records)] + [""]


def deploy_table(records: list[Record]) -> str:
    """Fused-model latency per runtime (rows) and batch (columns), with the paired speed-up over
    torch eager and torch.compile's compile time (not part of the latency)."""
    batches = sorted({r["batch_size"] for r in records})
    lines = [
        "| model | runtime | "
        + " | ".join(f"batch {b}: ms (x eager)" for b in batches)
        + " | compile s (per batch) |",
        "|---|---|" + "---:|" * len(batches) + "---:|",
    ]
    for model in dict.fromkeys(r["model"] for r in records if r["variant"] == "fused"):
        eager = {
            r["batch_size"]: r for r in records if r["model"] == model and r["variant"] == "fused"
        }
        for variant, runtime in DEPLOY_VARIANTS.items():
            rows = {
                r["batch_size"]: r
                for r in records
                if r["model"] == model and r["variant"] == variant
            }
            if not rows:
                continue
            first = next(iter(rows.values()))
            if first.get("error"):
                lines.append(f"| {model} | {runtime} | failed: {first['error']} |")
                continue
            cells = []
            for b in batches:
                if b not in rows:
                    cells.append("")
                    continue
                speedup = paired_ratio(eager[b]["window_latency_ms"], rows[b]["window_latency_ms"])
                cells.append(f"{rows[b]['latency_ms']:.2f} ({speedup:.2f}x)")
            compile_s = " / ".join(
                f"{rows[b]['compile_s']:.1f}" for b in batches if "compile_s" in rows.get(b, {})
            )
            lines.append(f"| {model} | {runtime} | " + " | ".join(cells) + f" | {compile_s} |")
    return "\n".join(lines)


def _ratio_lines(h: dict[str, Any]) -> list[str]:
    def fmt(key: str, text: str, target: str = "") -> str | None:
        if key not in h:
            return None
        value = h[key]
        shown = (
            f"{100 * value:+.1f}%" if "overhead" in key or "slowdown" in key else f"{value:.2f}x"
        )
        return f"| {text} | **{shown}** | {target} |"

    rows = [
        fmt(
            "repopt_over_repvgg_throughput",
            "RepOpt-VGG / RepVGG training images/s",
            "paper: 1.7x (GPU, 224 px)",
        ),
        fmt(
            "repopt_over_repvgg_memory",
            "RepOpt-VGG / RepVGG accounted training memory",
            "<= 0.90x (0.72x at 224 px)",
        ),
        fmt(
            "repopt_over_plain_vgg_memory",
            "RepOpt-VGG / plain VGG accounted training memory"
            + (
                f" (RepOptSGD's extra state: {h['repopt_grad_mask_memory_mb']:.2f} MiB)"
                if "repopt_grad_mask_memory_mb" in h
                else ""
            ),
            "<= 1.01x",
        ),
        fmt("repopt_over_repvgg_activations", "RepOpt-VGG / RepVGG saved activations", ""),
        fmt("repopt_over_repvgg_rss", "RepOpt-VGG / RepVGG process RSS for training", ""),
        fmt(
            "repopt_over_repvgg_max_batch",
            "RepOpt-VGG / RepVGG largest batch in the budget",
            "paper: 260/198 = 1.31x",
        ),
        fmt(
            "repopt_optimizer_step_over_sgd",
            "RepOptSGD step / torch SGD step (same model, in training)",
            "<= 1.00x",
        ),
        fmt(
            "repopt_optimizer_overhead_of_step",
            "RepOptSGD step - SGD step, as a share of a training step",
            "",
        ),
        fmt("repopt_step_slowdown_vs_sgd", "whole training step, RepOptSGD vs SGD", ""),
        fmt(
            "repopt_over_plain_vgg_throughput",
            "RepOpt-VGG / plain VGG training images/s",
            ">= 0.99x",
        ),
        fmt(
            "reparam_repvgg_over_timm_repvgg_throughput",
            "reparam RepVGG / timm RepVGG training images/s",
            "",
        ),
    ]
    width = h["width"].upper()
    title = f"| ratio ({width} width, 32x32, batch {h['batch_size']}, paired medians) | measured | target |"
    return [title, "|---|---:|---|"] + [r for r in rows if r]


FACTORED_MASKS = (
    "RepOptSGD / RepOptAdamW store a CSLA mask factored: one value per output channel and tap "
    "(`[C_out, 1, k, k]`, the same for every input channel) plus the identity's diagonal "
    "centre, instead of the full `[C_out, C_in, k, k]` tensor. The masks are applied in place in "
    "the gradients (`step()` leaves `M * grad` in `.grad`), block by block, multiplying each "
    "chunk by its factors repeated over two input channels and then setting the diagonal, so "
    "masking needs no scratch and the update is the full-mask one bit for bit; RepOptSGD then "
    "runs torch's fused SGD kernel on the block (one pass for decay, momentum and weight; the "
    "kernel of `torch.optim.SGD(fused=True)`, which is not torch's CPU default). Masks that do "
    "not factor stay full size: depthwise convolutions and 1-D parameters (the factors would be "
    "as large) and `grad_mults=` masks that vary over input channels. Nesterov and AdamW run the "
    "same blocked update as heavy-ball momentum."
)


def optimizer_section(profile: Record) -> list[str]:
    """Per model: ms per ``optimizer.step()`` and optimizer-state MiB of every optimizer."""
    doc = [
        "## Optimizer step and state",
        "",
        FACTORED_MASKS,
        "",
        "Median ms per `optimizer.step()` (same weights and gradients, interleaved) and the "
        "optimizer's state after one step (buffers, masks or factors and tiles, scratch; MiB); "
        "the gradients are copied back before every step and the copy's time subtracted:",
        "",
    ]
    for name, result in profile["models"].items():
        doc += [
            f"`{name}`, {result['parameters'] / 1e6:.2f}M parameters, "
            f"{result['masked_elements'] / 1e6:.2f}M of them masked:",
            "",
            "| optimizer | ms/step | state MiB |",
            "|---|---:|---:|",
        ]
        doc += [
            f"| {label} | {ms:.2f} | {result['optimizer_state_mib'][label]:.1f} |"
            for label, ms in result["optimizer_step_ms"].items()
        ]
        doc.append("")
    if "in_training" in profile:
        doc += in_training_lines(profile["in_training"])
    return doc + [
        f"Machine: {_machine_line(profile['machine'])}",
        "",
        f"    {profile['command']}",
        "",
    ]


def in_training_lines(training: Record) -> list[str]:
    """Heavy-ball ``step()`` timed inside training, and what RepOptSGD's time is made of."""
    ms = training["optimizer_step_ms"]
    torch_ms, fused = ms["torch SGD heavy-ball"], ms["torch SGD heavy-ball, fused"]
    repopt, unmasked = ms["RepOptSGD heavy-ball"], ms["RepOptSGD heavy-ball, no masks"]
    per_tap = ms["RepOptSGD heavy-ball, per-tap masks only"]
    lines = [
        f"Inside training (`{training['model']}`, {training['image_size']} px, batch "
        f"{training['batch_size']}: forward and backward before every step, so each step meets "
        "the gradients as training leaves them; median ms per `step()` over interleaved rounds):",
        "",
        "| optimizer | ms/step | vs torch SGD (default) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {value:.2f} | {value / torch_ms:.2f}x |" for label, value in ms.items()]
    return lines + [
        "",
        f"RepOptSGD takes {repopt:.2f} ms against {torch_ms:.2f} ms for torch's default SGD (the "
        f"for-loop on the CPU; {repopt / torch_ms:.2f}x) and {fused:.2f} ms for torch's "
        f"`fused=True` SGD ({repopt / fused:.2f}x), whose kernel it runs after its masks: "
        f"without masks it takes {unmasked:.2f} ms. The masks add {repopt - unmasked:.2f} ms: "
        f"{per_tap - unmasked:.2f} ms for multiplying each chunk by its per-tap factors and "
        f"{repopt - per_tap:.2f} ms for setting the identity's diagonal. The multiply is one more "
        "in-place pass over the gradients: a 2 MiB block's gradients, weights and momentum do not "
        "fit one core's 2 MiB L2 together, so each pass streams from the next cache level, and "
        "smaller blocks cost more in per-op dispatch than they save (the block-size rows). The "
        "diagonal is a strided gather of one element per row, a cache miss each, before the "
        "multiply. Only a kernel that takes the mask (mask, decay, momentum and weight in one "
        "pass) would remove both; torch's fused SGD takes no per-element multiplier.",
        "",
    ]


def render(results: Path, docs: Path, batch: int = HEADLINE_BATCH) -> dict[str, Any]:
    headline_file = results / "speed_train_a0.json"
    train = _load(headline_file)
    if not train:
        raise SystemExit(f"{headline_file}: not found; run benchmarks/run_speed.sh first")
    train_b1 = _load(results / "speed_train_b1.json") or []
    infer_all = _load(results / "speed_infer.json") or []
    infer = [r for r in infer_all if r["latency_ms"] is not None]  # failed compiles left out
    curves = load_curves(results)
    cpu_paths = _load(results / "cpu_paths.json")
    cpu_accuracy = _load(results / "cpu_paths_accuracy.json")
    profile = _load(results / "speed_optimizer_profile.json")
    h = headline(train, batch)
    plots = plot_train(train, results) + (plot_infer(infer, results) if infer else [])
    rel = Path("../benchmarks/results")
    budget = next((r["max_batch"]["budget_mb"] for r in train if "max_batch" in r), None)

    doc = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/render.py` from the JSON in `benchmarks/results/` (do not "
        "edit by hand). Re-run everything with `benchmarks/run_speed.sh`.",
        "",
        "Method: synthetic data, one fixed batch per model; every model is warmed up, then the "
        "models run one timed window each per round, in a rotating order, so ratios are "
        "paired per round (median over rounds) and machine drift cancels. Accounted memory = "
        "parameters + buffers + gradients + optimizer state (momentum and, for RepOptSGD, its "
        "gradient masks) + the tensors autograd saves for backward (saved-tensor hooks, "
        "unique storages): the step's peak minus short-lived temporaries. Process RSS for "
        "training = peak RSS of a fresh process training that model minus its RSS after "
        "imports."
        + (
            f" Largest batch: the largest batch whose accounted memory fits {budget:g} MiB "
            "(predicted from the per-image memory, searched and verified by running)."
            if budget
            else ""
        ),
        "",
        "## Headline (RepOptimizer's training-cost claims)",
        "",
        "RepOpt-VGG against RepVGG and plain VGG. Targets: the training speed, memory and "
        "largest-batch gains the RepOptimizer paper reports for RepOpt-VGG over RepVGG "
        "(Ding et al. 2022, https://arxiv.org/abs/2205.15242; "
        "https://github.com/DingXiaoH/RepOptimizers), measured there on a GPU at 224x224, and "
        "this project's bound on RepOptSGD's extra cost per step.",
        "",
    ]
    doc += _ratio_lines(h) + [""]
    doc += [
        "## Training, A0 width, 32x32",
        "",
        train_table(train),
        "",
        f"![training throughput]({rel}/speed_train_throughput.png)",
        f"![training memory]({rel}/speed_train_memory.png)",
    ]
    if "speed_max_batch.png" in plots:
        doc.append(f"![max batch]({rel}/speed_max_batch.png)")
    doc += ["", "Machine: " + _machine_line(train[0]["machine"]), "", "Commands:", ""]
    doc += [f"    {c}" for c in _commands(train)] + [""]
    h_b1 = headline(train_b1, batch, "b1") if train_b1 else None
    if train_b1:
        doc += [
            "## Training, B1 width, 32x32",
            "",
            *_ratio_lines(h_b1),
            "",
            train_table(train_b1),
            "",
            "Machine: " + _machine_line(train_b1[0]["machine"]),
            "",
            "Commands:",
            "",
        ]
        doc += [f"    {c}" for c in _commands(train_b1)] + [""]
    if curves:
        doc += curve_section(curves, batch, results, rel)
    if cpu_paths or cpu_accuracy:
        doc += ["## Training on the CPU: bf16 autocast and channels-last", ""]
    if cpu_paths:
        doc += [
            cpu_paths["table"],
            "",
            "Machine: " + _machine_line(cpu_paths["machine"]),
            "",
            f"    {cpu_paths['command']}",
            "",
        ]
    if cpu_accuracy:
        doc += [
            "CIFAR-10 subset top-1 per path (the `basic` recipe; a path may become the CPU "
            "default only where it matches fp32 within the noise bound, the 95% interval of "
            "Welch's t-test). bf16 autocast with channels-last is the fastest path above and "
            "matches fp32 for all three models, so it is the training default on CPUs with "
            "native bf16 from 32 px (`reparam.app.train.execution_defaults`):",
            "",
            cpu_accuracy["table"],
            "",
            f"    {cpu_accuracy['command']}",
            "",
        ]
    if infer:
        doc += [
            "## Inference (train form vs fused; torch eager, ONNX Runtime FP32 and INT8)",
            "",
            "INT8: QDQ, per-channel weights, MinMax on 32 random images (a speed figure; "
            "accuracy after PTQ is in the deployment docs).",
            "",
            "The fused model by runtime (median latency; in brackets the paired speed-up over "
            "torch eager; torch.compile's compile time, its first call at each batch size, is "
            "not part of its latency; inductor's caches persist within a run and on disk, so a "
            "fused graph equal to one compiled before, as RepVGG's is to RepOpt-VGG's, compiles "
            "from cache):",
            "",
            deploy_table(infer_all),
            "",
            "Every variant:",
            "",
            infer_table(infer),
            "",
            f"![inference]({rel}/speed_infer.png)",
            "",
            "Machine: " + _machine_line(infer[0]["machine"]),
            "",
            "Commands:",
            "",
        ]
        doc += [f"    {c}" for c in _commands(infer)] + [""]
    if profile and "models" in profile:
        doc += optimizer_section(profile)
    elif profile:  # recorded before factored masks: its figures no longer describe the code
        doc += [
            "## Optimizer step and state",
            "",
            FACTORED_MASKS,
            "",
            "Not yet recorded for this version (factored masks, blocked Nesterov and AdamW); "
            "record it on a quiet machine with the command below, then re-render.",
            "",
            "    .venv/bin/python benchmarks/profile_optimizer.py --threads 2 --steps 10 "
            "--repeats 15 --record benchmarks/results/speed_optimizer_profile.json",
            "",
        ]
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text("\n".join(doc))

    machine = _machine_line(train[0]["machine"]).split(";")[0]
    readme = [
        "## Performance",
        "",
        f"Measured on this project's 2-core CPU ({machine}), side by side in one run; "
        "full tables, plots and method in [docs/benchmarks.md](docs/benchmarks.md).",
        "",
    ]
    readme += _ratio_lines(h) + [""]
    if h_b1 and len(_ratio_lines(h_b1)) > 2:
        readme += _ratio_lines(h_b1) + [""]
    rows = [r for r in train if r["batch_size"] == h["batch_size"]]
    readme += [
        f"| model (batch {h['batch_size']}, 32x32) | optimizer | train img/s | "
        "accounted memory MiB | max batch |",
        "|---|---|---:|---:|---:|",
    ]
    readme += [
        f"| {r['model']} | {r['optimizer']} | {r['train_images_per_s']:.1f} | "
        f"{_mb(r['peak_train_memory_mb'])} | {r.get('max_batch_size', '')} |"
        for r in rows
    ]
    readme += ["", "Reproduce:", ""] + [f"    {c}" for c in _commands(train)] + [""]
    (results / "speed_README_section.md").write_text("\n".join(readme))
    return h


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--batch", type=int, default=HEADLINE_BATCH, help="headline batch size")
    args = parser.parse_args()
    h = render(args.results, args.docs, args.batch)
    print(json.dumps(h, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
