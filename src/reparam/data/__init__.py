"""Data specs -> datasets (see :mod:`reparam.data.datasets`) and transforms."""

from .datasets import (
    DataBundle,
    DataError,
    ImageFiles,
    TensorImageDataset,
    absolute_spec,
    load_data,
    load_eval_data,
)
from .transforms import Preprocessing, data_defaults, eval_transform, read_image, train_transform

__all__ = [
    "DataBundle",
    "DataError",
    "ImageFiles",
    "Preprocessing",
    "TensorImageDataset",
    "absolute_spec",
    "eval_transform",
    "load_data",
    "load_eval_data",
    "data_defaults",
    "read_image",
    "train_transform",
]
