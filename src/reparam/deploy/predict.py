"""One way to run any deployable model: run folder / checkpoint, fused folder, or ONNX file.

:func:`load` returns a ready torch model with its preprocessing and class names;
:func:`open_model` returns a :class:`Predictor` (numpy float32 ``[N, 3, S, S]`` -> logits);
:func:`predict_images` gives the top classes of image files;
:func:`evaluate` gives the metrics ``reparam eval`` reports: ``top1`` (fraction), ``n_images``,
``seconds``, ``images_per_s``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import Preprocessing
from ..errors import DataError, DeployError
from ..train.checkpointing import class_names_of, load_model, preprocessing_of
from .export import fused_folder_of, load_fused
from .onnx_export import classifier_signature, input_shape, open_session, run_session

__all__ = [
    "LoadedModel",
    "Predictor",
    "evaluate",
    "load",
    "open_model",
    "predict_dataset",
    "predict_images",
    "session_latency_ms",
]


class LoadedModel(NamedTuple):
    """What :func:`load` returns: unpack as ``model, preprocessing, class_names = ...``."""

    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]


def load(path: str | os.PathLike) -> LoadedModel:
    """A ready model (eval mode) from a run folder, a ``.safetensors`` checkpoint inside one, or
    a fused (deploy) folder, with its preprocessing and class names (**contract**). The folder
    is all it needs: it may have been moved anywhere."""
    model, config = _load_with_config(Path(path))
    return LoadedModel(model, preprocessing_of(config), class_names_of(config))


def _load_with_config(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    if not path.exists():
        raise DeployError(
            f"{path}: not found (expected a run folder, fused folder or .safetensors)"
        )
    folder = fused_folder_of(path)
    return load_fused(folder) if folder is not None else load_model(path)


@dataclass
class Predictor:
    """``run(images) -> logits``; ``kind`` is ``checkpoint``, ``fused`` or ``onnx``; the
    preprocessing and class names come from the folder's ``config.json`` or the ONNX metadata
    (``None`` / indices when a file predates them)."""

    run: Callable[[np.ndarray], np.ndarray]
    kind: str
    source: str
    preprocessing: Preprocessing | None
    class_names: list[str] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int | None:
        return self.preprocessing.image_size if self.preprocessing else None


def _torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    model = model.eval().float()

    def run(images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[1] != 3:
            raise DeployError(f"model expects images [N, 3, H, W], got {list(images.shape)}")
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()

    return run


def open_model(path: str | os.PathLike, threads: int | None = None) -> Predictor:
    """A run folder or ``.safetensors`` checkpoint, a fused folder (see :func:`load`) or an
    ``.onnx`` file (ONNX Runtime, CPU); ``threads`` caps the CPU threads of either runtime."""
    path = Path(path)
    if not path.exists():
        raise DeployError(
            f"{path}: not found (expected a run folder, fused folder, .safetensors or .onnx)"
        )
    if threads:
        torch.set_num_threads(threads)
    if path.suffix == ".onnx":
        return _onnx_predictor(path, threads)
    model, config = _load_with_config(path)
    kind = "fused" if fused_folder_of(path) is not None else "checkpoint"
    preprocessing, names = preprocessing_of(config), class_names_of(config)
    return Predictor(_torch_runner(model), kind, str(path), preprocessing, names, config)


def _onnx_predictor(path: Path, threads: int | None) -> Predictor:
    """An ONNX file checked before it runs (:func:`classifier_signature`, then its metadata:
    ``preprocessing`` valid and matching the input size, ``class_names`` one per output). A
    fixed batch size ``B`` runs the images ``B`` at a time, the last group padded with zeros."""
    session = open_session(path, threads)
    batch, classes = classifier_signature(session, str(path))
    recorded = session.get_modelmeta().custom_metadata_map
    size = input_shape(session)[-1]
    preprocessing = Preprocessing(size)
    if "preprocessing" in recorded:
        try:
            preprocessing = Preprocessing.from_dict(_metadata_json(recorded, "preprocessing", path))
        except DataError as err:
            raise DeployError(f"{path}: metadata {err}") from None
        if preprocessing.image_size != size:
            raise DeployError(
                f"{path}: metadata preprocessing has image_size {preprocessing.image_size}; the "
                f"input is {size} x {size}"
            )
    names = None
    if "class_names" in recorded:
        names = _metadata_json(recorded, "class_names", path)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DeployError(f"{path}: metadata 'class_names': expected a JSON list of strings")
        if classes is not None and len(names) != classes:
            raise DeployError(
                f"{path}: metadata 'class_names' has {len(names)} names; the output has "
                f"{classes} classes"
            )
    data = {"data": recorded["data"]} if "data" in recorded else {}

    def run(images: np.ndarray) -> np.ndarray:
        if batch is None or len(images) == batch:
            logits = run_session(session, images)
        else:
            groups = []
            for start in range(0, len(images), batch):
                group = images[start : start + batch]
                padding = np.zeros((batch - len(group), *group.shape[1:]), group.dtype)
                groups.append(run_session(session, np.concatenate([group, padding]))[: len(group)])
            logits = np.concatenate(groups)
        if names is not None and logits.shape[1] != len(names):
            raise DeployError(
                f"{path}: outputs {logits.shape[1]} classes; its metadata names {len(names)}"
            )
        return logits

    return Predictor(run, "onnx", str(path), preprocessing, names, data)


def _metadata_json(recorded: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(recorded[key])
    except json.JSONDecodeError as err:
        raise DeployError(f"{path}: metadata {key!r} is not valid JSON ({err})") from None


def predict_images(
    predictor: Predictor, paths: list[str | os.PathLike], top_k: int = 5
) -> list[dict[str, Any]]:
    """The ``top_k`` classes of each image file with their names and softmax probabilities:
    ``[{"image": path, "top_k": [{"class": i, "name": ..., "probability": p}, ...]}, ...]``."""
    if predictor.preprocessing is None:
        raise DeployError(f"{predictor.source}: no preprocessing recorded; cannot read images")
    images = np.stack([predictor.preprocessing.load_image(p).numpy() for p in paths])
    logits = torch.from_numpy(predictor.run(images)).double()
    probabilities = logits.softmax(1)
    names = predictor.class_names or [str(i) for i in range(logits.shape[1])]
    top = probabilities.topk(min(top_k, logits.shape[1]), dim=1)
    return [
        {
            "image": str(path),
            "top_k": [
                {"class": int(index), "name": names[index], "probability": float(p)}
                for p, index in zip(values.tolist(), indices.tolist())
            ],
        }
        for path, values, indices in zip(paths, top.values, top.indices)
    ]


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
