"""Datasets behind the data specs. Every dataset yields ``(transform(uint8 [3, H, W]), label)``.

- ``digits``: the 8x8 handwritten digits scikit-learn ships (1797 real images, 10 classes),
  kept in the package (:func:`digits`), split 80/20 stratified with a fixed seed (1437 train /
  360 val), grey levels 0..16 scaled to 0..255 and repeated to 3 channels; the transform
  upsamples them.
- ``synthetic[:N]``: ``N`` random images with random labels (speed measurements only), held in
  memory: at most :data:`MAX_SYNTHETIC_BYTES` of pixels.
- ``cifar10:DIR`` / ``cifar100:DIR``: the standard python pickle batches, read with an unpickler
  that only admits the numpy types those files contain (no arbitrary code on load); integer
  labels in range and exactly 10 / 100 class names, or :class:`DataError`.
- ``folder:DIR``: ImageFolder trees ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (torchvision's
  layout and order), at least two classes, each image reached once (links are followed; a loop
  or a second path to the same images is refused).

:func:`absolute_spec` turns a spec's path absolute: what a run records, so that resuming and
evaluating it read the same files from any working directory.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from reparam.data.transforms import read_image
from reparam.errors import DataError

__all__ = [
    "DataBundle",
    "DataError",
    "ImageFiles",
    "MAX_SYNTHETIC_BYTES",
    "TensorImageDataset",
    "cifar",
    "digits",
    "image_folder",
    "synthetic",
]


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


DIGITS_FILE = Path(__file__).with_name("digits.npz")


def digits() -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    """The digits splits from :data:`DIGITS_FILE` (package data, no download): the UCI
    handwritten digits as scikit-learn's ``load_digits`` ships them (CC BY 4.0), grey levels
    scaled to ``round(v * 255 / 16)``, split by ``train_test_split(test_size=0.2,
    stratify=labels, random_state=0)``; ``tests/test_extras.py`` checks the file against
    scikit-learn."""
    with np.load(DIGITS_FILE) as saved:
        arrays = {name: torch.from_numpy(saved[name]) for name in saved.files}

    def images(split: str) -> Tensor:
        return arrays[f"{split}_images"].unsqueeze(1).expand(-1, 3, -1, -1).contiguous()

    def labels(split: str) -> Tensor:
        return arrays[f"{split}_labels"].long()

    names = [str(digit) for digit in range(10)]
    return images("train"), labels("train"), images("val"), labels("val"), names


MAX_SYNTHETIC_BYTES = 2**31  # synthetic:N holds its uint8 pixels in memory: 2 GiB at most


def synthetic(count: int, image_size: int, num_classes: int = 10) -> tuple[Tensor, ...]:
    per_image = 3 * image_size * image_size
    if count * per_image > MAX_SYNTHETIC_BYTES:
        raise DataError(
            f"synthetic:{count}: {count} images of 3x{image_size}x{image_size} would take "
            f"{_gib(count * per_image)} of memory, more than the limit of "
            f"{_gib(MAX_SYNTHETIC_BYTES)} (synthetic:{MAX_SYNTHETIC_BYTES // per_image} at most "
            f"at {image_size} px)"
        )
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (count, 3, image_size, image_size), dtype=torch.uint8, generator=generator
    )
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    val = max(1, count // 5)
    names = [str(label) for label in range(num_classes)]
    return images[val:], labels[val:], images[:val], labels[:val], names


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"


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


# CIFAR-10 and CIFAR-100 python folders: the extracted folder's name and the files in it
_CIFAR = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
         "labels", "batches.meta", "label_names"),
    100: ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names"),
}  # fmt: skip


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: CIFAR batch file not found")
    try:
        with path.open("rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        data, labels = batch[b"data"], np.asarray(batch[label_key.encode()])
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"{path}: not a CIFAR python batch with 'data' and '{label_key}' ({err})"
        ) from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: CIFAR 'data' must be a uint8 array, got {kind}")
    if len(data) == 0:
        raise DataError(f"{path}: the batch holds no images")
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise DataError(
            f"{path}: expected data [N, 3072] and N labels, got {data.shape} and "
            f"{labels.shape or 'one value'}"
        )
    if labels.dtype.kind not in "iu":  # floats would be truncated, booleans read as 0/1
        raise DataError(f"{path}: CIFAR '{label_key}' must be integers, got {labels.dtype}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _cifar_class_names(root: Path, classes: int) -> list[str]:
    """From ``batches.meta`` (CIFAR-10) or ``meta`` (CIFAR-100) when present (exactly
    ``classes`` names); else the known CIFAR-10 names, or the indices."""
    *_, meta, key = _CIFAR[classes]
    if not (root / meta).is_file():
        return list(CIFAR10_CLASSES) if classes == 10 else [str(i) for i in range(classes)]
    try:
        with (root / meta).open("rb") as f:
            names = _CifarUnpickler(f, encoding="bytes").load()[key.encode()]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{root / meta}: not a CIFAR meta file ({err})") from None
    if not isinstance(names, list) or len(names) != classes:
        count = len(names) if isinstance(names, list) else type(names).__name__
        raise DataError(
            f"{root / meta}: '{key}' must list the {classes} CIFAR-{classes} class names, "
            f"got {count}"
        )
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def cifar(given: Path, classes: int) -> tuple[Tensor, ...]:
    folder_name, train_files, val_files, key, *_ = _CIFAR[classes]
    root = given / folder_name if (given / folder_name).is_dir() else given
    if not root.is_dir():
        raise DataError(f"{root}: CIFAR-{classes} folder not found")
    other = 110 - classes
    other_folder, other_train, *_ = _CIFAR[other]
    if not (root / train_files[0]).is_file() and (
        (given / other_folder).is_dir() or (root / other_train[0]).is_file()
    ):
        raise DataError(
            f"{given}: holds CIFAR-{other} data, not CIFAR-{classes}; use cifar{other}:{given}"
        )

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


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFiles(Dataset):
    """Image files with integer labels (``samples``: ``(path, label)``), each read by
    :func:`~reparam.data.transforms.read_image` and then ``transform``."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform: Callable):
        self.samples, self.classes, self.transform = samples, classes, transform
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        return self.transform(read_image(path)), label


