"""``reparam deploy`` as a function: fuse -> fused folder -> ONNX (checked) -> INT8 + analysis.

Deploy folder layout (**contract**)::

    fused.safetensors, config.json   the fused model (see reparam.saved)
    model.onnx                       FP32, dynamic batch, checked against torch   (--onnx / --int8)
    model.int8.onnx                  QDQ INT8                                      (--int8)
    deploy.json                      what was done: ONNX check, INT8 settings, summary figures
    quant.json                       per-layer weight statistics + end-to-end INT8 figures (--int8)
    .reparam.json                    marker: a deploy folder and its files (see reparam.files)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reparam.analysis.quant_stats import output_metrics, weight_stats
from reparam.app.dataspec import load_eval_data
from reparam.app.deploy.predict import (
    Predictor,
    check_class_names,
    checkpoint_of,
    class_names_of,
    predict_dataset,
    preprocessing_of,
    session_latency_ms,
)
from reparam.app.folders import atomic_folder, check_replaceable, exclusive_lock
from reparam.app.train.state import describe_checkpoint
from reparam.data import Preprocessing
from reparam.errors import DeployError
from reparam.extras import require_extra
from reparam.files import json_text, write_json
from reparam.quant.onnx import (
    ONNX_TOLERANCE,
    check_onnx_vs_torch,
    export_onnx,
    open_session,
    run_session,
)
from reparam.quant.ort import QuantSettings, calibration_images, quantize_onnx
from reparam.saved import fuse_for_deploy, fused_folder_of, load_fused, load_model, save_fused

__all__ = [
    "INT8_NAME",
    "ONNX_NAME",
    "Int8Writer",
    "check_deploy_target",
    "deploy",
    "load_source",
    "onnx_metadata",
]

log = logging.getLogger(__name__)

ONNX_NAME, INT8_NAME = "model.onnx", "model.int8.onnx"
#: what a deploy folder holds; a folder of these alone is taken for a deploy folder written
#: before folders carried a marker
DEPLOY_FILES = frozenset(
    ("fused.safetensors", "config.json", ONNX_NAME, INT8_NAME, "deploy.json", "quant.json")
)

# (fused model, config, FP32 ONNX path, INT8 path to write, calibration images) -> what was done:
# {"settings": {...}, "calib_images_used": n, "float_nodes": [...], ...} (quant.json's header)
Int8Writer = Callable[[torch.nn.Module, dict[str, Any], Path, Path, np.ndarray], dict[str, Any]]


def load_source(source: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(fused model, config)`` from a run folder, a ``.safetensors`` checkpoint or a fused folder;
    an unfused model is fused here (logged)."""
    folder = fused_folder_of(source)
    if folder is not None:
        return load_fused(folder)
    model, config = load_model(source)
    log.info("fusing %s (%s) for deployment", config["model"], source)
    return fuse_for_deploy(model), config


def _onnx_predictor(path: Path, threads: int | None, shown: Path) -> tuple[Predictor, Any]:
    """A predictor of the ONNX file ``path`` that names itself ``shown`` (its final path)."""
    session = open_session(path, threads)
    return Predictor(lambda images: run_session(session, images), "onnx", str(shown), None), session


