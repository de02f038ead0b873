"""Figures that say what they are from: the checkpoint behind a top-1, data with the model's
classes, finite outputs, the calibration images used, the preprocessing a size change keeps."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from torch import nn

from helpers import make_run, write_folder
from reparam.app.cli import main
from reparam.app.commands.train import _figures
from reparam.app.deploy.pipeline import deploy
from reparam.app.train import fit
from reparam.app.train.state import checkpoint_info
from reparam.data import Preprocessing
from reparam.data.transforms import CIFAR_MEAN_STD
from reparam.files import json_text, load_weights, read_json, save_weights, write_json
from reparam.quant.onnx import export_onnx
from reparam.quant.ort import QuantSettings

DATA = "synthetic:60"  # 48 train / 12 val images, 10 classes


def _run_on(folder: Path, data: Path, names: list[str]) -> Path:
    """A vgg_a0 run folder on ``folder:data`` that records ``names`` as its classes."""
    make_run(folder, name="vgg_a0", num_classes=len(names), data=f"folder:{data}")
    config = read_json(folder / "config.json")
    write_json({**config, "class_names": names}, folder / "config.json")
    return folder


@pytest.fixture
def pets(tmp_path) -> Path:
    return write_folder(tmp_path / "pets", classes=("cat", "dog", "eel"), per_class=2)


@pytest.mark.parametrize("command", ["eval", "deploy", "qat"])
def test_data_with_other_class_names_is_refused_naming_both(pets, tmp_path, capsys, command):
    run = _run_on(tmp_path / "run", pets, ["cat", "wolf", "eel"])
    argv = {
        "eval": ["eval", str(run), "--data", f"folder:{pets}"],
        "deploy": ["deploy", str(run), "--out", str(tmp_path / "o"), "--int8", "--data"],
        "qat": ["qat", str(run), "--out", str(tmp_path / "o"), "--data"],
    }[command]
    if command != "eval":
        argv.append(f"folder:{pets}")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"reparam {command}: error:")
    assert "class 1 is 'dog' in the data but 'wolf' in the model" in err[0]
    assert "['cat', 'dog', 'eel']" in err[0] and "['cat', 'wolf', 'eel']" in err[0]
    assert not (tmp_path / "o").exists()


def test_the_runs_own_class_names_are_accepted(pets, tmp_path, capsys):
    run = _run_on(tmp_path / "run", pets, ["cat", "dog", "eel"])
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 6


def test_compare_checks_every_source_before_any_work(pets, tmp_path, capsys):
    good = _run_on(tmp_path / "good", pets, ["cat", "dog", "eel"])
    bad = _run_on(tmp_path / "bad", pets, ["cat", "dog", "fox"])
    out = tmp_path / "cmp"
    argv = ["deploy", "--compare", str(good), str(bad), "--data", f"folder:{pets}"]
    assert main([*argv, "--out", str(out), "--image-size", "16"]) == 2
    assert "class 2 is 'eel' in the data but 'fox' in the model" in capsys.readouterr().err
    assert not out.exists()  # nothing deployed, nothing trained


def _blow_up(run: Path) -> None:
    """Finite weights whose outputs overflow: every classifier weight 3e38."""
    weights = load_weights(run / "best.safetensors")
    weights["fc.weight"] = weights["fc.weight"].clone().fill_(3e38)
    save_weights(weights, run / "best.safetensors")


@pytest.mark.slow
def test_non_finite_outputs_are_refused_naming_the_input(pets, tmp_path, capsys):
    run = _run_on(tmp_path / "run", pets, ["cat", "dog", "eel"])
    _blow_up(run)
    image = sorted((pets / "val" / "cat").iterdir())[0]
    cases = {
        "eval": (["eval", str(run), "--no-progress"], str(image)),
        "predict": (["predict", str(image), "--model", str(run)], str(image)),
        "deploy": (["deploy", str(run), "--out", str(tmp_path / "o"), "--onnx"], "random 16 px"),
    }
    for command, (argv, which) in cases.items():
        assert main(argv) == 2, command
        err = capsys.readouterr().err  # deploy: torch.onnx's export lines come first
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"reparam {command}: error:") and "Traceback" not in err
        assert "produces NaN/inf outputs" in line and which in line, line


@pytest.mark.slow
def test_calibration_says_how_many_images_it_used(tmp_path, caplog):
    make_run(tmp_path / "run", name="vgg_a0", data=DATA)
    with caplog.at_level(logging.WARNING):
        summary = deploy(
            tmp_path / "run", tmp_path / "o", int8=True, calib_data=DATA, latency_repeats=1,
            latency_batch=2, settings=QuantSettings(calib_images=100000),
        )  # fmt: skip
    assert "using 48 images, all of synthetic:60's train split, of the 100000 asked" in caplog.text
    recorded = read_json(tmp_path / "o" / "deploy.json")["int8"]
    assert recorded["calib_images_used"] == summary["int8"]["calib_images_used"] == 48
    assert recorded["calib_images_asked"] == 100000


def test_deploying_an_unfinished_run_warns_and_records_its_epoch(tiny_config, tmp_path, caplog):
    config = tiny_config(epochs=3, stop_after_steps=4)  # 4 steps per epoch: stops after epoch 1
    assert fit(config)["interrupted"]
    info = checkpoint_info(config.out)
    assert info == {
        "weights": "best.safetensors",
        "epoch": 1,
        "source": "raw",
        "epochs": 3,
        "finished": False,
    }
    with caplog.at_level(logging.WARNING):
        summary = deploy(config.out, tmp_path / "o")
    assert "has not finished: deploying its best.safetensors, epoch 1 of 3" in caplog.text
    assert summary["checkpoint"] == info == read_json(tmp_path / "o" / "deploy.json")["checkpoint"]


@pytest.mark.parametrize(
    "best, expected",
    [
        ((0.5, "raw", 2), "top-1 50.00% at epoch 2 (raw weights in best.safetensors"),
        ((0.6, "ema", 1), "top-1 60.00% at epoch 1 (EMA weights in best.safetensors"),
        ((-1.0, None, 0), "last epoch 2: top-1 50.00%, EMA 40.00% (no best.safetensors"),
    ],
)
def test_train_summary_names_the_checkpoint_of_its_figure(best, expected):
    top1, source, epoch = best
    metrics = {"epochs": 2, "top1": 0.5, "top1_ema": 0.4, "best_top1": top1}
    text = _figures({**metrics, "best_source": source, "best_epoch": epoch})
    assert text.startswith(expected)
    assert ("; last epoch 2: top-1 50.00%, EMA 40.00%" in text) == (epoch == 1)


def test_eval_image_size_keeps_the_recorded_preprocessing(tmp_path, capsys):
    make_run(tmp_path / "run", name="vgg_a0", data=DATA)
    mean, std = CIFAR_MEAN_STD["cifar10"]
    recorded = Preprocessing(16, mean, std)
    config = read_json(tmp_path / "run" / "config.json")
    write_json({**config, "preprocessing": recorded.to_dict()}, tmp_path / "run" / "config.json")
    assert main(["eval", str(tmp_path / "run"), "--image-size", "24", "--json"]) == 0
    used = json.loads(capsys.readouterr().out)["preprocessing"]
    assert Preprocessing.from_dict(used) == Preprocessing(24, mean, std)


@pytest.mark.slow
def test_predict_names_the_metadata_not_a_flag_it_lacks(tmp_path, capsys, caplog):
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    image = sorted((write_folder(tmp_path / "d") / "val" / "cat").iterdir())[0]
    mismatched = export_onnx(
        model, tmp_path / "m.onnx", 16, {"preprocessing": json_text(Preprocessing(24).to_dict())}
    )
    assert main(["predict", str(image), "--model", str(mismatched)]) == 2
    err = capsys.readouterr().err
    assert "--image-size" not in err
    assert "metadata preprocessing has image_size 24; the input is 16 x 16" in err
    bare = export_onnx(model, tmp_path / "bare.onnx", 16)
    with caplog.at_level(logging.WARNING):
        assert main(["predict", str(image), "--model", str(bare)]) == 0
    assert "no 'preprocessing' in its ONNX metadata" in caplog.text
