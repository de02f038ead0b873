"""The PTQ comparison: several models of one deploy structure, quantized with identical settings.

Each source is a run folder / checkpoint, or a registered model name that is first trained on the
data spec (``reparam.train.fit``, same schedule for all). Every model then goes through
:func:`reparam.deploy.deploy` with the same :class:`QuantSettings`; the table reports FP32 and
INT8 top-1 on the val split, the drop, top-1 agreement, output SQNR and weight figures.
"""

from __future__ import annotations

import logging
import os
import statistics
from pathlib import Path
from typing import Any

from ..checkpoint import write_json
from .export import DeployError
from .pipeline import deploy
from .quantize import QuantSettings

__all__ = ["compare_ptq", "format_table"]

log = logging.getLogger(__name__)


def _train(
    name: str,
    data: str,
    out: Path,
    epochs: int,
    image_size: int,
    batch_size: int,
    seed: int,
    progress: bool,
) -> Path:
    from ..models import list_models
    from ..train import TrainConfig, fit

    if name not in list_models():
        raise DeployError(
            f"{name!r} is neither a run folder/checkpoint nor a registered model "
            f"({', '.join(list_models())})"
        )
    config = TrainConfig(
        model=name,
        data=data,
        epochs=epochs,
        image_size=image_size,
        batch_size=batch_size,
        seed=seed,
        out=str(out),
        device="cpu",
    )
    log.info("training %s on %s for %d epochs -> %s", name, data, epochs, out)
    fit(config, progress=progress)
    return out


def compare_ptq(
    sources: list[str],
    data: str,
    out_dir: str | os.PathLike,
    settings: QuantSettings,
    *,
    epochs: int = 8,
    image_size: int = 32,
    batch_size: int = 64,
    seed: int = 0,
    latency_repeats: int = 20,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Deploy + quantize every source; returns (and writes ``compare.json``) settings and rows."""
    out_dir = Path(out_dir)
    rows = []
    for source in sources:
        path = Path(source)
        if not path.exists():
            path = _train(
                source,
                data,
                out_dir / "runs" / source,
                epochs,
                image_size,
                batch_size,
                seed,
                progress,
            )
        name = path.name if path.is_dir() else path.parent.name
        summary = deploy(
            path,
            out_dir / "deploy" / name,
            int8=True,
            calib_data=data,
            settings=settings,
            image_size=image_size,
            latency_repeats=latency_repeats,
            threads=threads,
            progress=progress,
        )
        rows.append(_row(summary, out_dir / "deploy" / name))
    result = {
        "data": data,
        "image_size": image_size,
        "settings": settings.to_dict(),
        "train": {"epochs": epochs, "batch_size": batch_size, "seed": seed},
        "rows": rows,
    }
    write_json(result, out_dir / "compare.json")
    return result


def _row(summary: dict[str, Any], deploy_dir: Path) -> dict[str, Any]:
    from ..checkpoint import read_json

    int8 = summary["int8"]
    layers = read_json(deploy_dir / "quant.json")["layers"]
    convs = [layer for layer in layers if layer["kind"] == "Conv2d"]

    def median(key: str) -> float:
        return statistics.median(float(layer[key]) for layer in convs)

    return {
        "model": summary["model"],
        "source": summary["source"],
        "deploy_dir": str(deploy_dir),
        "top1_fp32": int8["top1_fp32"],
        "top1_int8": int8["top1_int8"],
        "top1_drop": int8["top1_drop"],
        "top1_agreement": int8["top1_agreement"],
        "output_sqnr_db": int8["output_sqnr_db"],
        "weight_sqnr_per_tensor_db_median": median("sqnr_per_tensor_db"),
        "weight_sqnr_per_channel_db_median": median("sqnr_per_channel_db"),
        "max_over_std_max": max(float(layer["max_over_std"]) for layer in convs),
        "excess_kurtosis_median": median("excess_kurtosis"),
        "latency_fp32_ms": int8["latency_fp32_ms"],
        "latency_int8_ms": int8["latency_int8_ms"],
        "speedup": int8["speedup"],
    }


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of :func:`compare_ptq`'s rows, preceded by the settings used."""
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
