"""The PTQ comparison: several models of one deploy structure, quantized with identical settings.

Each source is a trained run folder or checkpoint, or a registered model name that
:func:`train_sources` trains first (``reparam deploy --compare NAME ...``). Every model goes
through :func:`reparam.app.deploy.deploy` with the same :class:`QuantSettings`; the rows report
FP32 and INT8 top-1 on the val split, the drop, top-1 agreement, output SQNR and weight figures
(``reparam.app.report.ptq_table`` prints them).
"""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reparam.app.dataspec import load_eval_data
from reparam.app.deploy.pipeline import deploy
from reparam.app.deploy.predict import check_class_names
from reparam.app.folders import describe_folder, read_marker, write_marker
from reparam.app.train import TrainConfig, fit
from reparam.data import Preprocessing
from reparam.errors import DeployError, UserError
from reparam.extras import require_extra
from reparam.files import read_json, write_json
from reparam.models import list_models
from reparam.quant.ort import QuantSettings

__all__ = ["check_sources", "compare_ptq", "start_compare_folder", "train_sources"]

log = logging.getLogger(__name__)


def check_sources(sources: list[str], data: str) -> None:
    """Refuse, before any work, a source that is missing or whose classes (count, and names when
    recorded) are not ``data``'s."""
    bundle = None
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise DeployError(f"{path}: not found (expected a run folder or a .safetensors file)")
        config = read_json((path if path.is_dir() else path.parent) / "config.json")
        bundle = bundle or load_eval_data(data, Preprocessing(32))  # only its names are read
        check_class_names(source, config.get("class_names"), bundle, config["num_classes"])


def compare_ptq(
    sources: list[str],
    data: str,
    out_dir: str | os.PathLike,
    settings: QuantSettings,
    *,
    image_size: int = 32,
    latency_repeats: int = 20,
    threads: int | None = None,
    train: Mapping[str, Any] | None = None,
    progress: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Deploy + quantize every source (all checked first, :func:`check_sources`); returns (and
    writes ``compare.json``) settings and rows.

    ``train`` (``epochs``, ``batch_size``, ``seed``) is the schedule of the sources that are
    model names, trained first by :func:`train_sources` (without it, every source must be a run
    folder or checkpoint); it is recorded as given. ``out_dir`` must be absent, empty or a
    comparison folder (:func:`start_compare_folder`).
    """
    require_extra("deploy")  # before any model is trained
    if train is not None:
        sources = train_sources(
            sources, data, out_dir, train, image_size=image_size, progress=progress
        )
    out_dir = start_compare_folder(out_dir)
    check_sources(sources, data)
    rows = []
    for source in sources:
        path = Path(source)
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
            force=force,
        )
        rows.append(_row(summary, out_dir / "deploy" / name))
    result = {
        "data": data,
        "image_size": image_size,
        "settings": settings.to_dict(),
        "train": dict(train or {}),
        "rows": rows,
    }
    write_json(result, out_dir / "compare.json")
    return result


def train_sources(
    sources: list[str],
    data: str,
    out_dir: str | os.PathLike,
    schedule: Mapping[str, Any],
    *,
    image_size: int = 32,
    progress: bool = False,
) -> list[str]:
    """``sources`` as run folders: a registered model name that is not a path is trained on
    ``data`` into ``out_dir/runs/NAME`` with ``schedule`` (``epochs``, ``batch_size``, ``seed``;
    the same for all, on the CPU); a finished run there is reused. Every source is checked (its
    name, its classes against ``data``), then the comparison folder, before any training."""
    runs = Path(out_dir) / "runs"
    found = {  # a run, or one trained before
        source: source if Path(source).exists() else str(runs / source)
        for source in sources
        if Path(source).exists() or (runs / source / "metrics.json").is_file()
    }
    for source in sources:
        if source not in found and source not in list_models():
            raise UserError(
                f"{source!r} is neither a run folder/checkpoint nor a registered model "
                f"({', '.join(list_models())})"
            )
    check_sources(list(found.values()), data)
    start_compare_folder(out_dir)  # marked before runs are trained into it
    trained = []
    for source in sources:
        if source in found:
            trained.append(found[source])
            continue
        config = TrainConfig(
            model=source,
            data=data,
            epochs=schedule["epochs"],
            image_size=image_size,
            batch_size=schedule["batch_size"],
            seed=schedule["seed"],
            out=str(runs / source),
            device="cpu",
        )
        log.info("training %s on %s for %d epochs -> %s", source, data, config.epochs, config.out)
        fit(config, progress=progress)
        trained.append(config.out)
    return trained


def start_compare_folder(out_dir: str | os.PathLike) -> Path:
    """Create or reuse the comparison folder ``out_dir`` (marked ``compare``, not listing its
    files: it is written into, never replaced whole). Refused: a file, another reparam output,
    or a folder holding anything (a run, data, other files) that is not a comparison folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DeployError(f"{out_dir}: is a file; --out must be a folder")
    marker = read_marker(out_dir) if out_dir.is_dir() else None
    if marker is not None and marker["kind"] == "compare":
        return out_dir
    if marker is None and (out_dir / "compare.json").is_file():  # written before markers
        write_marker(out_dir, "compare", list_files=False)
        return out_dir
    found = describe_folder(out_dir)
    if found:
        raise DeployError(
            f"{out_dir}: {found}, not a comparison folder; choose another --out for --compare"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_marker(out_dir, "compare", list_files=False)
    return out_dir


def _row(summary: dict[str, Any], deploy_dir: Path) -> dict[str, Any]:
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
