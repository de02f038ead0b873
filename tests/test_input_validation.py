"""Configs, training states, ONNX files, scale files and hyper-parameters checked where they
enter: every bad one ends in one line naming the file or field and what was expected."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reparam
from helpers import make_run, tiny_config
from reparam.app.cli import main
from reparam.app.deploy import open_model
from reparam.app.deploy.qat import QATSettings
from reparam.app.train import TrainConfig, fit, load_model
from reparam.app.train.state import check_training_state
from reparam.data import Preprocessing
from reparam.errors import CheckpointError, DataError, DeployError, RecipeError, ScaleError
from reparam.files import load_state, read_json, save_state, save_weights, write_json
from reparam.models.scales import extract_scales, save_scale_file
from reparam.optim import RepOptAdamW, RepOptSGD
from reparam.quant.ort import QuantSettings
from reparam.saved import fuse_for_deploy, load_fused, save_fused


def one_line_error(capsys, argv: list[str], *expected: str) -> str:
    """Run the CLI; assert exit status 2 and a single ``reparam <cmd>: error:`` line holding
    every ``expected`` text; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"reparam {argv[0]}: error: "), err
    for text in expected:
        assert text in err, (text, err)
    return err


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "img.png"
    Image.fromarray(np.full((20, 20, 3), 120, np.uint8)).save(path)
    return path


# --- config.json of run and fused folders ------------------------------------------------------

CONFIG_EDITS = {
    "num_classes changed": ({"num_classes": 5}, "fc.weight is [10,"),
    "another width": ({"model": "repvgg_a1"}, "does not fit model 'repvgg_a1'"),
    "unknown model": ({"model": "repvgg_zz"}, "field 'model'"),
    "num_classes zero": ({"num_classes": 0}, "field 'num_classes'"),
    "num_classes text": ({"num_classes": "ten"}, "field 'num_classes'"),
    "image_size zero": ({"image_size": 0}, "field image_size: expected 1 to"),
    "image_size negative": ({"image_size": -32}, "image_size: expected 1 to"),
    "image_size text": ({"image_size": "big"}, "image_size: expected an integer, got 'big'"),
    "image_size huge": ({"image_size": 10**9}, "image_size: expected 1 to"),
    "image_size unlike preprocessing": (
        {"image_size": 64, "preprocessing": {"image_size": 16}},
        "field 'image_size' is 64, preprocessing.image_size is 16",
    ),
    "mean of 2": ({"preprocessing": {"image_size": 16, "mean": [0.5, 0.5]}}, "mean: expected 3"),
    "std with a 0": ({"preprocessing": {"image_size": 16, "std": [0.2, 0, 0.2]}}, "std: expected"),
    "crop_pct 0": ({"preprocessing": {"image_size": 16, "crop_pct": 0}}, "crop_pct: expected"),
    "preprocessing unknown key": (
        {"preprocessing": {"image_size": 16, "size": 3}},
        "expected keys",
    ),
    "preprocessing a list": ({"preprocessing": [16]}, "preprocessing: expected a JSON object"),
    "class_names short": ({"class_names": ["a", "b"]}, "'class_names' has 2 names; expected"),
    "class_names numbers": ({"class_names": list(range(10))}, "expected a list of strings"),
}


def _edit(config_path: Path, edit: dict) -> None:
    config = read_json(config_path)
    config.update(edit)
    config_path.write_text(json.dumps(config))


@pytest.mark.parametrize("name", CONFIG_EDITS)
def test_edited_run_config_is_one_line_in_predict(tmp_path, capsys, image, name):
    edit, expected = CONFIG_EDITS[name]
    run = tmp_path / "run"
    make_run(run)
    _edit(run / "config.json", edit)
    line = one_line_error(capsys, ["predict", str(image), "--model", str(run)], expected)
    assert str(run) in line
    with pytest.raises(CheckpointError, match="config.json|safetensors"):
        load_model(run)


@pytest.mark.parametrize("name", ["num_classes changed", "another width", "std with a 0"])
def test_edited_fused_config_is_one_line(tmp_path, capsys, image, name):
    edit, expected = CONFIG_EDITS[name]
    run, fused = tmp_path / "run", tmp_path / "fused"
    model = make_run(run)
    save_fused(fuse_for_deploy(model), read_json(run / "config.json"), fused)
    load_fused(fused)  # the untouched folder loads
    _edit(fused / "config.json", edit)
    one_line_error(capsys, ["predict", str(image), "--model", str(fused)], expected, str(fused))
    with pytest.raises(CheckpointError):
        load_fused(fused)


def test_weights_of_another_model_name_the_first_differing_key(tmp_path, capsys, image):
    run, other = tmp_path / "run", tmp_path / "other"
    make_run(run)
    make_run(other, name="repvgg_a1")
    shutil.copy(other / "best.safetensors", run / "best.safetensors")
    line = one_line_error(capsys, ["predict", str(image), "--model", str(run)], "in the file")
    assert "best.safetensors: does not fit model 'repvgg_a0'" in line