class _FolderTree:
    """The image files of a ``folder:DIR`` tree, links followed, each folder and file once.

    Like torchvision's ImageFolder: classes are the sorted sub-folders of a split, and each
    class lists the files with an image extension anywhere below it (folders in path order,
    files sorted). Every folder is recorded by its real path: reaching one again (a link back up
    the tree, or a second path to the same images) raises :class:`DataError` naming both paths,
    and so does a link to an image file that the tree lists elsewhere."""

    def __init__(self, root: Path):
        self.folders: dict[str, str] = {os.path.realpath(root): str(root)}  # real -> as reached
        self.listed: dict[str, str] = {}  # folders whose images are samples, real -> as reached
        self.file_links: dict[str, str] = {}  # linked image file, real -> the link

    def split(self, path: Path) -> tuple[list[str], list[tuple[str, int]]]:
        """``(class names, samples)`` of ``DIR/train`` or ``DIR/val``."""
        self._reach(str(path))
        classes = sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
        if not classes:
            raise DataError(f"{path}: no class folders; folder:DIR expects {path}/<class>/*")
        samples, empty = [], []
        for label, name in enumerate(classes):
            found: list[tuple[str, list[str]]] = []
            self._walk(os.path.join(path, name), found)
            files = [f for _, names in sorted(found) for f in names]
            empty += [] if files else [name]
            samples += [(f, label) for f in files]
        if empty:
            raise DataError(
                f"{path}: class folder(s) {', '.join(empty)} hold no images "
                f"({' '.join(IMAGE_EXTENSIONS)})"
            )
        return classes, samples

    def check_file_links(self) -> None:
        """Refuse a link to an image file that a listed folder holds (call after every split)."""
        for real, link in self.file_links.items():
            folder, name = os.path.split(real)
            if folder in self.listed and name.lower().endswith(IMAGE_EXTENSIONS):
                self._twice(link, os.path.join(self.listed[folder], name), "image file")

    def _walk(self, folder: str, found: list[tuple[str, list[str]]]) -> None:
        self.listed[self._reach(folder)] = folder
        files, subfolders = [], []
        for entry in os.scandir(folder):
            if entry.is_dir():
                subfolders.append(entry.path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(entry.path)
                if entry.is_symlink():
                    real = os.path.realpath(entry.path)
                    if real in self.file_links:
                        self._twice(entry.path, self.file_links[real], "image file")
                    self.file_links[real] = entry.path
        found.append((folder, sorted(files)))
        for sub in sorted(subfolders):
            self._walk(sub, found)

    def _reach(self, folder: str) -> str:
        real = os.path.realpath(folder)
        if real in self.folders:
            self._twice(folder, self.folders[real], "folder")
        self.folders[real] = folder
        return real

    @staticmethod
    def _twice(path: str, other: str, what: str) -> None:
        raise DataError(
            f"{path} and {other} are the same {what}, reached twice through a link (a loop or "
            "images listed twice); remove the link so that each image is reached once"
        )


def image_folder(root: Path, train_transform, eval_transform) -> DataBundle:
    tree, splits = _FolderTree(root), {}
    for split in ("train", "val"):
        path = root / split
        if not path.is_dir():
            raise DataError(
                f"{path}: missing; folder:DIR expects DIR/train/<class>/ and DIR/val/<class>/"
            )
        splits[split] = tree.split(path)
    tree.check_file_links()
    (classes, train), (val_classes, val) = splits["train"], splits["val"]
    if classes != val_classes:
        raise DataError(
            f"{root}: train/ and val/ have different classes ({classes} vs {val_classes})"
        )
    if len(classes) < 2:
        raise DataError(
            f"{root / 'train'}: one class folder ({classes[0]}); a classifier needs at least two "
            "(DIR/train/<class>/ for each class)"
        )
    return DataBundle(
        ImageFiles(train, classes, train_transform),
        ImageFiles(val, classes, eval_transform),
        len(classes),
        f"folder:{root}",
        classes,
    )
