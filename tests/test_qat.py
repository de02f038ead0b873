"""Quantization-aware training and the PT2E INT8 path (torchao): the BN-insertion re-param, route
choice, ``reparam qat`` end to end on digits, ``deploy --backend pt2e``, and the refusals."""

import json
import re

import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import reparam
from helpers import make_run
from recount import file_predictions
from reparam.app.cli import main
from reparam.app.dataspec import load_eval_data
from reparam.app.deploy.qat import resolve_route, with_batchnorm
from reparam.app.train import TrainConfig, fit
from reparam.errors import DeployError
from reparam.files import read_json
from reparam.quant.onnx import open_session, run_session
from reparam.quant.ort import QuantSettings, calibration_images
from reparam.saved import preprocessing_of
from reparam.testing import rel_err


@settings(max_examples=25, deadline=None)
@given(
    channels=st.integers(1, 6),
    kernel=st.sampled_from([1, 3, 4]),
    stride=st.integers(1, 2),
    depthwise=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_inserting_bn_after_fused_convs_keeps_the_function(
    channels, kernel, stride, depthwise, seed
):
    torch.manual_seed(seed)
    groups = channels if depthwise else 1
    fused = nn.Sequential(
        nn.Conv2d(3, channels, kernel, stride, kernel // 2, bias=True),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, 1, 1, groups=groups, bias=True),
        nn.Conv2d(channels, channels, 1, bias=False),  # bias-free convs stay as they are
    ).double()
    for conv in fused:
        if isinstance(conv, nn.Conv2d) and conv.bias is not None:
            nn.init.normal_(conv.bias, std=2.0)
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    with_bn = with_batchnorm(fused).eval()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 2
    assert rel_err(with_bn(x), fused(x)) < 1e-10
    calibrated = with_batchnorm(fused, x)  # statistics of x: exact in eval and train mode on x
    assert rel_err(calibrated(x), fused(x)) < 1e-10
    assert rel_err(calibrated.train()(x), fused(x)) < 1e-10


def test_routes_follow_whether_training_and_deploy_structures_match():
    assert resolve_route(reparam.create_model("repvgg_a0", num_classes=10), "auto") == "fused-bn"
    for name in ("repopt_vgg_a0", "vgg_a0"):
        assert resolve_route(reparam.create_model(name, num_classes=10), "auto") == "train"
    assert resolve_route(reparam.create_model("repvgg_a0", num_classes=10), "train") == "train"
    fused = reparam.reparameterize(reparam.create_model("repvgg_a0").eval())
    fused_keys = set(with_batchnorm(fused).state_dict())
    assert fused_keys == set(reparam.create_model("vgg_a0").state_dict())  # plain VGG's keys


@pytest.fixture(scope="module")
def qat_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat")
    # a trained model: a random one's logits are near ties, which one LSB of rounding flips
    config = TrainConfig(
        model="repopt_vgg_a0", data="digits", image_size=16, epochs=3, out=str(root / "run")
    )
    fit(config, progress=False)
    argv = ["qat", str(root / "run"), "--data", "digits", "--epochs", "1", "--out"]
    argv += [str(root / "out"), "--granularity", "per-tensor", "--latency-repeats", "1"]
    argv += ["--eval-images", "256", "--no-progress", "--json", "--batch-size", "128"]
    return root, argv


@pytest.mark.slow
def test_qat_end_to_end_on_digits(qat_folder, capsys):
    root, argv = qat_folder
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    out = root / "out"
    for name in ("fused.safetensors", "config.json", "model.onnx", "model.int8.onnx"):
        assert (out / name).is_file()
    quant = read_json(out / "quant.json")
    s = quant["settings"]
    assert (s["route"], s["granularity"], s["grad_mults"], s["backend"]) == (
        "train",
        "per-tensor",
        True,
        "pt2e-qat",
    )
    assert quant["qat"]["steps"] == 1437 // 128
    # the file is the QAT model: ORT computing its QDQ graph as written predicts torch's class on
    # every checked image; ORT's integer kernels round requantization their own way, and the
    # recorded figure for them is what the file gives on those images
    train = load_eval_data("digits", preprocessing_of(read_json(out / "config.json"))).train
    probe = calibration_images(train, 256)
    int8_file = out / "model.int8.onnx"
    as_written = run_session(open_session(int8_file, qdq_as_written=True), probe).argmax(1)
    kernels = run_session(open_session(int8_file), probe).argmax(1)
    assert quant["onnx_vs_torch_top1_agreement"] == 1.0
    assert quant["onnx_int8_kernels_vs_torch_top1_agreement"] == (kernels == as_written).mean()
    # the recorded top-1s are the files' own; the FP32 file's is the run's, counted in training
    fp32, labels = file_predictions(out / "model.onnx", "digits")
    quantized, _ = file_predictions(int8_file, "digits")
    int8 = summary["int8"]
    assert int8["n_images"] == len(labels) == 360
    assert int8["top1_fp32"] == (fp32 == labels).mean()
    assert int8["top1_fp32"] == read_json(root / "run" / "metrics.json")["best_top1"]
    assert int8["top1_int8"] == (quantized == labels).mean()
    assert main(["eval", str(int8_file), "--data", "digits", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["n_images"] == 360
    assert main(["report", str(out), "--out", str(root / "report")]) == 0


@pytest.mark.slow
def test_deploy_int8_with_the_pt2e_backend(tmp_path, capsys):
    make_run(tmp_path / "run", "vgg_a0", data="synthetic:40", image_size=16)
    argv = ["deploy", str(tmp_path / "run"), "--out", str(tmp_path / "d"), "--int8"]
    argv += ["--data", "synthetic:40", "--backend", "pt2e", "--calib-images", "16"]
    assert main([*argv, "--latency-repeats", "1", "--json", "--no-progress"]) == 0
    int8 = json.loads(capsys.readouterr().out)["int8"]
    assert int8["settings"]["backend"] == "pt2e"
    # the recorded agreement is the two files' own, on the val split as the model sees it
    fp32, _ = file_predictions(tmp_path / "d" / "model.onnx", "synthetic:40")
    quantized, _ = file_predictions(tmp_path / "d" / "model.int8.onnx", "synthetic:40")
    assert int8["top1_agreement"] == (fp32 == quantized).mean()
    graph = onnx.load(tmp_path / "d" / "model.int8.onnx").graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    with pytest.raises(DeployError, match="min/max"):
        QuantSettings(backend="pt2e", calibration="entropy")


@pytest.mark.parametrize(
    ("name", "message"),
    [("vanillanet_5", "lambda"), ("missing", "not found|No such file|missing")],
)
def test_qat_refuses_unfinished_annealing_and_untrained_runs(tmp_path, capsys, name, message):
    run = tmp_path / "run"
    if name == "missing":
        make_run(run, "vgg_a0", data="digits", image_size=16)
        (run / "best.safetensors").unlink()
    else:
        make_run(run, name, data="digits", image_size=16)  # a fresh VanillaNet: lambda = 0
    code = main(["qat", str(run), "--data", "digits", "--out", str(tmp_path / "q")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