def test_weights_with_other_keys_are_named(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    plain = reparam.create_model("vgg_a0", num_classes=10)
    save_weights(plain.state_dict(), run / "best.safetensors")
    with pytest.raises(CheckpointError, match="does not match model 'repvgg_a0'.*missing"):
        load_model(run)


def test_edited_config_is_one_line_in_deploy(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run)
    _edit(run / "config.json", {"num_classes": 3})
    one_line_error(capsys, ["deploy", str(run), "--out", str(tmp_path / "d")], "does not fit")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"image_size": 16, "mean": [0.5, math.nan, 0.5]}, "mean: expected 3 finite numbers"),
        ({"image_size": True}, "image_size: expected an integer"),
        ({"image_size": 16, "crop_pct": 1.5}, "crop_pct"),
        ({"mean": [0, 0, 0]}, "expected keys"),
    ],
)
def test_preprocessing_from_dict_refuses(data, message):
    with pytest.raises(DataError, match=message):
        Preprocessing.from_dict(data)


def test_preprocessing_round_trips():
    pre = Preprocessing(24, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 0.875)
    assert Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre


# --- training state ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    fit(tiny_config(out, epochs=1))
    return out


STATE_EDITS = {
    "a key missing": (lambda s: s.pop("optimizer"), "entry 'optimizer' is missing"),
    "epoch a string": (lambda s: s.update(epoch="3"), "entry 'epoch' is '3'; expected an int"),
    "rows not a list": (
        lambda s: s.update(rows={"a": 1}),
        "entry 'rows' is dict; expected a list of dicts",
    ),
    "rng empty": (lambda s: s.update(rng=[]), "entry 'rng' holds 0 RNG states"),
    "config a list": (lambda s: s.update(config=[1]), "entry 'config' is list; expected a dict"),
    "epoch_sums short": (lambda s: s.update(epoch_sums=[0.0]), "entry 'epoch_sums'"),
}


@pytest.mark.parametrize("name", STATE_EDITS)
def test_malformed_training_state_is_refused(trained_run, name):
    edit, message = STATE_EDITS[name]
    state = load_state(trained_run / "last.state.pt")
    check_training_state(state, "last.state.pt")  # the state training wrote passes
    edit(state)
    with pytest.raises(CheckpointError, match=message):
        check_training_state(state, "last.state.pt")


@pytest.mark.parametrize("name", ["a key missing", "epoch a string"])
def test_malformed_training_state_is_one_line_on_resume(tmp_path, capsys, trained_run, name):
    edit, message = STATE_EDITS[name]
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    state = load_state(run / "last.state.pt")
    edit(state)
    save_state(state, run / "last.state.pt")
    one_line_error(capsys, ["train", "--out", str(run), "--resume"], message, "last.state.pt")


def test_optimizer_state_of_another_shape_is_one_line_on_resume(tmp_path, capsys, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    state = load_state(run / "last.state.pt")
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1] * 5
    save_state(state, run / "last.state.pt")
    one_line_error(capsys, ["train", "--out", str(run), "--resume"], "entry 'optimizer'")


def test_a_non_dict_state_is_refused():
    with pytest.raises(CheckpointError, match="expected a dict of training state, got list"):
        check_training_state([1, 2], "last.state.pt")


# --- ONNX files from other tools ---------------------------------------------------------------

SIZE, CLASSES = 8, 4


