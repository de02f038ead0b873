"""Data inputs validated where they enter: folder trees with links, 16-bit, float, rotated and
oversized images, CIFAR metadata and labels, synthetic sizes, recorded data paths and
fingerprints on resume, and errors raised inside data loader workers."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder

from helpers import cli, make_run, write_cifar, write_folder
from reparam.app.cli import main
from reparam.app.dataspec import absolute_spec, load_data
from reparam.data import DataError, ImageFiles, datasets, read_image

QUICK = ["--model", "vgg_a0", "--epochs", "2", "--batch-size", "4", "--image-size", "8"]
QUICK += ["--warmup-epochs", "0", "--no-amp", "--no-progress"]


def one_error_line(err: str, command: str) -> str:
    """The message of the single ``reparam COMMAND: error:`` line of ``err`` (no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"reparam {command}:")]
    assert len(lines) == 1 and lines[0].startswith(f"reparam {command}: error: "), err
    return lines[0].removeprefix(f"reparam {command}: error: ")


def save_grey(path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path)


# --- folder trees -------------------------------------------------------------------------------


def link(target, name) -> str:
    os.symlink(target, name)
    return str(name)


@pytest.mark.parametrize(
    "make_link",
    [
        pytest.param(lambda r: link(r / "train", r / "train" / "cat" / "loop"), id="loop-to-split"),
        pytest.param(lambda r: link(r, r / "train" / "dog" / "up"), id="loop-to-root"),
        pytest.param(
            lambda r: link(r / "train" / "cat" / "0.png", r / "train" / "dog" / "x.png"),
            id="image-in-two-classes",
        ),
        pytest.param(
            lambda r: link(r / "train" / "cat", r / "val" / "cat" / "more"), id="val-lists-train"
        ),
    ],
)
def test_links_that_reach_images_twice_are_refused_naming_the_link(tmp_path, make_link):
    root = write_folder(tmp_path / "data")
    made = make_link(root)
    with pytest.raises(DataError, match="reached twice through a link") as err:
        load_data(f"folder:{root}", 8)
    assert made in str(err.value)


def test_links_to_images_outside_the_tree_are_followed_once(tmp_path):
    root = write_folder(tmp_path / "data")
    outside = write_folder(tmp_path / "more", classes=("cat",), per_class=2)
    os.symlink(outside / "train" / "cat", root / "train" / "cat" / "extra")
    os.symlink(outside / "val" / "cat" / "0.png", root / "val" / "cat" / "linked.png")
    bundle = load_data(f"folder:{root}", 8)
    assert (len(bundle.train), len(bundle.val)) == (3 + 2 + 3, 3 + 1 + 3)
    assert [label for _, label in bundle.train.samples] == [0] * 5 + [1] * 3


def test_folder_lists_the_images_and_order_of_torchvision_image_folder(tmp_path):
    root = write_folder(tmp_path / "data", classes=("b", "a", "c"), per_class=2)
    nested = root / "train" / "a" / "sub"
    nested.mkdir()
    shutil.copy(root / "train" / "a" / "0.png", nested / "0.png")
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    bundle = load_data(f"folder:{root}", 8)
    reference = ImageFolder(str(root / "train"))
    assert bundle.train.samples == reference.samples and bundle.train.classes == reference.classes
    image, label = bundle.train[2]
    assert image.shape == (3, 8, 8) and label == 0


def test_training_needs_two_classes(tmp_path):
    root = write_folder(tmp_path / "data", classes=("cat",))
    with pytest.raises(DataError, match=r"one class folder \(cat\).*at least two"):
        load_data(f"folder:{root}", 8)


def test_a_class_without_images_is_refused(tmp_path):
    root = write_folder(tmp_path / "data")
    (root / "train" / "fox").mkdir()
    (root / "val" / "fox").mkdir()
    with pytest.raises(DataError, match=r"train: class folder\(s\) fox hold no images"):
        load_data(f"folder:{root}", 8)


def test_cli_train_on_a_looping_tree_is_one_line(tmp_path, capsys):
    root = write_folder(tmp_path / "data")
    loop = link(root / "train", root / "train" / "cat" / "loop")
    argv = ["train", *QUICK, "--data", f"folder:{root}", "--out", str(tmp_path / "run")]
    code, err = cli(argv, capsys)
    assert code == 2 and loop in one_error_line(err, "train")


