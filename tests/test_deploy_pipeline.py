"""``reparam deploy`` end to end (fused folder, ONNX, INT8 + analysis), report, bad input."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import reparam
from helpers import make_run
from recount import file_predictions
from reparam.app.cli import main
from reparam.files import read_json
from reparam.saved import build_deploy_model, fuse_for_deploy, load_fused, save_fused
from reparam.testing import randomize_batchnorm_

DATA = "synthetic:60"  # 48 train / 12 val images, 10 classes


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    model = make_run(root / "run", data=DATA)
    argv = [
        "deploy",
        str(root / "run"),
        "--out",
        str(root / "out"),
        "--int8",
        "--calib-data",
        DATA,
        "--calib-images",
        "16",
        "--granularity",
        "per-tensor",
        "--latency-repeats",
        "2",
        "--latency-batch",
        "4",
        "--json",
    ]
    return root, model, argv


def test_deploy_int8_writes_everything_and_reports_json(deployed, capsys):
    root, model, argv = deployed
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    out = root / "out"
    for name in (
        "fused.safetensors",
        "config.json",
        "model.onnx",
        "model.int8.onnx",
        "deploy.json",
        "quant.json",
    ):
        assert (out / name).is_file(), name
    assert summary["onnx"]["passed"] and summary["onnx"]["max_rel_err"] <= 1e-4
    int8 = summary["int8"]
    assert int8["settings"]["granularity"] == "per-tensor" and int8["n_images"] == 12
    assert int8["latency_int8_ms"] > 0
    # the recorded top-1s are the saved files' own: each counted again from its file alone
    fp32, labels = file_predictions(out / "model.onnx", DATA)
    quantized, _ = file_predictions(out / "model.int8.onnx", DATA)
    assert int8["top1_fp32"] == (fp32 == labels).mean()
    assert int8["top1_int8"] == (quantized == labels).mean()
    assert int8["top1_agreement"] == (fp32 == quantized).mean()
    # and the FP32 file predicts what the run's own (unfused, torch) model does
    assert (fp32 == file_predictions(root / "run", DATA)[0]).all()
    quant = read_json(out / "quant.json")
    convs = [m for m in reparam.reparameterize(model).modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(quant["layers"]) == len(convs) + 1  # + classifier
    assert {
        "std",
        "absmax",
        "max_over_std",
        "excess_kurtosis",
        "channel_absmax_spread",
        "centre_over_surround_std",
        "sqnr_per_tensor_db",
        "sqnr_per_channel_db",
    } <= set(quant["layers"][0])
    assert read_json(out / "config.json")["fused"] is True


def test_fused_folder_rebuilds_the_fused_model(deployed):
    root, model, argv = deployed
    if not (root / "out" / "fused.safetensors").is_file():
        assert main(argv) == 0
    loaded, config = load_fused(root / "out")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), reparam.reparameterize(model)(x))
    assert config["model"] == "repvgg_a0"


def test_report_from_deploy_folder(deployed, tmp_path, capsys):
    root, _, argv = deployed
    if not (root / "out" / "quant.json").is_file():
        assert main(argv) == 0
    capsys.readouterr()
    assert main(["report", str(root / "out"), "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["plots"]) == 2
    text = (tmp_path / "report.md").read_text()
    assert "SQNR" in text and "centre/surround" in text


def test_deploy_structure_is_shared_by_the_vgg_families():
    """RepVGG, RepOpt-VGG and plain VGG A0 fuse to the same state-dict keys and shapes."""
    shapes = {}
    for name in ("repvgg_a0", "repopt_vgg_a0", "vgg_a0"):
        state = build_deploy_model({"model": name, "num_classes": 10}).state_dict()
        shapes[name] = {k: tuple(v.shape) for k, v in state.items()}
    assert len(shapes) >= 2
    first = next(iter(shapes.values()))
    assert all(s == first for s in shapes.values())


def test_train_mode_model_is_fused_from_eval_mode_and_logged(caplog):
    model = randomize_batchnorm_(reparam.create_model("vgg_a0", num_classes=10)).train()
    with caplog.at_level(logging.INFO):
        fused = fuse_for_deploy(model)
    assert "train mode" in caplog.text
    assert model.training  # the original is untouched
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--int8"], "--int8 needs --calib-data"),
        (["--int8", "--calib-data", "nonsense"], "unknown data spec"),
        (["--onnx", "--image-size", "0"], "image_size"),
    ],
)
def test_bad_deploy_input_is_one_clear_line(tmp_path, capsys, extra, message):
    make_run(tmp_path / "run", name="vgg_a0", data=DATA)
    code = main(["deploy", str(tmp_path / "run"), "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith("reparam deploy: error:")


def test_wrong_class_count_and_missing_run_are_clear_errors(tmp_path, capsys):
    make_run(tmp_path / "run", name="vgg_a0", num_classes=7, data=DATA)
    argv = [
        "deploy",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "o"),
        "--int8",
        "--calib-data",
        DATA,
    ]
    assert main(argv) == 2
    assert "predicts 7 classes; the data has 10" in capsys.readouterr().err
    assert main(["deploy", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "expected a run folder" in capsys.readouterr().err
    assert main(["deploy", str(tmp_path / "run"), str(tmp_path / "run"), "--out", "x"]) == 2
    assert "--compare" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["vanillanet_5", "reducenet20"])
def test_fused_folder_round_trip_for_depth_reparam_families(name, tmp_path):
    """Annealed families: a trained model (lambda = 1) fuses, and build_deploy_model (which sets
    lambda to 1 on a fresh model) rebuilds the same fused structure for its weights."""
    model = reparam.prepare_for_deploy(
        randomize_batchnorm_(reparam.create_model(name, num_classes=10))
    )
    fused = fuse_for_deploy(model)
    save_fused(fused, {"model": name, "num_classes": 10, "model_kwargs": {}}, tmp_path)
    loaded, _ = load_fused(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), fused(x))
