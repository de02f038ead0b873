"""Image transforms: uint8 ``[3, H, W]`` tensors in, normalized float32 ``[3, S, S]`` out.

Normalization uses the ImageNet mean/std (timm's defaults) for every dataset, so models and
exported ONNX files share one preprocessing. RandAugment is timm's (``rand_augment_transform``,
PIL based); remember its magnitude is capped at 10 unless the string carries ``mmax``, e.g.
``"rand-m15-n2-mmax15"``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, rand_augment_transform
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

__all__ = ["Transform", "eval_transform", "normalize", "train_transform"]

Transform = Callable[[Tensor], Tensor]

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)


def normalize(image: Tensor) -> Tensor:
    """``(x / 255 - mean) / std`` for a uint8 image (or batch of images)."""
    return (image.float() / 255.0 - _MEAN) / _STD


class _RandAugment:
    """timm RandAugment on a uint8 tensor (through PIL, as timm expects)."""

    def __init__(self, config: str):
        self.augment = rand_augment_transform(
            config, {"translate_const": 4, "img_mean": (124, 116, 104)}
        )

    def __call__(self, image: Tensor) -> Tensor:
        return pil_to_tensor(self.augment(to_pil_image(image)))


def _resize(image_size: int) -> v2.Transform:
    return v2.Resize((image_size, image_size), antialias=True)


def eval_transform(image_size: int) -> Transform:
    """Resize to ``image_size`` (no-op when already there), then normalize."""
    return v2.Compose([_resize(image_size), normalize])


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
