"""INT8 post-training static quantization with ONNX Runtime (QDQ format); the settings shared
with the PT2E path (:mod:`reparam.quant.pt2e`, ``backend="pt2e"``).

Activations uint8 (asymmetric), weights int8 (symmetric), per-tensor or per-channel weights.
Calibration ranges come from a calibrator this module builds itself and hands to
``quantize_static`` as a calibration cache: ``quantize_static`` never passes ``num_bins`` to its
calibrator, and Entropy with its default ``num_bins == num_quantized_bins == 128`` has only one
candidate threshold (the full range), i.e. it silently equals MinMax. Here Entropy searches a
``num_bins``-bin histogram (2048 by default) for the KL-optimal 128-bin threshold, and Percentile
clips at ``percentile`` of a ``num_bins`` histogram. ORT's KL search uses windows symmetric about
zero, so a ReLU output (half the window empty, most mass in the zero bin) can be clipped far below
its range: on the digits A0 runs (benchmarks/results/quant_compare.json) Entropy cost 3-52 top-1
points where MinMax cost under 1.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from torch.utils.data import Dataset

from reparam.errors import DeployError
from reparam.extras import require, require_extra
from reparam.quant.onnx import input_shape, open_session

__all__ = [
    "BACKENDS",
    "CALIBRATIONS",
    "GRANULARITIES",
    "QuantSettings",
    "calibrate",
    "calibration_images",
    "first_last_nodes",
    "quantize_onnx",
    "tensor_ranges",
]

BACKENDS = ("ort", "pt2e")
GRANULARITIES = ("per-tensor", "per-channel")
CALIBRATIONS = ("minmax", "percentile", "entropy")
_COMPUTE_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class QuantSettings:
    """Everything that decides an INT8 model (reported next to every PTQ figure). ``backend``:
    ONNX Runtime's ``quantize_static`` or torchao's PT2E flow (min/max calibration, every node
    quantized: the other calibrations and ``keep_first_last_float`` are ORT-only)."""

    backend: Literal["ort", "pt2e"] = "ort"
    granularity: Literal["per-tensor", "per-channel"] = "per-channel"
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
    calib_images: int = 256
    keep_first_last_float: bool = False
    num_bins: int = 2048
    percentile: float = 99.999
    calib_batch_size: int = 32

    def __post_init__(self):
        for name in ("calib_images", "num_bins", "calib_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise DeployError(f"{name} must be an integer, got {value!r}")
        if self.backend not in BACKENDS:
            raise DeployError(f"backend {self.backend!r}: expected one of {BACKENDS}")
        if self.backend == "pt2e" and (self.calibration != "minmax" or self.keep_first_last_float):
            raise DeployError(
                "backend pt2e calibrates with min/max and quantizes every node: drop "
                "--calibration / --keep-first-last-float, or use --backend ort"
            )
        if self.granularity not in GRANULARITIES:
            raise DeployError(f"granularity {self.granularity!r}: expected one of {GRANULARITIES}")
        if self.calibration not in CALIBRATIONS:
            raise DeployError(f"calibration {self.calibration!r}: expected one of {CALIBRATIONS}")
        if self.calib_images < 1:
            raise DeployError(f"calib_images must be >= 1, got {self.calib_images}")
        if not 0 < self.percentile <= 100:
            raise DeployError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.calib_batch_size < 1:
            raise DeployError(f"calib_batch_size must be >= 1, got {self.calib_batch_size}")
        if self.num_bins < 256:
            raise DeployError(
                f"num_bins must be >= 256 (Entropy needs more than 128), got {self.num_bins}"
            )

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "format": "QDQ",
            "activations": "uint8",
            "weights": "int8 symmetric",
        }


def calibration_images(dataset: Dataset, count: int, seed: int = 0) -> np.ndarray:
    """``count`` images (a fixed-seed random subset, all when fewer) as float32 ``[N, C, H, W]``."""
    if len(dataset) == 0:
        raise DeployError("calibration data set is empty")
    order = np.random.default_rng(seed).permutation(len(dataset))[:count]
    images = np.stack([np.asarray(dataset[int(i)][0], dtype=np.float32) for i in order])
    if images.ndim != 4:
        raise DeployError(
            f"calibration images must be [C, H, W] each, got {list(images.shape[1:])}"
        )
    return images


class _ImageReader:
    """ORT ``CalibrationDataReader``: yields ``{input: batch}`` until exhausted.

    All batches have the same size (the largest divisor of ``len(images)`` up to ``batch_size``):
    ORT's histogram calibrators stack per-batch outputs and fail on a smaller last batch.
    """

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int):
        count = len(images)
        batch_size = max(d for d in range(1, min(batch_size, count) + 1) if count % d == 0)
        self.batches = [
            {input_name: images[i : i + batch_size]} for i in range(0, len(images), batch_size)
        ]
        self.position = 0

    def get_next(self) -> dict | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def __len__(self) -> int:
        return len(self.batches)


def _check_images(onnx_path: Path, images: np.ndarray) -> str:
    session = open_session(onnx_path)
    expected = input_shape(session)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise DeployError(
            f"calibration data has shape {list(images.shape)}; {onnx_path.name} expects "
            f"[N, {', '.join(map(str, expected))}] (use the image size the model was exported at)"
        )
    return session.get_inputs()[0].name


def calibrate(onnx_path: str | os.PathLike, images: np.ndarray, settings: QuantSettings):
    """Activation ranges (an ORT ``TensorsData``) from ``images`` with ``settings.calibration``."""
    require_extra("deploy")
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    onnx_path = Path(onnx_path)
    input_name = _check_images(onnx_path, images)
    method, options = {
        "minmax": (CalibrationMethod.MinMax, {}),
        "percentile": (
            CalibrationMethod.Percentile,
            {"num_bins": settings.num_bins, "percentile": settings.percentile},
        ),
        "entropy": (
            CalibrationMethod.Entropy,
            {"num_bins": settings.num_bins, "num_quantized_bins": 128},
        ),
    }[settings.calibration]
    with (
        tempfile.TemporaryDirectory(prefix="reparam-calib-") as tmp,
        contextlib.redirect_stdout(sys.stderr),
    ):  # the calibrators print progress
        calibrator = create_calibrator(
            onnx_path,
            None,
            augmented_model_path=str(Path(tmp) / "aug.onnx"),
            calibrate_method=method,
            extra_options=options,
        )
        calibrator.collect_data(
            _ImageReader(input_name, images.astype(np.float32), settings.calib_batch_size)
        )
        ranges = calibrator.compute_data()
        del calibrator
    return ranges


def tensor_ranges(ranges) -> dict[str, tuple[float, float]]:
    """``{tensor: (low, high)}`` from an ORT ``TensorsData``."""
    return {
        name: (float(np.min(r.range_value[0])), float(np.max(r.range_value[1])))
        for name, r in ranges.items()
    }


def first_last_nodes(onnx_path: str | os.PathLike) -> list[str]:
    """Names of the first and the last Conv/Gemm/MatMul node (graph order is topological)."""
    onnx = require("onnx", extra="deploy")
    nodes = [n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type in _COMPUTE_OPS]
    return sorted({nodes[0], nodes[-1]}) if nodes else []


def quantize_onnx(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    images: np.ndarray,
    settings: QuantSettings,
) -> dict:
    """Write the INT8 QDQ model of ``onnx_path`` to ``out_path``; returns what was done.

    ``images``: float32 ``[N, C, H, W]`` calibration inputs in the model's input shape (the first
    ``settings.calib_images`` are used).
    """
    require_extra("deploy")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    images = np.asarray(images)[: settings.calib_images]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reparam-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared))
        ranges = calibrate(prepared, images, settings)
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        excluded = first_last_nodes(prepared) if settings.keep_first_last_float else []
        method = {
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
        }[settings.calibration]
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(
                str(prepared),
                str(out_path),
                None,
                calibration_cache_path=cache,
                calibrate_method=method,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=settings.granularity == "per-channel",
                nodes_to_exclude=excluded,
            )
    return {
        "settings": settings.to_dict(),
        "calib_images_used": len(images),
        "float_nodes": excluded,
        "calibrated_tensors": len(list(ranges.keys())),
    }
