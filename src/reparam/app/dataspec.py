"""Data specs, the command line's names for datasets: ``digits``, ``synthetic[:N]``,
``cifar10:DIR``, ``cifar100:DIR`` and ``folder:DIR`` (train/ and val/ class folders)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from reparam.data.datasets import (
    DataBundle,
    TensorImageDataset,
    cifar,
    digits,
    image_folder,
    synthetic,
)
from reparam.data.transforms import Preprocessing
from reparam.errors import DataError


def absolute_spec(spec: str) -> str:
    """``spec`` with the path of ``folder:`` / ``cifar10:`` / ``cifar100:`` made absolute (``~``
    expanded, relative to the working directory); other specs unchanged."""
    kind, _, arg = spec.partition(":")
    if kind in ("folder", "cifar10", "cifar100") and arg:
        return f"{kind}:{os.path.abspath(os.path.expanduser(arg))}"
    return spec


def load_data(
    spec: str,
    image_size: int,
    train_transform: Callable[[Tensor], Tensor] | None = None,
    eval_transform: Callable[[Tensor], Tensor] | None = None,
) -> DataBundle:
    """Parse a data spec (see module docstring) and return its train and val datasets.

    Without transforms, both splits use :func:`reparam.data.transforms.eval_transform`.
    """
    from reparam.data.transforms import eval_transform as default_transform

    eval_transform = eval_transform or default_transform(image_size)
    train_transform = train_transform or eval_transform
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        arrays = digits()
    elif kind == "synthetic":
        try:
            count = int(arg) if arg else 512
        except ValueError:
            raise DataError(f"synthetic:N needs an integer N, got {arg!r}") from None
        if count < 2:
            raise DataError(f"synthetic:N needs N >= 2, got {count}")
        arrays = synthetic(count, image_size)
    elif kind in ("cifar10", "cifar100") and arg:
        arrays = cifar(Path(arg).expanduser(), 10 if kind == "cifar10" else 100)
    elif kind == "folder" and arg:
        root = Path(arg).expanduser()
        if not root.is_dir():
            raise DataError(f"{root}: folder not found")
        return image_folder(root, train_transform, eval_transform)
    else:
        raise DataError(
            f"unknown data spec {spec!r}; expected digits, synthetic[:N], cifar10:DIR, cifar100:DIR or folder:DIR"
        )
    x_train, y_train, x_val, y_val, class_names = arrays
    return DataBundle(
        TensorImageDataset(x_train, y_train, train_transform),
        TensorImageDataset(x_val, y_val, eval_transform),
        len(class_names),
        spec,
        class_names,
    )


def load_eval_data(spec: str, preprocessing: Preprocessing) -> DataBundle:
    """``spec``'s train and val splits, both prepared by ``preprocessing`` alone (no augmentation):
    the data every evaluation, calibration and check of a trained model reads, so its images
    are the ones the model was trained and is predicted with."""
    return load_data(spec, preprocessing.image_size, eval_transform=preprocessing.transform())
