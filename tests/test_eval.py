"""``reparam eval``: run folder, fused folder and ONNX give the same top-1; clear errors."""

from __future__ import annotations

import json

import pytest

from helpers import make_run
from reparam.app.cli import main

DATA = "synthetic:60"  # 12 val images, 10 classes

pytestmark = pytest.mark.slow  # every test reads a deployed ONNX file (an export)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    make_run(root / "run", data=DATA)
    assert main(["deploy", str(root / "run"), "--out", str(root / "dep"), "--onnx"]) == 0
    return root


def _eval(argv, capsys) -> dict:
    assert main(["eval", *argv, "--data", DATA, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_run_fused_and_onnx_agree(folders, capsys):
    capsys.readouterr()
    sources = {
        "checkpoint": folders / "run",
        "fused": folders / "dep",
        "fused_file": folders / "dep" / "fused.safetensors",
        "onnx": folders / "dep" / "model.onnx",
    }
    results = {label: _eval([str(path)], capsys) for label, path in sources.items()}
    for label, metrics in results.items():
        assert (
            metrics["kind"] == label.removesuffix("_file")
            and metrics["n_images"] == 12
            and metrics["image_size"] == 16
        )
        assert metrics["seconds"] > 0
    assert len({m["top1"] for m in results.values()}) == 1


def test_wrong_input_size_for_onnx(folders, capsys):
    code = main(["eval", str(folders / "dep" / "model.onnx"), "--data", DATA, "--image-size", "24"])
    err = capsys.readouterr().err
    assert code == 2 and "exported at (16 px); drop --image-size 24" in err


def test_corrupted_onnx(folders, tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    assert main(["eval", str(bad), "--data", DATA]) == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err


def test_class_count_mismatch_and_missing_model(folders, tmp_path, capsys):
    make_run(tmp_path / "run", name="vgg_a0", num_classes=3, data=DATA)
    assert main(["eval", str(tmp_path / "run"), "--data", DATA]) == 2
    assert "predicts 3 classes; the data has 10" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing.onnx"), "--data", DATA]) == 2
    assert "not found" in capsys.readouterr().err