def deploy(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    onnx: bool = False,
    int8: bool = False,
    calib_data: str | None = None,
    settings: QuantSettings | None = None,
    image_size: int | None = None,
    latency_batch: int = 32,
    latency_repeats: int = 30,
    threads: int | None = None,
    progress: bool = False,
    force: bool = False,
    int8_writer: Int8Writer | None = None,
) -> dict[str, Any]:
    """Write the deploy folder (module docstring) and return ``deploy.json``'s content.

    The folder is written beside ``out_dir`` and swapped in whole when complete, under a lock
    (:func:`reparam.app.folders.exclusive_lock`); an existing ``out_dir`` is replaced only with
    ``force`` and only when it is a deploy folder (:func:`check_deploy_target`).

    INT8 needs ``calib_data`` (a data spec) with the model's classes: calibration uses
    ``settings.calib_images`` images of its train split, the end-to-end figures its val split,
    both prepared by the model's recorded preprocessing (no augmentation; ``image_size`` changes
    only its size). ``deploy.json`` records which checkpoint was deployed (``checkpoint``); a run
    that has not finished is deployed with a warning. ``model.int8.onnx`` comes from
    ``int8_writer`` when given (``reparam qat``), else from PTQ by ``settings.backend``. ONNX Runtime output differing from
    torch by more than ``ONNX_TOLERANCE`` (relative) raises :class:`DeployError`.
    """
    out_dir = Path(out_dir)
    settings = settings or QuantSettings()
    if onnx or int8:  # before any work: a missing extra is one line naming it
        require_extra("deploy")
    if int8 and int8_writer is None and settings.backend == "pt2e":
        require_extra("qat")
    if image_size is not None and image_size < 1:
        raise DeployError(f"image_size must be a positive number of pixels, got {image_size}")
    check_deploy_target(out_dir, force)
    fused, config = load_source(source)
    image_size = image_size or config.get("image_size")
    if (onnx or int8) and not image_size:
        raise DeployError(f"{source}: config.json has no image_size; pass --image-size")
    preprocessing = _preprocessing_at(config, image_size) if image_size else None
    bundle = _calibration_data(calib_data, preprocessing, config, source) if int8 else None
    checkpoint = checkpoint_of(source)
    if checkpoint and checkpoint["finished"] is False:
        log.warning(
            "%s: the run has not finished: deploying its %s",
            source,
            describe_checkpoint(checkpoint),
        )
    summary: dict[str, Any] = {
        "source": str(source),
        "model": config["model"],
        "checkpoint": checkpoint,
        "out": str(out_dir),
        "fused": str(out_dir / "fused.safetensors"),
        "image_size": image_size,
    }
    with exclusive_lock(out_dir), atomic_folder(out_dir, "deploy", legacy_deploy_files) as work:
        save_fused(fused, config, work)
        if onnx or int8:
            metadata = onnx_metadata(config, preprocessing)
            onnx_path = export_onnx(fused, work / ONNX_NAME, image_size, metadata)
            probe = torch.randn(
                3, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)
            )
            check = check_onnx_vs_torch(fused, onnx_path, probe)
            summary["onnx"] = {
                "path": str(out_dir / ONNX_NAME),
                **check.to_dict(),
                "tolerance": ONNX_TOLERANCE,
            }
            if not check.finite:
                raise DeployError(
                    f"{source}: the model produces NaN/inf outputs on random {image_size} px "
                    "inputs; check its weights"
                )
            if not check.passed:
                raise DeployError(
                    f"{out_dir / ONNX_NAME}: ONNX Runtime differs from torch: "
                    f"{check.describe()} (tolerance {ONNX_TOLERANCE} relative); nothing written"
                )
            log.info(
                "%s: ONNX Runtime matches torch (max abs error %.2e)",
                out_dir / ONNX_NAME,
                check.max_abs_err,
            )
        if int8:
            summary["int8"] = _quantize_and_measure(
                fused,
                config,
                onnx_path,
                work,
                out_dir,
                calib_data,
                bundle,
                settings.calib_images,
                int8_writer or _ptq_writer(settings, image_size, metadata),
                latency_batch,
                latency_repeats,
                threads,
                progress,
            )
            summary["int8"]["path"] = str(out_dir / INT8_NAME)
        summary = _finite(summary)
        write_json(summary, work / "deploy.json")
    return summary


def onnx_metadata(
    config: dict[str, Any], preprocessing: Preprocessing | None = None
) -> dict[str, str]:
    """What the ONNX file records (``metadata_props``): model, data, preprocessing (``config``'s
    unless given: an export at another size), class names."""
    preprocessing = preprocessing or preprocessing_of(config)
    return {
        "model": str(config["model"]),
        "data": str(config.get("data", "")),
        "preprocessing": json_text(preprocessing.to_dict()),
        "class_names": json_text(class_names_of(config)),
    }


def check_deploy_target(out_dir: Path, force: bool) -> None:
    """Refuse, before any work, an output that would destroy something: anything but an empty
    folder or a deploy folder (:func:`reparam.app.folders.check_replaceable`: never a run, data or
    other files, nested anywhere inside), and a deploy folder unless ``force``."""
    check_replaceable(out_dir, "deploy", legacy_deploy_files)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise DeployError(f"{out_dir}: already exists; pass --force to replace it")