# --- image files --------------------------------------------------------------------------------

WIDE = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # -> 0, 1, 128, 255 exactly


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grey_is_scaled_to_8_bits(tmp_path, suffix):
    path = tmp_path / f"wide{suffix}"
    save_grey(path, WIDE)
    assert Image.open(path).mode == "I;16"
    expected = torch.tensor([[0, 1, 128, 255]], dtype=torch.uint8).expand(3, 1, 4)
    assert torch.equal(read_image(path), expected)


def test_16_bit_pgm_read_as_32_bit_integers_is_scaled_to_8_bits(tmp_path):
    path = tmp_path / "wide.pgm"
    path.write_bytes(b"P5\n4 1\n65535\n" + WIDE.astype(">u2").tobytes())
    assert Image.open(path).mode == "I"
    assert read_image(path)[0].tolist() == [[0, 1, 128, 255]]


def test_float_grey_in_0_1_is_scaled_to_8_bits(tmp_path):
    path = tmp_path / "float.tif"
    save_grey(path, np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32))
    assert Image.open(path).mode == "F"
    assert read_image(path).tolist() == [[[0, 64, 128, 255]]] * 3  # rint(63.75), rint(127.5)


@pytest.mark.parametrize(
    "pixels",
    [
        np.array([[0.0, 2.0]], dtype=np.float32),
        np.array([[0.0, np.nan]], dtype=np.float32),
        np.array([[-1, 70000]], dtype=np.int32),
    ],
    ids=["float-above-1", "float-nan", "int-beyond-16-bit"],
)
def test_wide_pixels_outside_their_range_are_refused_not_clipped(tmp_path, pixels):
    path = tmp_path / "odd.tif"
    save_grey(path, pixels)
    with pytest.raises(
        DataError, match=re.escape(str(path)) + ": (F|I) pixels span .* outside the 0..(1|65535)"
    ):
        read_image(path)