def _onnx_classifier(path: Path, *, batch="N", output_rank=2, dtype="float", inputs=1, meta=None):
    """A tiny ONNX image classifier as other tools write them: global average pool -> matmul."""
    import onnx
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    nodes, graph_inputs = [], []
    for i in range(inputs):
        graph_inputs.append(helper.make_tensor_value_info(f"x{i}", elem, [batch, 3, SIZE, SIZE]))
    source = "x0"
    if dtype == "float16":
        nodes.append(helper.make_node("Cast", ["x0"], ["xf"], to=TensorProto.FLOAT))
        source = "xf"
    weight = np.arange(3 * CLASSES, dtype=np.float32).reshape(3, CLASSES) / 10
    nodes += [
        helper.make_node("GlobalAveragePool", [source], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits2d"]),
    ]
    out_shape = [batch, CLASSES]
    if output_rank == 4:
        nodes.append(helper.make_node("Unsqueeze", ["logits2d", "axes"], ["logits"]))
        out_shape = [batch, CLASSES, 1, 1]
    else:
        nodes.append(helper.make_node("Identity", ["logits2d"], ["logits"]))
    initializers = [helper.make_tensor("w", TensorProto.FLOAT, [3, CLASSES], weight.ravel())]
    initializers.append(helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]))
    graph = helper.make_graph(
        nodes,
        "classifier",
        graph_inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (meta or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


ONNX_FILES = {
    "two inputs": (dict(inputs=2), "has 2 inputs"),
    "4-D output": (dict(output_rank=4), "expected one output [N, classes]"),
    "fp16 input": (dict(dtype="float16"), "is tensor(float16); expected tensor(float)"),
    "short class_names": (
        dict(meta={"class_names": json.dumps(["a", "b"])}),
        "'class_names' has 2 names; the output has 4 classes",
    ),
    "class_names not JSON": (
        dict(meta={"class_names": "[a, b"}),
        "'class_names' is not valid JSON",
    ),
    "class_names not strings": (
        dict(meta={"class_names": json.dumps([1, 2, 3, 4])}),
        "expected a JSON list of strings",
    ),
    "preprocessing not JSON": (
        dict(meta={"preprocessing": "{size"}),
        "'preprocessing' is not valid",
    ),
    "preprocessing invalid": (
        dict(meta={"preprocessing": json.dumps({"image_size": SIZE, "std": [1, 0, 1]})}),
        "metadata preprocessing std: expected 3 numbers > 0",
    ),
    "preprocessing of another size": (
        dict(meta={"preprocessing": json.dumps({"image_size": 2 * SIZE})}),
        f"image_size {2 * SIZE}; the input is {SIZE} x {SIZE}",
    ),
}


@pytest.mark.parametrize("name", ONNX_FILES)
def test_foreign_onnx_files_are_one_line(tmp_path, capsys, image, name):
    kwargs, expected = ONNX_FILES[name]
    path = _onnx_classifier(tmp_path / "m.onnx", **kwargs)
    one_line_error(capsys, ["predict", str(image), "--model", str(path)], expected, str(path))
    with pytest.raises(DeployError):
        open_model(path)


def test_fixed_batch_onnx_runs_the_images_in_groups(tmp_path):
    """A fixed batch size (1 or 3) runs in groups of that size; the logits equal the dynamic
    file's, image for image."""
    names = json.dumps(list("abcd"))
    dynamic = open_model(_onnx_classifier(tmp_path / "d.onnx", meta={"class_names": names}))
    images = np.random.default_rng(0).standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)
    expected = dynamic.run(images)
    for batch in (1, 3):
        fixed = open_model(_onnx_classifier(tmp_path / f"b{batch}.onnx", batch=batch))
        np.testing.assert_array_equal(fixed.run(images), expected)
    assert dynamic.class_names == list("abcd")


# --- hyper-parameters --------------------------------------------------------------------------

TRAIN_FLAGS = {
    "randaugment garbage": (["--randaugment", "garbage"], "'randaugment' is 'garbage'"),
    "device cuda": (["--set", "device=cuda:7"], "use --set device=cpu"),
    "device bogus": (["--set", "device=bogus"], "expected auto, cpu, cuda or cuda:N"),
    "lr inf": (["--lr", "inf"], "'lr' is inf; expected a finite number"),
    "lr nan": (["--lr", "nan"], "'lr'"),
    "huge seed": (["--seed", str(2**64)], "'seed' is 18446744073709551616"),
    "negative seed": (["--seed", "-1"], "'seed'"),
    "momentum nan": (["--set", "momentum=nan"], "'momentum' is 'nan'; expected a finite number"),
    "std zero": (["--set", "std=0.2,0,0.2"], "'std': expected 3 numbers > 0"),
    "betas out of range": (["--set", "betas=0.9,1.5"], "'betas.1' is '1.5'; expected a value < 1"),
    "eps zero": (["--set", "eps=0"], "'eps'"),
    "min_lr negative": (["--set", "min_lr=-1"], "'min_lr'"),
    "weight_decay inf": (["--set", "weight_decay=inf"], "'weight_decay'"),
}


@pytest.mark.parametrize("name", TRAIN_FLAGS)
def test_bad_hyper_parameters_stop_train_before_it_starts(tmp_path, capsys, name):
    flags, expected = TRAIN_FLAGS[name]
    out = tmp_path / "run"
    argv = ["train", "--data", "synthetic:8", "--epochs", "1", "--out", str(out), *flags]
    one_line_error(capsys, argv, "config field", expected)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_refused():
    with pytest.raises(RecipeError, match="has 0 CUDA device"):
        TrainConfig(device="cuda")


def test_a_good_randaugment_string_is_accepted():
    assert TrainConfig(randaugment="rand-m9-n2-mstd0.5").randaugment == "rand-m9-n2-mstd0.5"


@pytest.mark.parametrize(
    "settings",
    [
        dict(lr=math.nan),
        dict(lr=math.inf),
        dict(lr=0.1, momentum=math.nan),
        dict(lr=0.1, weight_decay=math.inf),
    ],
)
def test_repopt_sgd_refuses_non_finite_settings(settings):
    model = reparam.create_model("repopt_vgg_a0", num_classes=3, scales="hs_init")
    with pytest.raises(ValueError, match="must be finite"):
        RepOptSGD(model, **settings)


def test_repopt_optimizers_refuse_a_non_finite_param_group():
    model = reparam.create_model("repopt_vgg_a0", num_classes=3, scales="hs_init")
    optimizer = RepOptAdamW(model, lr=1e-3)
    with pytest.raises(ValueError, match="lr=nan must be finite"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": math.nan})


@pytest.mark.parametrize("num_classes", [-3, 2.5, "10", True])
def test_create_model_refuses_a_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
        reparam.create_model("repvgg_a0", num_classes=num_classes)


def test_create_model_keeps_timms_headless_form():
    assert reparam.create_model("repvgg_a0", num_classes=0).num_classes == 0


@pytest.mark.parametrize("lr", [math.nan, math.inf, -1.0])
def test_qat_settings_refuse_a_bad_lr(lr):
    with pytest.raises(DeployError, match="QAT lr must be a finite number > 0"):
        QATSettings(lr=lr)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(seed=2**40), "QAT seed must be in"),
        (dict(epochs=1.5), "QAT epochs must be an integer"),
        (dict(batch_size=math.nan), "QAT batch_size must be an integer"),
    ],
)
def test_qat_settings_refuse_bad_numbers(settings, message):
    with pytest.raises(DeployError, match=message):
        QATSettings(**settings)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(calib_images=math.nan), "calib_images must be an integer"),
        (dict(calib_batch_size=2.5), "calib_batch_size must be an integer"),
        (dict(percentile=math.nan), "percentile must be in"),
    ],
)
def test_quant_settings_refuse_bad_numbers(settings, message):
    with pytest.raises(DeployError, match=message):
        QuantSettings(**settings)


