"""Render the recorded benchmark JSON into docs/benchmarks.md, PNG plots and the README section.

    .venv/bin/python benchmarks/render.py [--results benchmarks/results --docs docs/benchmarks.md]

Reads ``speed_train_a0.json`` (the headline run), optional ``speed_train_b1.json``,
``speed_infer.json`` and ``speed_optimizer_profile.json`` from the results folder (written by
``benchmarks/run_speed.sh``); writes the ``speed_*.png`` plots beside them, ``docs/benchmarks.md``
(every figure, with the command lines and machines) and ``speed_README_section.md`` (the README's
performance section). Every ratio is
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

from reparam.bench.timing import paired_ratio  # noqa: E402

HEADLINE_BATCH = 32
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
    if repopt and sgd:
        masks = repopt["memory"]["optimizer_state_mb"] - sgd["memory"]["optimizer_state_mb"]
        out["repopt_grad_mask_memory_mb"] = masks
        if repvgg:
            out["repopt_over_repvgg_memory_without_masks"] = (
                repopt["peak_train_memory_mb"] - masks
            ) / repvgg["peak_train_memory_mb"]
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
        fmt("repopt_over_repvgg_throughput", "RepOpt-VGG / RepVGG training images/s", ">= 1.7x"),
        fmt(
            "repopt_over_repvgg_memory", "RepOpt-VGG / RepVGG accounted training memory", "<= 0.75x"
        ),
        fmt(
            "repopt_over_repvgg_memory_without_masks",
            "the same, leaving out RepOptSGD's gradient masks"
            + (
                f" ({h['repopt_grad_mask_memory_mb']:.1f} MiB)"
                if "repopt_grad_mask_memory_mb" in h
                else ""
            ),
            "",
        ),
        fmt("repopt_over_repvgg_activations", "RepOpt-VGG / RepVGG saved activations", ""),
        fmt("repopt_over_repvgg_rss", "RepOpt-VGG / RepVGG process RSS for training", ""),
        fmt(
            "repopt_over_repvgg_max_batch",
            "RepOpt-VGG / RepVGG largest batch in the budget",
            "paper: 260/198 = 1.31x",
        ),
        fmt(
            "repopt_optimizer_overhead_of_step",
            "RepOptSGD step - SGD step, as a share of a training step",
            "<= 2%",
        ),
        fmt("repopt_step_slowdown_vs_sgd", "whole training step, RepOptSGD vs SGD", ""),
        fmt(
            "repopt_over_plain_vgg_throughput",
            "RepOpt-VGG / plain VGG training images/s",
            "ideal 1.00x",
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


def render(results: Path, docs: Path, batch: int = HEADLINE_BATCH) -> dict[str, Any]:
    headline_file = results / "speed_train_a0.json"
    train = _load(headline_file)
    if not train:
        raise SystemExit(f"{headline_file}: not found; run benchmarks/run_speed.sh first")
    train_b1 = _load(results / "speed_train_b1.json") or []
    infer = _load(results / "speed_infer.json") or []
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
    if infer:
        doc += [
            "## Inference (train form vs fused; torch eager, ONNX Runtime FP32 and INT8)",
            "",
            "INT8: QDQ, per-channel weights, MinMax on 32 random images (a speed figure; "
            "accuracy after PTQ is in the deployment docs).",
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
    if profile:
        doc += [
            "## RepOptSGD step profile",
            "",
            f"`{profile['model']}`, {profile['parameters'] / 1e6:.2f}M parameters, "
            f"{profile['masked_elements'] / 1e6:.2f}M of them masked. Median ms per "
            "`optimizer.step()` (same gradients, interleaved):",
            "",
            "| optimizer | ms/step |",
            "|---|---:|",
        ]
        doc += [f"| {k} | {v:.2f} |" for k, v in profile["optimizer_step_ms"].items()]
        doc += [
            "",
            "The per-tensor comparison is RepOptSGD's update applied one tensor at a time "
            "(cache-friendly, a Python loop; max abs difference to RepOptSGD after 3 float64 "
            "steps: "
            f"{profile['per_tensor_max_abs_diff_vs_repoptsgd_float64']:.1e}).",
            "",
            "```",
            profile["profile_repoptsgd_5_steps"],
            "```",
            "",
            f"    {profile['command']}",
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
