"""Data specs -> datasets (see :mod:`reparam.data.datasets`) and transforms."""

from .datasets import DataBundle, DataError, TensorImageDataset, load_data
from .transforms import eval_transform, normalize, train_transform

__all__ = [
    "DataBundle",
    "DataError",
    "TensorImageDataset",
    "eval_transform",
    "load_data",
    "normalize",
    "train_transform",
]