# --- scale files and Hyper-Search --------------------------------------------------------------


def _scale_file(path: Path, model: str, fill: float | None = None) -> Path:
    hs = reparam.create_model(f"{model}_hs", num_classes=3)
    scales = extract_scales(hs)
    if fill is not None:
        scales = {k: torch.full_like(v, fill) for k, v in scales.items()}
    save_scale_file(path, scales, model=model, data="synthetic:8")
    return path


def test_an_all_zero_scale_file_is_refused(tmp_path, capsys):
    path = _scale_file(tmp_path / "zero.safetensors", "repopt_vgg_a0", fill=0.0)
    with pytest.raises(ScaleError, match="every scale is zero"):
        reparam.create_model("repopt_vgg_a0", num_classes=3, scales=str(path))
    out = tmp_path / "run"
    argv = ["train", "--model", "repopt_vgg_a0", "--data", "synthetic:8", "--epochs", "1"]
    one_line_error(capsys, [*argv, "--scales", str(path), "--out", str(out)], "every scale is zero")


def test_a_scale_file_of_another_model_is_refused(tmp_path):
    path = _scale_file(tmp_path / "a0.safetensors", "repopt_vgg_a0")
    reparam.create_model("repopt_vgg_a0", num_classes=3, scales=str(path))  # its own model
    with pytest.raises(ScaleError, match="searched for 'repopt_vgg_a0', not 'repopt_vgg_a1'"):
        reparam.create_model("repopt_vgg_a1", num_classes=3, scales=str(path))


@pytest.fixture
def a0_search(tmp_path) -> Path:
    """The run folder of an interrupted A0 search (its config is all ``--resume`` reads first)."""
    folder = tmp_path / "hs-a0"
    config = TrainConfig(model="repopt_vgg_a0_hs", data="synthetic:16", out=str(folder))
    write_json(config.to_dict(), folder / "config.json")
    return folder


def test_hypersearch_resume_as_another_model_is_refused(tmp_path, capsys, a0_search):
    out = tmp_path / "a1.safetensors"
    argv = ["hypersearch", "--model", "repopt_vgg_a1", "--run-dir", str(a0_search)]
    one_line_error(
        capsys,
        [*argv, "--resume", "--out", str(out)],
        "is a search of 'repopt_vgg_a0', not 'repopt_vgg_a1'",
        "--model repopt_vgg_a0",
    )
    assert not out.exists()


def test_hypersearch_resume_on_other_data_is_refused(tmp_path, capsys, a0_search):
    out = tmp_path / "a0.safetensors"
    argv = ["hypersearch", "--model", "repopt_vgg_a0", "--run-dir", str(a0_search), "--resume"]
    one_line_error(
        capsys,
        [*argv, "--data", "synthetic:99", "--out", str(out)],
        "searched on --data synthetic:16, not synthetic:99",
    )
    assert not out.exists()