def exif_rotated(path, pixels: np.ndarray, **save) -> None:
    """``pixels`` saved with EXIF orientation 6 (to be shown turned 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, **save)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif_rotated(tmp_path / "turned.png", pixels)
    upright = np.rot90(pixels, k=-1)  # clockwise
    assert np.array_equal(read_image(tmp_path / "turned.png").permute(1, 2, 0).numpy(), upright)
    exif_rotated(tmp_path / "turned.jpg", pixels, quality=95)
    assert read_image(tmp_path / "turned.jpg").shape == (3, 6, 4)


@pytest.mark.parametrize("side", [12, 20], ids=["above-limit", "above-twice-the-limit"])
def test_decompression_bombs_are_refused_with_pixel_count_and_limit(tmp_path, monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL warns above it, fails above 200
    path = tmp_path / "big.png"
    save_grey(path, np.zeros((side, side), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused, and without PIL's DecompressionBombWarning
        with pytest.raises(
            DataError,
            match=re.escape(str(path)) + f": {side**2} pixels, more than the limit of 100",
        ):
            read_image(path)


def test_oversized_image_in_train_and_predict_is_one_line(tmp_path, monkeypatch, capsys):
    root = write_folder(tmp_path / "data")  # 10 x 7 = 70 pixels each
    big = root / "train" / "dog" / "big.png"
    save_grey(big, np.zeros((20, 20), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    argv = ["train", *QUICK, "--data", f"folder:{root}", "--out", str(tmp_path / "run")]
    code, err = cli(argv, capsys)
    assert code == 2 and one_error_line(err, "train").startswith(f"{big}: 400 pixels")
    make_run(tmp_path / "trained", "vgg_a0", num_classes=2, image_size=8)
    code, err = cli(["predict", str(big), "--model", str(tmp_path / "trained")], capsys)
    assert code == 2 and one_error_line(err, "predict").startswith(f"{big}: 400 pixels")


# --- CIFAR --------------------------------------------------------------------------------------


def write_meta(root, name: str, key: bytes, names: list) -> None:
    with open(root / name, "wb") as f:
        pickle.dump({key: names}, f)


@pytest.mark.parametrize("count", [5, 12])
def test_cifar_meta_must_name_exactly_10_or_100_classes(tmp_path, count):
    root = write_cifar(tmp_path / "c10", 10)
    write_meta(root, "batches.meta", b"label_names", [f"c{i}".encode() for i in range(count)])
    with pytest.raises(
        DataError, match=f"batches.meta: 'label_names' must list the 10 .* got {count}"
    ):
        load_data(f"cifar10:{root}", 32)
    root = write_cifar(tmp_path / "c100", 100)
    write_meta(root, "meta", b"fine_label_names", [b"x"] * count)
    with pytest.raises(
        DataError, match=f"meta: 'fine_label_names' must list the 100 .* got {count}"
    ):
        load_data(f"cifar100:{root}", 32)


def test_cifar_meta_names_are_the_class_names(tmp_path):
    root = write_cifar(tmp_path / "c10", 10)
    names = [f"class{i}" for i in range(10)]
    write_meta(root, "batches.meta", b"label_names", [n.encode() for n in names])
    assert load_data(f"cifar10:{root}", 32).class_names == names


@pytest.mark.parametrize(
    "labels", [[0.0, 1.5, 2.0, 3.0, 4.0, 5.0], [True, False] * 3], ids=["float", "bool"]
)
def test_cifar_labels_must_be_integers(tmp_path, labels):
    root = write_cifar(tmp_path / "c10", 10)
    with open(root / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((6, 3072), np.uint8), b"labels": labels}, f)
    with pytest.raises(DataError, match="data_batch_2: CIFAR 'labels' must be integers, got"):
        load_data(f"cifar10:{root}", 32)


def test_cifar_integer_label_arrays_are_accepted(tmp_path):
    root = write_cifar(tmp_path / "c10", 10)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": np.uint8([9, 0, 4])}, f)
    assert load_data(f"cifar10:{root}", 32).val.labels.tolist() == [9, 0, 4]


@pytest.mark.parametrize("parent", [False, True], ids=["batch-folder", "its-parent"])
@pytest.mark.parametrize("written,asked", [(10, 100), (100, 10)])
def test_cifar_spec_of_the_other_variant_names_the_right_spec(tmp_path, written, asked, parent):
    folder = "cifar-10-batches-py" if written == 10 else "cifar-100-python"
    root = write_cifar(tmp_path / folder, written)
    given = tmp_path if parent else root
    with pytest.raises(DataError) as err:
        load_data(f"cifar{asked}:{given}", 32)
    assert str(err.value) == (
        f"{given}: holds CIFAR-{written} data, not CIFAR-{asked}; use cifar{written}:{given}"
    )
    assert load_data(f"cifar{written}:{given}", 32).num_classes == written


# --- synthetic ----------------------------------------------------------------------------------


def test_synthetic_memory_is_bounded(monkeypatch):
    with pytest.raises(DataError) as err:
        load_data("synthetic:99999999999", 32)
    assert str(err.value) == (
        "synthetic:99999999999: 99999999999 images of 3x32x32 would take 2.86e+05 GiB of "
        "memory, more than the limit of 2 GiB (synthetic:699050 at most at 32 px)"
    )
    monkeypatch.setattr(datasets, "MAX_SYNTHETIC_BYTES", 3 * 8 * 8 * 20)
    assert len(load_data("synthetic:20", 8).train) == 16
    with pytest.raises(DataError, match=r"synthetic:20 at most at 8 px"):
        load_data("synthetic:21", 8)


# --- data paths and fingerprints of a run ------------------------------------------------------


def test_absolute_spec():
    here = os.getcwd()
    assert absolute_spec("folder:data") == f"folder:{here}/data"
    assert absolute_spec("cifar10:../c") == f"cifar10:{os.path.dirname(here)}/c"
    assert absolute_spec("cifar100:~/c") == f"cifar100:{os.path.expanduser('~')}/c"
    for spec in ("digits", "synthetic:40", "folder:/abs/d"):
        assert absolute_spec(spec) == spec


def stopped_run(tmp_path, monkeypatch, capsys):
    """A ``folder:data`` run (relative spec) started in ``tmp_path/a`` and stopped after one
    step; returns the run folder."""
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    write_folder(tmp_path / "a" / "data", per_class=4)
    run = tmp_path / "a" / "run"
    argv = ["train", *QUICK, "--data", "folder:data", "--out", "run", "--set", "stop_after_steps=1"]
    assert cli(argv, capsys)[0] == 0
    return run


@pytest.mark.slow
def test_run_records_its_data_absolute_and_resumes_and_evaluates_it_from_anywhere(
    tmp_path, monkeypatch, capsys
):
    run = stopped_run(tmp_path, monkeypatch, capsys)
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == f"folder:{tmp_path / 'a' / 'data'}"
    assert config["data_info"] == {"train_images": 8, "val_images": 8}
    other = tmp_path / "b"
    write_folder(other / "data", classes=("ant", "bee", "fly"), per_class=5)
    monkeypatch.chdir(other)
    assert cli(["train", "--resume", "--out", str(run), "--no-progress"], capsys)[0] == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["data"] == config["data"]
    assert main(["eval", str(run), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 8  # a's val, not b's 15


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda d: write_folder(d, per_class=6), "train_images 8 -> 12; val_images 8 -> 12"),
        (
            lambda d: [os.rename(d / s / "dog", d / s / "fox") for s in ("train", "val")],
            "class names 2 -> 2 (added ['fox'], removed ['dog'])",
        ),
    ],
    ids=["grown", "renamed-class"],
)
def test_resume_refuses_changed_data(tmp_path, monkeypatch, capsys, change, expected):
    run = stopped_run(tmp_path, monkeypatch, capsys)
    data = tmp_path / "a" / "data"
    change(data)
    code, err = cli(["train", "--resume", "--out", str(run), "--no-progress"], capsys)
    assert code == 2
    assert one_error_line(err, "train") == (
        f"{run}: the data folder:{data} changed since the run started ({expected}); a resumed "
        "run needs the data it started with: restore it, or train afresh in another run folder"
    )


def test_resume_with_another_data_spec_is_a_config_change(tmp_path, monkeypatch, capsys):
    run = stopped_run(tmp_path, monkeypatch, capsys)
    other = write_folder(tmp_path / "other", per_class=5)
    argv = ["train", "--resume", "--out", str(run), "--data", f"folder:{other}", "--no-progress"]
    code, err = cli(argv, capsys)
    assert code == 2 and one_error_line(err, "train") == (
        f"{run}: cannot resume with a different config (data: "
        f"'folder:{tmp_path / 'a' / 'data'}' -> 'folder:{other}')"
    )


@pytest.mark.slow
def test_resume_of_a_run_without_a_data_fingerprint_checks_class_names(
    tmp_path, monkeypatch, capsys
):
    run = stopped_run(tmp_path, monkeypatch, capsys)
    config = json.loads((run / "config.json").read_text())
    del config["data_info"]
    config["data"] = "folder:data"  # recorded relative, as runs did before
    (run / "config.json").write_text(json.dumps(config))
    data, resume = tmp_path / "a" / "data", ["train", "--resume", "--out", "run", "--no-progress"]
    for split in ("train", "val"):
        os.rename(data / split / "dog", data / split / "fox")
    code, err = cli(resume, capsys)
    assert code == 2 and "(class names 2 -> 2 (added ['fox'], removed ['dog']))" in err
    for split in ("train", "val"):
        os.rename(data / split / "fox", data / split / "dog")
    write_folder(data, per_class=6)  # grown: not detectable without the recorded counts
    assert cli(resume, capsys)[0] == 0


# --- errors inside data loader workers ----------------------------------------------------------


class _Unreadable(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        raise DataError(f"image {index}: cannot decode image (truncated)")


def test_worker_errors_keep_their_one_line_message():
    with pytest.raises(DataError) as err:
        next(iter(DataLoader(_Unreadable(), batch_size=2, num_workers=1)))
    assert str(err.value) == "image 0: cannot decode image (truncated)"


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "val"])
def test_unreadable_image_with_workers_is_one_line(tmp_path, capsys, split):
    root = write_folder(tmp_path / "data")
    for image in (root / split).rglob("*.png"):  # the first batch of the split fails
        image.write_bytes(b"not a png")
    argv = ["train", *QUICK, "--data", f"folder:{root}", "--out", str(tmp_path / "run")]
    code, err = cli([*argv, "--epochs", "1", "--workers", "1"], capsys)
    message = one_error_line(err, "train")
    assert code == 2 and message.startswith(f"{root / split}/") and "cannot decode image" in message


def test_image_files_dataset_reads_through_read_image(tmp_path):
    save_grey(tmp_path / "wide.png", WIDE)
    files = ImageFiles([(str(tmp_path / "wide.png"), 1)], ["a", "b"], lambda x: x)
    image, label = files[0]
    assert label == 1 and image[0].tolist() == [[0, 1, 128, 255]]