def legacy_deploy_files(folder: Path) -> frozenset[str]:
    """The names a deploy folder written before markers holds: :data:`DEPLOY_FILES`."""
    return DEPLOY_FILES


def _preprocessing_at(config: dict[str, Any], image_size: int) -> Preprocessing:
    """The recorded preprocessing at the export size (the default one when none is recorded)."""
    recorded = "preprocessing" in config or "image_size" in config
    preprocessing = preprocessing_of(config) if recorded else Preprocessing(image_size)
    return dataclasses.replace(preprocessing, image_size=image_size)


def _calibration_data(
    calib_data: str | None, preprocessing: Preprocessing, config: dict[str, Any], source
):
    """The data bundle for INT8, both splits prepared by ``preprocessing``, its classes checked
    against the model's (before any export work is done)."""
    if not calib_data:
        raise DeployError(
            "--int8 needs --calib-data SPEC (images to calibrate activation ranges on)"
        )
    bundle = load_eval_data(calib_data, preprocessing)
    check_class_names(str(source), config.get("class_names"), bundle, config["num_classes"])
    return bundle


def _quantize_and_measure(
    fused,
    config,
    onnx_path: Path,
    work: Path,
    out_dir: Path,
    calib_data: str,
    bundle,
    calib_images: int,
    writer: Int8Writer,
    latency_batch: int,
    latency_repeats: int,
    threads: int | None,
    progress: bool,
) -> dict[str, Any]:
    images = calibration_images(bundle.train, calib_images)
    if len(images) < calib_images:
        log.warning(
            "calibration: using %d images, all of %s's train split, of the %d asked",
            len(images),
            calib_data,
            calib_images,
        )
    int8_path = work / INT8_NAME
    done = writer(fused, config, onnx_path, int8_path, images)
    log.info("INT8 model written to %s (%s)", out_dir / INT8_NAME, done["settings"])

    fp32, fp32_session = _onnx_predictor(onnx_path, threads, out_dir / ONNX_NAME)
    int8, int8_session = _onnx_predictor(int8_path, threads, out_dir / INT8_NAME)
    reference, labels, _ = predict_dataset(fp32, bundle.val, progress=progress)
    quantized, _, _ = predict_dataset(int8, bundle.val, progress=progress)
    end_to_end = output_metrics(reference, quantized, labels)
    end_to_end["top1_drop"] = end_to_end["top1_fp32"] - end_to_end["top1_int8"]
    latency = {
        "fp32": session_latency_ms(fp32_session, latency_batch, latency_repeats),
        "int8": session_latency_ms(int8_session, latency_batch, latency_repeats),
        "intra_op_threads": threads or "onnxruntime default (one per physical core)",
    }
    latency["speedup"] = latency["fp32"]["median_ms"] / latency["int8"]["median_ms"]
    layers = weight_stats(fused)
    report = {
        "model": config["model"],
        "data": calib_data,
        "eval_split": "val",
        **done,
        "end_to_end": end_to_end,
        "latency": latency,
        "layers": layers,
    }
    write_json(_finite(report), work / "quant.json")
    return {
        "path": str(out_dir / INT8_NAME),
        "settings": done["settings"],
        "calib_images_asked": calib_images,
        "calib_images_used": done["calib_images_used"],
        **end_to_end,
        "latency_fp32_ms": latency["fp32"]["median_ms"],
        "latency_int8_ms": latency["int8"]["median_ms"],
        "speedup": latency["speedup"],
        "float_nodes": done["float_nodes"],
    }


def _ptq_writer(settings: QuantSettings, image_size: int, metadata: dict[str, str]) -> Int8Writer:
    """Post-training quantization by ``settings.backend`` (ORT ``quantize_static`` or PT2E)."""

    def write(fused, config, onnx_path: Path, int8_path: Path, images: np.ndarray) -> dict:
        if settings.backend == "ort":
            return quantize_onnx(onnx_path, int8_path, images, settings)
        from reparam.quant.pt2e import ptq

        quantized = ptq(fused, images, settings.granularity, settings.calib_batch_size)
        export_onnx(quantized, int8_path, image_size, metadata)
        return {
            "settings": settings.to_dict(),
            "calib_images_used": len(images),
            "float_nodes": [],
        }

    return write


def _finite(obj: Any) -> Any:
    """JSON has no inf/nan: write them as strings (``"inf"``)."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
