"""Datasets behind the data specs. Every dataset yields ``(transform(uint8 [3, H, W]), label)``.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 real images, 10 classes),
  split 80/20 stratified with a fixed seed (1437 train / 360 val), grey levels 0..16 scaled to
  0..255 and repeated to 3 channels; the transform upsamples them.
- ``synthetic[:N]``: ``N`` random images with random labels (speed measurements only).
- ``cifar10:DIR`` / ``cifar100:DIR``: the standard python pickle batches, read with an unpickler
  that only admits the numpy types those files contain (no arbitrary code on load).
- ``folder:DIR``: torchvision ImageFolder trees ``DIR/train/<class>/*`` and ``DIR/val/<class>/*``.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from .transforms import Preprocessing, read_image

__all__ = ["DataBundle", "DataError", "TensorImageDataset", "load_data", "load_eval_data"]


class TensorImageDataset(Dataset):
    """In-memory uint8 images ``[N, 3, H, W]`` with integer labels."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor]):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise DataError(
                f"expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels.long(), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


@dataclass
class DataBundle:
    """The two splits of a data spec, with the class names (index -> name)."""

    train: Dataset
    val: Dataset
    num_classes: int
    name: str
    class_names: list[str]


CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
]  # fmt: skip


def _digits() -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    x_train, x_val, y_train, y_val = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )

    def to_tensor(x: np.ndarray) -> Tensor:
        return torch.from_numpy(x).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()

    return (
        to_tensor(x_train),
        torch.from_numpy(y_train),
        to_tensor(x_val),
        torch.from_numpy(y_val),
        [str(digit) for digit in range(10)],
    )


def _synthetic(count: int, image_size: int, num_classes: int = 10) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (count, 3, image_size, image_size), dtype=torch.uint8, generator=generator
    )
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    val = max(1, count // 5)
    names = [str(label) for label in range(num_classes)]
    return images[val:], labels[val:], images[:val], labels[:val], names


class _CifarUnpickler(pickle.Unpickler):
    """Admit only what CIFAR python batches hold: builtins containers and numpy arrays.

    ``_codecs.encode`` is how Python 3 writes ``bytes`` under pickle protocol 2 (re-saved
    batches): it only turns a ``str`` back into ``bytes``, so it is admitted too."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: CIFAR batch file not found")
    try:
        with path.open("rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        data = batch[b"data"]
        labels = np.asarray(batch[label_key.encode()], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"{path}: not a CIFAR python batch with 'data' and '{label_key}' ({err})"
        ) from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: CIFAR 'data' must be a uint8 array, got {kind}")
    if len(data) == 0:
        raise DataError(f"{path}: the batch holds no images")
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(
            f"{path}: expected data [N, 3072] and N labels, got {data.shape} and {len(labels)}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_class_names(root: Path, classes: int) -> list[str]:
    """From ``batches.meta`` (CIFAR-10) or ``meta`` (CIFAR-100) when present; else the known
    CIFAR-10 names, or the indices."""
    meta, key = ("batches.meta", b"label_names") if classes == 10 else ("meta", b"fine_label_names")
    if (root / meta).is_file():
        try:
            with (root / meta).open("rb") as f:
                names = _CifarUnpickler(f, encoding="bytes").load()[key]
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
            raise DataError(f"{root / meta}: not a CIFAR meta file ({err})") from None
    return list(CIFAR10_CLASSES) if classes == 10 else [str(i) for i in range(classes)]


def _cifar(root: Path, classes: int) -> tuple[Tensor, ...]:
    folder_name = "cifar-10-batches-py" if classes == 10 else "cifar-100-python"
    if (root / folder_name).is_dir():
        root = root / folder_name
    if not root.is_dir():
        raise DataError(f"{root}: CIFAR-{classes} folder not found")
    if classes == 10:
        train_files, val_files, key = (
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            "labels",
        )
    else:
        train_files, val_files, key = ["train"], ["test"], "fine_labels"

    def read(files: list[str]) -> tuple[Tensor, Tensor]:
        parts = [_read_cifar_batch(root / name, key) for name in files]
        return torch.from_numpy(np.concatenate([p[0] for p in parts])), torch.from_numpy(
            np.concatenate([p[1] for p in parts])
        )

    x_train, y_train = read(train_files)
    x_val, y_val = read(val_files)
    for labels in (y_train, y_val):
        if labels.min() < 0 or labels.max() >= classes:
            raise DataError(f"{root}: labels outside 0..{classes - 1}")
    return x_train, y_train, x_val, y_val, _cifar_class_names(root, classes)


def _folder(root: Path, train_transform, eval_transform) -> DataBundle:
    from torchvision.datasets import ImageFolder

    splits = {}
    for split, transform in (("train", train_transform), ("val", eval_transform)):
        path = root / split
        if not path.is_dir():
            raise DataError(
                f"{path}: missing; folder:DIR expects DIR/train/<class>/ and DIR/val/<class>/"
            )
        try:
            splits[split] = ImageFolder(str(path), transform=transform, loader=read_image)
        except (FileNotFoundError, RuntimeError) as err:
            raise DataError(f"{path}: not an image-folder tree ({err})") from None
    if splits["train"].classes != splits["val"].classes:
        raise DataError(
            f"{root}: train/ and val/ have different classes "
            f"({splits['train'].classes} vs {splits['val'].classes})"
        )
    classes = splits["train"].classes
    return DataBundle(splits["train"], splits["val"], len(classes), f"folder:{root}", classes)


def load_data(
    spec: str,
    image_size: int,
    train_transform: Callable[[Tensor], Tensor] | None = None,
    eval_transform: Callable[[Tensor], Tensor] | None = None,
) -> DataBundle:
    """Parse a data spec (see module docstring) and return its train and val datasets.

    Without transforms, both splits use :func:`reparam.data.transforms.eval_transform`.
    """
    from .transforms import eval_transform as default_transform

    eval_transform = eval_transform or default_transform(image_size)
    train_transform = train_transform or eval_transform
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        arrays = _digits()
    elif kind == "synthetic":
        try:
            count = int(arg) if arg else 512
        except ValueError:
            raise DataError(f"synthetic:N needs an integer N, got {arg!r}") from None
        if count < 2:
            raise DataError(f"synthetic:N needs N >= 2, got {count}")
        arrays = _synthetic(count, image_size)
    elif kind in ("cifar10", "cifar100") and arg:
        arrays = _cifar(Path(arg).expanduser(), 10 if kind == "cifar10" else 100)
    elif kind == "folder" and arg:
        root = Path(arg).expanduser()
        if not root.is_dir():
            raise DataError(f"{root}: folder not found")
        return _folder(root, train_transform, eval_transform)
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
