"""Image transforms: uint8 ``[3, H, W]`` tensors in, normalized float32 ``[3, S, S]`` out.

Each data spec brings its standard augmentation and normalisation (:func:`data_defaults`); the
eval side is a :class:`Preprocessing`, recorded with every model so that loading, predicting and
ONNX files prepare images exactly as training did. RandAugment is timm's (``rand_augment_transform``,
PIL based); remember its magnitude is capped at 10 unless the string carries ``mmax``, e.g.
``"rand-m15-n2-mmax15"``.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from reparam.errors import DataError
from reparam.files import first_line

__all__ = [
    "CIFAR_MEAN_STD",
    "Preprocessing",
    "data_defaults",
    "Transform",
    "eval_transform",
    "read_image",
    "train_transform",
]

Transform = Callable[[Tensor], Tensor]

# per-channel mean / std of the CIFAR training sets (the values RepOptimizers' data code uses)
CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


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


# single-channel modes wider than 8 bits -> the pixel value that maps to 255: 16-bit grey, PIL's
# 32-bit "I" (which its PNG and PGM readers fill with 16-bit values) and float grey in [0, 1]
_WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1}


def read_image(path: str | os.PathLike) -> Tensor:
    """An image file as uint8 RGB ``[3, H, W]``, upright (its EXIF orientation applied).

    Modes of 8 bits per channel go through PIL's RGB conversion; 16-bit grey is scaled by
    ``255 / 65535`` and float grey from ``[0, 1]`` by 255 (values outside the range are refused,
    not clipped). Raises :class:`DataError` for a file PIL cannot decode and for an image of more
    than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (PIL's guard against decompression bombs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                pixels = image.width * image.height
                if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
                    raise DataError(_too_many_pixels(path, pixels))
                image = ImageOps.exif_transpose(image)  # a loaded copy, upright
    except Image.DecompressionBombError as err:  # above twice the limit: PIL does not open it
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise DataError(_too_many_pixels(path, found.group(1) if found else "too many")) from None
    except (OSError, SyntaxError, UnidentifiedImageError) as err:
        raise DataError(f"{path}: cannot decode image ({first_line(err)})") from None
    if image.mode not in _WIDE_MODES:
        return pil_to_tensor(image.convert("RGB"))
    full = _WIDE_MODES[image.mode]
    values = np.asarray(image, dtype=np.float64)
    low, high = values.min(), values.max()
    if not (0 <= low and high <= full):  # also NaN
        raise DataError(
            f"{path}: {image.mode} pixels span {low:g}..{high:g}, outside the 0..{full} that "
            "maps to 0..255; save the image with 8 or 16 bits per channel"
        )
    grey = torch.from_numpy(np.rint(values * (255 / full)).astype(np.uint8))
    return grey.expand(3, -1, -1).contiguous()


def _too_many_pixels(path: str | os.PathLike, pixels: int | str) -> str:
    return (
        f"{path}: {pixels} pixels, more than the limit of {Image.MAX_IMAGE_PIXELS} "
        "(PIL.Image.MAX_IMAGE_PIXELS, its guard against decompression bombs); downscale the image"
    )


def _resize(image_size: int) -> v2.Transform:
    return v2.Resize((image_size, image_size), antialias=True)


def eval_transform(image_size: int) -> Transform:
    """Resize to ``image_size`` (no-op when already there), then normalize: the
    :class:`Preprocessing` of every model trained here."""
    return Preprocessing(image_size).transform()


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input (**contract**: recorded as ``preprocessing`` in run and
    deploy folders' ``config.json`` and in the ONNX metadata): resized, scaled to [0, 1],
    normalised with ``mean`` / ``std`` per channel. ``crop_pct=None``: resized to ``image_size``
    x ``image_size`` (aspect ratio not kept; small images such as CIFAR or digits); a number: the
    shorter side resized to ``image_size / crop_pct``, then the centre ``image_size`` square
    (timm's ``crop_pct`` convention for ImageNet-like images)."""

    image_size: int
    mean: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
    std: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)
    crop_pct: float | None = None

    def __post_init__(self) -> None:
        """Raise :class:`DataError` naming the first field that cannot prepare an image."""
        problem = _preprocessing_problem(self.image_size, self.mean, self.std, self.crop_pct)
        if problem:
            raise DataError(f"preprocessing {problem}")

    def transform(self) -> Transform:
        """uint8 ``[3, H, W]`` -> float32 ``[3, S, S]``."""
        if self.crop_pct is None:
            resize = [_resize(self.image_size)]
        else:
            shorter = math.floor(self.image_size / self.crop_pct)
            resize = [v2.Resize(shorter, antialias=True), v2.CenterCrop(self.image_size)]
        return v2.Compose([*resize, _Normalize(self.mean, self.std)])

    def load_image(self, path: str | os.PathLike) -> Tensor:
        """An image file as the model's input ``[3, S, S]``."""
        return self.transform()(read_image(path))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Any) -> Preprocessing:
        """The inverse of :meth:`to_dict`; :class:`DataError` names the field that is missing,
        unknown or out of range (``image_size`` an integer in [1, 8192], ``mean`` / ``std`` 3
        finite numbers with ``std > 0``, ``crop_pct`` in (0, 1] or null)."""
        if not isinstance(data, dict):
            raise DataError(f"preprocessing: expected a JSON object, got {data!r}")
        unknown = sorted(set(data) - {"image_size", "mean", "std", "crop_pct"})
        if unknown or "image_size" not in data:
            raise DataError(
                f"preprocessing: expected keys image_size, mean, std, crop_pct, got {sorted(data)}"
            )
        mean, std = data.get("mean", IMAGENET_DEFAULT_MEAN), data.get("std", IMAGENET_DEFAULT_STD)
        problem = _preprocessing_problem(data["image_size"], mean, std, data.get("crop_pct"))
        if problem:
            raise DataError(f"preprocessing {problem}")
        return cls(data["image_size"], tuple(mean), tuple(std), data.get("crop_pct"))


MAX_IMAGE_SIZE = 8192


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _preprocessing_problem(image_size: Any, mean: Any, std: Any, crop_pct: Any) -> str | None:
    """What is wrong with these preprocessing fields (``None`` when nothing)."""
    if not isinstance(image_size, int) or isinstance(image_size, bool):
        return f"image_size: expected an integer, got {image_size!r}"
    if not 1 <= image_size <= MAX_IMAGE_SIZE:
        return f"image_size: expected 1 to {MAX_IMAGE_SIZE} pixels, got {image_size}"
    for name, values in (("mean", mean), ("std", std)):
        if not isinstance(values, (list, tuple)) or len(values) != 3:
            return f"{name}: expected 3 numbers (one per RGB channel), got {values!r}"
        if not all(map(_is_number, values)):
            return f"{name}: expected 3 finite numbers, got {list(values)!r}"
    if not all(s > 0 for s in std):
        return f"std: expected 3 numbers > 0 (it divides the image), got {list(std)!r}"
    if crop_pct is not None and not (_is_number(crop_pct) and 0 < crop_pct <= 1):
        return f"crop_pct: expected a number in (0, 1] or null, got {crop_pct!r}"
    return None


def data_defaults(spec: str) -> dict[str, Any]:
    """The standard augmentation and normalisation of a data spec's kind (what a recipe leaves
    unset takes these; ``reparam train`` records the result in ``config.json``):

    - ``cifar10`` / ``cifar100``: random crop with 4-pixel zero padding + horizontal flip, the
      data set's own mean/std (the RepVGG and RepOptimizers CIFAR pipelines);
    - ``folder``: random-resized crop + flip; eval: shorter side to ``size / 0.875`` + centre crop,
      ImageNet mean/std (timm's ``create_transform`` defaults);
    - ``digits`` / ``synthetic``: resize, 2-pixel padded crop, no flip (digits are not mirror
      symmetric), ImageNet mean/std.
    """
    kind = spec.partition(":")[0]
    imagenet = {"mean": tuple(IMAGENET_DEFAULT_MEAN), "std": tuple(IMAGENET_DEFAULT_STD)}
    if kind in CIFAR_MEAN_STD:
        mean, std = CIFAR_MEAN_STD[kind]
        return {"train_crop": "pad", "crop_padding": 4, "hflip": True, "mean": mean, "std": std,
                "crop_pct": None}  # fmt: skip
    if kind == "folder":
        return {"train_crop": "random_resized", "crop_padding": 0, "hflip": True, **imagenet,
                "crop_pct": 0.875}  # fmt: skip
    return {"train_crop": "pad", "crop_padding": 2, "hflip": False, **imagenet, "crop_pct": None}


def train_transform(
    image_size: int,
    hflip: bool = False,
    crop_padding: int = 0,
    randaugment: str | None = None,
    train_crop: str = "pad",
    mean: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN),
    std: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD),
    random_erasing: float = 0.0,
) -> Transform:
    """``train_crop="pad"``: resize, then a random crop with ``crop_padding`` zero padding;
    ``"random_resized"``: a random-resized crop at ``image_size``. Then an optional horizontal
    flip and timm RandAugment (``randaugment`` is a timm config string), then normalise, then
    with probability ``random_erasing`` timm's RandomErasing (one box of per-pixel normal noise,
    on the normalised image, as timm's ``create_transform`` places it)."""
    if train_crop == "random_resized":
        steps: list[Callable] = [v2.RandomResizedCrop(image_size, antialias=True)]
    else:
        steps = [_resize(image_size)]
        if crop_padding:
            steps.append(v2.RandomCrop(image_size, padding=crop_padding))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(_RandAugment(randaugment))
    steps.append(_Normalize(mean, std))
    if random_erasing:
        steps.append(RandomErasing(random_erasing, mode="pixel", device="cpu"))
    return v2.Compose(steps)
