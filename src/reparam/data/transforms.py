"""Image transforms: uint8 ``[3, H, W]`` tensors in, normalized float32 ``[3, S, S]`` out.

Normalization uses the ImageNet mean/std (timm's defaults) for every dataset, so models and
exported ONNX files share one preprocessing. RandAugment is timm's (``rand_augment_transform``,
PIL based); remember its magnitude is capped at 10 unless the string carries ``mmax``, e.g.
``"rand-m15-n2-mmax15"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, rand_augment_transform
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from ..checkpoint import first_line
from ..errors import DataError

__all__ = [
    "Preprocessing",
    "Transform",
    "eval_transform",
    "normalize",
    "read_image",
    "train_transform",
]

Transform = Callable[[Tensor], Tensor]

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)


def normalize(image: Tensor) -> Tensor:
    """``(x / 255 - mean) / std`` for a uint8 image (or batch of images)."""
    return (image.float() / 255.0 - _MEAN) / _STD


class _Normalize:
    """``(x / 255 - mean) / std`` with given per-channel statistics (picklable, for workers)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, image: Tensor) -> Tensor:
        return (image.float() / 255.0 - self.mean) / self.std


class _RandAugment:
    """timm RandAugment on a uint8 tensor (through PIL, as timm expects)."""

    def __init__(self, config: str):
        self.augment = rand_augment_transform(
            config, {"translate_const": 4, "img_mean": (124, 116, 104)}
        )

    def __call__(self, image: Tensor) -> Tensor:
        return pil_to_tensor(self.augment(to_pil_image(image)))


def read_image(path: str | os.PathLike) -> Tensor:
    """An image file (any mode PIL reads) as uint8 RGB ``[3, H, W]``."""
    try:
        with Image.open(path) as image:
            return pil_to_tensor(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{path}: cannot decode image ({first_line(err)})") from None


def _resize(image_size: int) -> v2.Transform:
    return v2.Resize((image_size, image_size), antialias=True)


def eval_transform(image_size: int) -> Transform:
    """Resize to ``image_size`` (no-op when already there), then normalize: the
    :class:`Preprocessing` of every model trained here."""
    return Preprocessing(image_size).transform()


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input (**contract**: recorded as ``preprocessing`` in run and
    deploy folders' ``config.json`` and in the ONNX metadata): resized to ``image_size`` x
    ``image_size`` (``resize="squash"``, aspect ratio not kept), scaled to [0, 1], normalised
    with ``mean`` / ``std`` per channel."""

    image_size: int
    mean: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
    std: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)
    resize: str = "squash"

    def transform(self) -> Transform:
        """uint8 ``[3, H, W]`` -> float32 ``[3, S, S]``."""
        return v2.Compose([_resize(self.image_size), _Normalize(self.mean, self.std)])

    def load_image(self, path: str | os.PathLike) -> Tensor:
        """An image file as the model's input ``[3, S, S]``."""
        return self.transform()(read_image(path))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            int(data["image_size"]),
            tuple(data.get("mean", IMAGENET_DEFAULT_MEAN)),
            tuple(data.get("std", IMAGENET_DEFAULT_STD)),
            data.get("resize", "squash"),
        )


def train_transform(
    image_size: int, hflip: bool = False, crop_padding: int = 0, randaugment: str | None = None
) -> Transform:
    """Resize, then optional random crop with ``crop_padding`` zero padding, horizontal flip and
    timm RandAugment (``randaugment`` is a timm config string), then normalize."""
    steps: list[Callable] = [_resize(image_size)]
    if crop_padding:
        steps.append(v2.RandomCrop(image_size, padding=crop_padding))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(_RandAugment(randaugment))
    steps.append(normalize)
    return v2.Compose(steps)
