"""One preprocessing from training to prediction: the run's recorded best top-1, ``eval`` (run
folder, fused folder, ONNX), ``deploy --int8``'s FP32 top-1 and ``predict`` over the val image
files (run folder, ONNX) are the same fraction exactly, on a ``folder:`` run (resize + centre
crop, ImageNet mean/std) and a CIFAR run (plain resize, CIFAR mean/std)."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reparam
from reparam.app.cli import main
from reparam.app.dataspec import load_eval_data
from reparam.data import Preprocessing

pytestmark = pytest.mark.slow  # each fixture trains a run and deploys it to INT8

TRAIN = ["--model", "resnet_rs_tiny", "--epochs", "4", "--batch-size", "8", "--image-size", "16"]
TRAIN += ["--lr", "0.02", "--warmup-epochs", "0", "--no-amp", "--no-channels-last"]
TRAIN += ["--workers", "0", "--seed", "0"]
INT8 = ["--int8", "--calib-images", "8", "--latency-batch", "2", "--latency-repeats", "1"]


def _json(argv: list[str]):
    """``reparam ARGV --json``'s answer (stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*argv, "--json"]) == 0, argv
    return json.loads(out.getvalue())


COLOURS = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)])


def _image(rng: np.random.Generator, label: int, height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W, 3]``: every fourth image noise alone, the others the class colour in the
    middle half of the width and the next class's colour in the margins, plus noise (a centre
    crop and a plain resize see the colours in other proportions)."""
    pixels = rng.normal(128, 60, (height, width, 3))
    if rng.random() > 0.25:
        pixels[:] += COLOURS[(label + 1) % 3] - 128
        pixels[:, width // 4 : width - width // 4] += COLOURS[label] - COLOURS[(label + 1) % 3]
    return pixels.clip(0, 255).astype(np.uint8)


def _write_folder(root: Path, per_class: int) -> tuple[list[Path], list[int]]:
    """``root/{train,val}/{ant,bee,cow}/*.png`` of 24x14 images; the val files and labels."""
    rng, val = np.random.default_rng(0), []
    for split in ("train", "val"):
        for label, name in enumerate(("ant", "bee", "cow")):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                path = root / split / name / f"{i}.png"
                Image.fromarray(_image(rng, label, 14, 24)).save(path)
                if split == "val":
                    val.append((path, label))
    return [p for p, _ in val], [k for _, k in val]


def _write_cifar(root: Path, per_file: int) -> tuple[list[Path], list[int]]:
    """CIFAR-10 batches of 32x32 images of classes 0-2; the test batch also as PNG files."""
    rng = np.random.default_rng(0)
    (root / "png").mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 3, per_file).tolist()
        images = np.stack([_image(rng, label, 32, 32) for label in labels])
        batch = {b"data": images.transpose(0, 3, 1, 2).reshape(per_file, -1), b"labels": labels}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    paths = [root / "png" / f"{i}.png" for i in range(per_file)]
    for path, image in zip(paths, images):
        Image.fromarray(image).save(path)
    return paths, labels


@pytest.fixture(scope="module", params=["folder", "cifar10"])
def trained(request, tmp_path_factory):
    """A 4-epoch ResNet-RS-tiny run on tiny data, deployed with ONNX and INT8: ``dict(spec, run,
    deploy, summary, metrics, files, labels)`` (``files``/``labels``: the val split as images)."""
    root = tmp_path_factory.mktemp(request.param)
    data = root / "data"
    if request.param == "folder":
        files, labels = _write_folder(data, per_class=12)
    else:
        files, labels = _write_cifar(data, per_file=12)
    spec, run, deploy = f"{request.param}:{data}", root / "run", root / "deploy"
    metrics = _json(["train", *TRAIN, "--data", spec, "--out", str(run), "--no-progress"])
    summary = _json(["deploy", str(run), "--out", str(deploy), *INT8, "--calib-data", spec])
    return dict(
        spec=spec, run=run, deploy=deploy, summary=summary, metrics=metrics, files=files,
        labels=labels,
    )  # fmt: skip


def test_eval_deploy_and_predict_give_the_runs_top1_exactly(trained):
    recorded = trained["metrics"]["best_top1"]
    assert 0 < recorded < 1  # a figure that preprocessing can move
    run, deploy = trained["run"], trained["deploy"]
    for model in (run, deploy, deploy / "model.onnx"):
        assert _json(["eval", str(model), "--no-progress"])["top1"] == recorded, model
    assert trained["summary"]["int8"]["top1_fp32"] == recorded
    files, labels = trained["files"], trained["labels"]
    for model in (run, deploy / "model.onnx"):
        answers = _json(["predict", *map(str, files), "--model", str(model), "--top-k", "1"])
        correct = sum(a["top_k"][0]["class"] == label for a, label in zip(answers, labels))
        assert correct / len(files) == recorded, model


def test_the_recorded_preprocessing_changes_this_models_predictions(trained):
    """Guards the test above: the generic preprocessing (plain resize, ImageNet mean/std) gives
    this model other classes, so agreement there is not agreement by chance."""
    model, preprocessing, _ = reparam.load(trained["run"])
    generic = Preprocessing(preprocessing.image_size)
    assert preprocessing != generic

    def classes(prep: Preprocessing) -> np.ndarray:
        val = load_eval_data(trained["spec"], prep).val
        with torch.no_grad():
            return model(torch.stack([val[i][0] for i in range(len(val))])).argmax(1).numpy()

    assert (classes(preprocessing) != classes(generic)).any()


def test_deploy_and_eval_name_the_checkpoint_they_use(trained, capsys):
    metrics, summary = trained["metrics"], trained["summary"]
    expected = {
        "weights": "best.safetensors",
        "epoch": metrics["best_epoch"],
        "source": metrics["best_source"],
        "epochs": 4,
        "finished": True,
    }
    assert summary["checkpoint"] == expected
    deploy_json = json.loads((trained["deploy"] / "deploy.json").read_text())
    assert deploy_json["checkpoint"] == expected
    assert deploy_json["int8"]["calib_images_used"] == 8
    for model in (trained["run"], trained["deploy"] / "model.onnx"):
        capsys.readouterr()
        assert main(["eval", str(model), "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert f"best.safetensors, epoch {metrics['best_epoch']} of 4, raw weights" in out
