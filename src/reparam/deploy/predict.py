"""One way to run any deployable model: run folder / checkpoint, fused folder, or ONNX file.

:func:`open_model` returns a :class:`Predictor` (numpy float32 ``[N, 3, S, S]`` -> logits);
:func:`evaluate` gives the metrics ``reparam eval`` reports: ``top1`` (fraction), ``n_images``,
``seconds``, ``images_per_s``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DeployError
from ..train.checkpointing import load_model
from .export import fused_folder_of, load_fused
from .onnx_export import input_shape, open_session, run_session

__all__ = ["Predictor", "evaluate", "open_model", "predict_dataset", "session_latency_ms"]


@dataclass
class Predictor:
    """``run(images) -> logits``; ``kind`` is ``checkpoint``, ``fused`` or ``onnx``; ``image_size``
    is the size the model was trained or exported at (``None`` when unknown)."""

    run: Callable[[np.ndarray], np.ndarray]
    kind: str
    source: str
    image_size: int | None
    config: dict[str, Any] = field(default_factory=dict)


def _torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    model = model.eval().float()

    def run(images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[1] != 3:
            raise DeployError(f"model expects images [N, 3, H, W], got {list(images.shape)}")
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()

    return run


def open_model(path: str | os.PathLike, threads: int | None = None) -> Predictor:
    """A run folder or ``.safetensors`` checkpoint (:func:`reparam.train.load_model`), a fused
    folder (``fused.safetensors`` + ``config.json``) or an ``.onnx`` file (ONNX Runtime, CPU)."""
    path = Path(path)
    if not path.exists():
        raise DeployError(
            f"{path}: not found (expected a run folder, fused folder, .safetensors or .onnx)"
        )
    if path.suffix == ".onnx":
        session = open_session(path, threads)
        size = input_shape(session)[-1]
        return Predictor(lambda images: run_session(session, images), "onnx", str(path), size)
    if fused_folder_of(path) is not None:
        model, config = load_fused(fused_folder_of(path))
        kind = "fused"
    else:
        model, config = load_model(path)
        kind = "checkpoint"
    return Predictor(_torch_runner(model), kind, str(path), config.get("image_size"), config)


def predict_dataset(
    predictor: Predictor, dataset: Dataset, batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(logits [N, K], labels [N], seconds spent in the model)`` over ``dataset``."""
    from tqdm import tqdm

    logits, labels, seconds = [], [], 0.0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for images, targets in tqdm(
        loader, desc="eval", unit="batch", disable=not progress, leave=False
    ):
        start = time.perf_counter()
        logits.append(predictor.run(images.numpy()))
        seconds += time.perf_counter() - start
        labels.append(targets.numpy())
    if not logits:
        raise DeployError("evaluation data set is empty")
    return np.concatenate(logits), np.concatenate(labels), seconds


def evaluate(
    predictor: Predictor,
    dataset: Dataset,
    num_classes: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Top-1 (fraction of images) of ``predictor`` on ``dataset``; the model's class count must match the data's."""
    logits, labels, seconds = predict_dataset(predictor, dataset, batch_size, progress)
    if num_classes is not None and logits.shape[1] != num_classes:
        raise DeployError(
            f"{predictor.source} predicts {logits.shape[1]} classes; the data has {num_classes}"
        )
    return {
        "top1": float((logits.argmax(1) == labels).mean()),
        "n_images": int(len(labels)),
        "seconds": seconds,
        "images_per_s": len(labels) / seconds if seconds > 0 else None,
        "kind": predictor.kind,
        "model": predictor.source,
    }


def session_latency_ms(
    session, batch_size: int = 32, repeats: int = 30, warmup: int = 5, seed: int = 0
) -> dict[str, float]:
    """Wall time of one ``session.run`` on a random batch: median, min, max over ``repeats``."""
    channels, height, width = input_shape(session)
    images = np.random.default_rng(seed).standard_normal(
        (batch_size, channels, height, width), dtype=np.float32
    )
    for _ in range(warmup):
        run_session(session, images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_session(session, images)
        times.append(1000.0 * (time.perf_counter() - start))
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "batch_size": batch_size,
        "repeats": repeats,
    }
