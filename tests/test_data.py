"""Data specs: each format from tiny fixture files, and clear errors for bad input."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import write_cifar, write_folder
from reparam.app.cli import main
from reparam.app.dataspec import load_data
from reparam.app.train import TrainConfig
from reparam.data import DataError, Preprocessing, train_transform
from reparam.data.transforms import CIFAR_MEAN_STD


def test_digits_split_is_fixed_stratified_and_upsampled():
    a, b = load_data("digits", 24), load_data("digits", 24)
    assert (len(a.train), len(a.val), a.num_classes) == (1437, 360, 10)
    assert torch.equal(a.val.labels, b.val.labels)
    counts = torch.bincount(a.val.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    image, label = a.train[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32 and 0 <= label < 10
    raw = a.train.images[0]
    assert (
        raw.dtype == torch.uint8 and torch.equal(raw[0], raw[1]) and raw.max() == 255
    )  # grey -> 3 ch


def test_synthetic_sizes_and_bad_count():
    bundle = load_data("synthetic:50", 16)
    assert len(bundle.train) + len(bundle.val) == 50 and bundle.train[0][0].shape == (3, 16, 16)
    with pytest.raises(DataError, match="integer"):
        load_data("synthetic:many", 16)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_pickles(tmp_path, classes):
    root = write_cifar(tmp_path / "cifar", classes)
    bundle = load_data(f"cifar{classes}:{root}", 32)
    assert bundle.num_classes == classes
    assert len(bundle.train) == (30 if classes == 10 else 6) and len(bundle.val) == 6
    assert bundle.val[0][0].shape == (3, 32, 32)


def test_cifar_accepts_parent_of_extracted_folder(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", 10)
    assert load_data(f"cifar10:{tmp_path}", 32).num_classes == 10


def test_cifar_refuses_code_in_pickles(tmp_path):
    root = write_cifar(tmp_path / "c", 10)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(root / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Exploit(), b"labels": []}, f)
    with pytest.raises(DataError, match="data_batch_3.*refusing to load"):
        load_data(f"cifar10:{root}", 32)


def test_cifar_missing_and_malformed(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(f"cifar10:{tmp_path / 'nope'}", 32)
    root = write_cifar(tmp_path / "c", 10)
    (root / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch"):
        load_data(f"cifar10:{root}", 32)
    os.remove(root / "data_batch_2")
    with pytest.raises(DataError, match="data_batch_2.*not found"):
        load_data(f"cifar10:{root}", 32)


def test_image_folder_tree(tmp_path):
    root = write_folder(tmp_path / "imgs")
    bundle = load_data(f"folder:{root}", 12)
    assert bundle.num_classes == 2 and len(bundle.train) == 6
    image, label = bundle.val[5]
    assert image.shape == (3, 12, 12) and label == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        load_data(f"folder:{tmp_path / 'x'}", 12)
    root = write_folder(tmp_path / "imgs")
    (root / "val" / "bird").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "val" / "bird" / "0.png")
    with pytest.raises(DataError, match="different classes"):
        load_data(f"folder:{root}", 12)
    only_train = write_folder(tmp_path / "t")
    for f in (only_train / "val").rglob("*.png"):
        f.unlink()
    for d in sorted((only_train / "val").rglob("*"), reverse=True):
        d.rmdir()
    (only_train / "val").rmdir()
    with pytest.raises(DataError, match="val: missing"):
        load_data(f"folder:{only_train}", 12)


def test_unknown_spec_lists_the_choices():
    with pytest.raises(DataError, match="digits, synthetic"):
        load_data("imagenet", 32)


def test_train_transform_augments_and_eval_does_not():
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    torch.manual_seed(0)
    augment = train_transform(16, hflip=True, crop_padding=2, randaugment="rand-m9-n2-mmax10")
    outs = [augment(image) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    plain = train_transform(16)
    assert torch.equal(plain(image), plain(image))


def test_each_data_spec_brings_its_standard_augmentation_recorded_in_the_run(tmp_path):
    """CIFAR: 4-pixel padded crop + flip + CIFAR mean/std; folder: random-resized crop + flip,
    eval resize + centre crop; digits as before (no flip); explicit fields still win."""
    root = write_cifar(tmp_path / "cifar-10-batches-py", 10)
    out = tmp_path / "run"
    argv = ["train", "--model", "vgg_a0", "--data", f"cifar10:{root}", "--epochs", "1"]
    assert main([*argv, "--batch-size", "8", "--image-size", "8", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["hflip"] is True and config["crop_padding"] == 4
    assert config["mean"] == list(CIFAR_MEAN_STD["cifar10"][0])
    assert config["preprocessing"]["mean"] == config["mean"]
    folder = TrainConfig(data="folder:x")
    assert (folder.train_crop, folder.hflip, folder.crop_pct) == ("random_resized", True, 0.875)
    digits = TrainConfig(data="digits")
    assert (digits.hflip, digits.crop_padding, digits.crop_pct) == (False, 2, None)
    assert TrainConfig(data="cifar100:x", hflip=False, crop_padding=0).hflip is False
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    assert Preprocessing(32, crop_pct=0.875).transform()(image).shape == (3, 32, 32)
