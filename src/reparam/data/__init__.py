"""Datasets (in-memory CIFAR and digits, image folders) and the transforms that prepare their
images (:class:`Preprocessing`: one object for training, evaluation and deployment)."""

from reparam.data.datasets import (
    DataBundle,
    DataError,
    ImageFiles,
    TensorImageDataset,
    cifar,
    digits,
    image_folder,
    synthetic,
)
from reparam.data.transforms import (
    Preprocessing,
    data_defaults,
    eval_transform,
    read_image,
    train_transform,
)

__all__ = [
    "DataBundle",
    "DataError",
    "ImageFiles",
    "Preprocessing",
    "TensorImageDataset",
    "cifar",
    "data_defaults",
    "digits",
    "eval_transform",
    "image_folder",
    "read_image",
    "synthetic",
    "train_transform",
]
