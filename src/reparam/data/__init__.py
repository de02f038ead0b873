"""Data specs -> datasets (see :mod:`reparam.data.datasets`) and transforms."""

from .datasets import DataBundle, DataError, TensorImageDataset, load_data
from .transforms import Preprocessing, eval_transform, normalize, read_image, train_transform

__all__ = [
    "DataBundle",
    "DataError",
    "Preprocessing",
    "TensorImageDataset",
    "eval_transform",
    "load_data",
    "normalize",
    "read_image",
    "train_transform",
]
