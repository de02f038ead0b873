"""One way to run any deployable model: run folder / checkpoint, fused folder, or ONNX file.

:func:`load` returns a ready torch model with its preprocessing and class names;
:func:`open_model` returns a :class:`Predictor` (numpy float32 ``[N, 3, S, S]`` -> logits);
:func:`predict_images` gives the top classes of image files;
:func:`evaluate` gives the metrics ``reparam eval`` reports: ``top1`` (fraction), ``n_images``,
``seconds``, ``images_per_s``; :func:`evaluate_data` loads the data for it, prepared by the
model's recorded :class:`~reparam.data.Preprocessing` (as training evaluated and as
:func:`predict_images` reads files), with its class names checked against the model's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from reparam.app.dataspec import load_eval_data
from reparam.app.train.state import checkpoint_info
from reparam.data import DataBundle, Preprocessing
from reparam.errors import DataError, DeployError
from reparam.files import read_json
from reparam.quant.onnx import classifier_signature, input_shape, open_session, run_session
from reparam.saved import class_names_of, fused_folder_of, load_with_config, preprocessing_of

__all__ = [
    "Predictor",
    "check_class_names",
    "checkpoint_of",
    "evaluate",
    "evaluate_data",
    "open_model",
    "predict_dataset",
    "predict_images",
    "session_latency_ms",
]

log = logging.getLogger(__name__)


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
    model, config = load_with_config(path)
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
    if "preprocessing" not in recorded:
        log.warning(
            "%s: no 'preprocessing' in its ONNX metadata: images are resized to %d px and "
            "normalised with ImageNet mean/std",
            path,
            size,
        )
    else:
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
    if names is not None:
        data["class_names"] = names

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
    _check_finite(predictor, logits.numpy(), lambda i: str(paths[i]))
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
    logits = np.concatenate(logits)
    _check_finite(predictor, logits, lambda i: _item_name(dataset, i))
    return logits, np.concatenate(labels), seconds


def _item_name(dataset: Dataset, index: int) -> str:
    """An image file's path (ImageFolder) or its index in ``dataset``."""
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples else f"image {index} of the split"


def _check_finite(predictor: Predictor, logits: np.ndarray, name: Callable[[int], str]) -> None:
    """Refuse NaN/inf outputs (they have no top class), naming the first input that gives them."""
    bad = np.flatnonzero(~np.isfinite(logits).all(axis=tuple(range(1, logits.ndim))))
    if len(bad):
        raise DeployError(
            f"{predictor.source}: the model produces NaN/inf outputs for {len(bad)} of "
            f"{len(logits)} images (first: {name(int(bad[0]))}); check its weights and the "
            "recorded preprocessing (mean/std)"
        )


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


def checkpoint_of(path: str | os.PathLike) -> dict[str, Any] | None:
    """Which training checkpoint a model's weights are from
    (:func:`reparam.app.train.state.checkpoint_info`): read from a run folder or a
    ``.safetensors`` inside one, else from the ``deploy.json`` beside a fused folder's or an ONNX
    file's files; ``None`` when not recorded."""
    path = Path(path)
    folder = fused_folder_of(path)
    if folder is None and path.suffix != ".onnx":
        return checkpoint_info(path)
    recorded = (folder or path.parent) / "deploy.json"
    return read_json(recorded).get("checkpoint") if recorded.is_file() else None


def check_class_names(
    source: str, class_names: Sequence[str] | None, bundle: DataBundle, num_classes: int
) -> None:
    """Refuse data whose classes are not the model's: another count, or (when the model records
    its ``class_names``) other names, naming the first that differ."""
    if bundle.num_classes != num_classes:
        raise DeployError(
            f"{source} predicts {num_classes} classes; the data has {bundle.num_classes} "
            f"({bundle.name})"
        )
    if class_names is None or len(class_names) != num_classes:
        return
    if list(class_names) == list(bundle.class_names):
        return
    index = next(i for i, (a, b) in enumerate(zip(bundle.class_names, class_names)) if a != b)
    raise DeployError(
        f"{bundle.name} has other class names than {source}: class {index} is "
        f"{bundle.class_names[index]!r} in the data but {class_names[index]!r} in the model "
        f"(data {_head(bundle.class_names, index)}, model {_head(class_names, index)})"
    )


def _head(names: Sequence[str], index: int) -> str:
    shown = list(names[: max(index + 1, 4)])
    return f"{shown}{' ...' if len(names) > len(shown) else ''}"


def evaluate_data(
    predictor: Predictor,
    data: str | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """:func:`evaluate` on the val split of ``data`` (default: the data the model records),
    prepared by the model's recorded preprocessing (``image_size`` changes only its size); the
    data's classes must be the model's (:func:`check_class_names`). Adds ``data``,
    ``image_size``, ``preprocessing`` and ``checkpoint`` (:func:`checkpoint_of`) to the metrics."""
    if image_size is not None and image_size < 1:
        raise DeployError(f"image size must be a positive number of pixels, got {image_size}")
    preprocessing = predictor.preprocessing
    if preprocessing is None:  # files that predate recorded preprocessing: the default one
        if image_size is None:
            raise DeployError(
                f"{predictor.source}: the model records no preprocessing; pass --image-size"
            )
        preprocessing = Preprocessing(image_size)
    if predictor.kind == "onnx" and image_size not in (None, preprocessing.image_size):
        raise DeployError(
            f"{predictor.source}: an ONNX file takes images of the size it was exported at "
            f"({preprocessing.image_size} px); drop --image-size {image_size}"
        )
    if image_size:
        preprocessing = dataclasses.replace(preprocessing, image_size=image_size)
    data = data or predictor.config.get("data")
    if not data:
        raise DeployError(f"{predictor.source}: the model does not record its data; pass --data")
    bundle = load_eval_data(data, preprocessing)
    num_classes = predictor.config.get("num_classes") or len(predictor.class_names or []) or None
    if num_classes:
        check_class_names(
            predictor.source, predictor.config.get("class_names"), bundle, int(num_classes)
        )
    metrics = evaluate(predictor, bundle.val, bundle.num_classes, batch_size, progress)
    return {
        **metrics,
        "data": data,
        "image_size": preprocessing.image_size,
        "preprocessing": preprocessing.to_dict(),
        "checkpoint": checkpoint_of(predictor.source),
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
