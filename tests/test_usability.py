"""The user's loop after training: load, predict, runs that travel, one CLI vocabulary."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch
from PIL import Image

import reparam
from helpers import write_folder
from reparam.app.cli import COMMANDS, build_parser, main
from reparam.data import Preprocessing
from reparam.models.scales import extract_scales, save_scale_file

QUICK = ["--epochs", "1", "--batch-size", "4", "--image-size", "8", "--warmup-epochs", "0"]


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """A run trained on an ImageFolder of cats and dogs, its deploy folder with ONNX, and an
    image to classify."""
    root = tmp_path_factory.mktemp("pets")
    data = write_folder(root / "data", classes=("cat", "dog"), per_class=4, size=(12, 9))
    run, deploy = root / "run", root / "deploy"
    argv = ["train", "--model", "vgg_a0", "--data", f"folder:{data}", *QUICK, "--out", str(run)]
    assert main([*argv, "--no-progress"]) == 0
    assert main(["deploy", str(run), "--out", str(deploy), "--onnx"]) == 0
    image = root / "photo.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), np.uint8)).save(image)
    return run, deploy, image


def test_load_gives_a_ready_model_with_its_preprocessing_and_class_names(pets):
    run, deploy, image = pets
    for source in (run, run / "best.safetensors", deploy):
        model, preprocessing, class_names = reparam.load(source)
        assert not model.training and class_names == ["cat", "dog"]
        assert preprocessing == Preprocessing(8, crop_pct=0.875)  # folder: resize + centre crop
        logits = model(preprocessing.load_image(image)[None])
        assert logits.shape == (1, 2)


@pytest.mark.slow
def test_predict_names_the_classes_of_a_run_a_fused_folder_and_an_onnx_file(pets, capsys):
    run, deploy, image = pets
    answers = []
    for model in (run, deploy, deploy / "model.onnx"):
        code, out, _ = cli(["predict", str(image), "--model", str(model), "--json"], capsys)
        assert code == 0
        (result,) = json.loads(out)
        assert result["image"] == str(image) and len(result["top_k"]) == 2
        assert {entry["name"] for entry in result["top_k"]} == {"cat", "dog"}
        assert sum(entry["probability"] for entry in result["top_k"]) == pytest.approx(1, 1e-5)
        answers.append([(e["class"], round(e["probability"], 4)) for e in result["top_k"]])
    assert answers[0] == answers[1] == answers[2]  # the same model, three forms
    code, out, _ = cli(["predict", str(image), "--model", str(run), "--top-k", "1"], capsys)
    assert code == 0 and out.startswith(str(image)) and out.count("%") == 1


def test_eval_uses_the_data_the_run_was_trained_on(pets, capsys):
    run, deploy, _ = pets
    for model in (run, deploy, deploy / "model.onnx"):
        code, out, _ = cli(["eval", str(model), "--json"], capsys)
        assert code == 0, model
        assert json.loads(out)["data"].startswith("folder:") and json.loads(out)["n_images"] == 8


@pytest.mark.slow
def test_a_run_trained_with_a_scale_file_needs_nothing_outside_its_folder(tmp_path, capsys):
    scales = tmp_path / "scales" / "a0.safetensors"
    save_scale_file(
        scales, extract_scales(reparam.create_model("repopt_vgg_a0_hs")), model="repopt_vgg_a0"
    )
    run = tmp_path / "here" / "run"
    train = ["train", "--model", "repopt_vgg_a0", "--data", "synthetic:16", *QUICK]
    assert main([*train, "--scales", str(scales), "--out", str(run), "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (
        config["scales_file"]["path"] == str(scales) and len(config["scales_file"]["sha256"]) == 64
    )
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(run, moved)
    shutil.rmtree(tmp_path / "scales")
    model, _, _ = reparam.load(moved)
    assert torch.equal(model.stem.scale_conv, extract_scales(model)["stem.scale_conv"])
    assert cli(["eval", str(moved), "--json"], capsys)[0] == 0
    assert cli(["deploy", str(moved), "--out", str(tmp_path / "deploy")], capsys)[0] == 0


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def _subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parsers = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, parser in action.choices.items():
                nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
                for mode, sub in nested[0].choices.items() if nested else [(None, parser)]:
                    parsers[f"{name} {mode}" if mode else name] = sub
    return parsers


def test_one_flag_vocabulary_across_subcommands():
    """Commands that run long or report figures have --json and --no-progress; --data,
    --threads and --out mean one thing each, and --out says whether it is a folder or a file."""
    parsers = _subcommand_parsers()
    assert set(COMMANDS) | {"bench train", "bench infer"} == set(parsers) | {"bench"}
    reporting = ["train", "hypersearch", "deploy", "eval", "bench train", "bench infer"]
    reporting += ["verify", "models", "demo"]
    for name in reporting:
        assert {"--json", "--no-progress"} <= _options(parsers[name]).keys(), name
    assert "--json" in _options(parsers["report"]) and "--json" in _options(parsers["predict"])
    for name in ("train", "hypersearch", "deploy", "eval", "demo"):
        assert _options(parsers[name])["--data"].dest == "data", name
    assert _options(parsers["deploy"])["--calib-data"].dest == "data"  # the older name
    threads = {
        name: _options(p)["--threads"].help.split(" (")[0]
        for name, p in parsers.items()
        if "--threads" in _options(p) and name != "train"
    }
    assert set(threads.values()) == {"CPU threads for torch and ONNX Runtime"}, threads
    assert _options(parsers["train"])["--threads"].help.startswith("CPU threads")
    for name, parser in parsers.items():
        out = _options(parser).get("--out")
        if out is not None:
            assert out.help.startswith(("folder:", "file:")), name


def test_unknown_flags_get_the_subcommands_own_error(capsys):
    for argv in (["train", "--bogus"], ["bench", "infer", "--models", "vgg_a0", "--bogus"]):
        code, _, err = cli(argv, capsys)
        assert code == 2 and f"reparam {' '.join(argv[: -1 if argv[0] == 'train' else 2])}" in err
        assert err.strip().endswith("unrecognized arguments: --bogus")


@pytest.mark.slow
def test_bench_prints_its_table_without_json(capsys):
    argv = ["bench", "train", "--models", "timm:test_resnet", "--batch-size", "2"]
    argv += ["--image-size", "8", "--steps", "1", "--warmup", "0", "--repeats", "1"]
    code, out, _ = cli([*argv, "--threads", "1", "--no-progress"], capsys)
    assert code == 0 and out.startswith("timm:test_resnet") and "img/s" in out


def test_written_files_respect_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        save_scale_file(
            tmp_path / "s.safetensors", {"stem.scale_conv": torch.ones(2)}, model="repopt_vgg_a0"
        )
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "s.safetensors").stat().st_mode) == 0o644


def test_small_traps_say_what_to_do(tmp_path, caplog, capsys):
    with caplog.at_level("WARNING"):
        argv = ["train", "--model", "vgg_a0", "--data", "synthetic:40", "--epochs", "1"]
        argv += ["--batch-size", "8", "--image-size", "8", "--no-progress"]
        assert main([*argv, "--out", str(tmp_path / "warm")]) == 0
    assert "the whole run is learning-rate warm-up" in caplog.text
    code, _, err = cli(["train", "--data", "synthetic:16", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "lower --batch-size" in err
    code, _, err = cli([*argv, "--scales", "x.safetensors", "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "scales" in err and "drop_path_rate" not in err
    model = reparam.create_model("repopt_vgg_a0", num_classes=3)
    with pytest.raises(ValueError, match="param_grad_mults"):
        reparam.optim.RepOptSGD(
            model.parameters(), lr=0.1, grad_mults=reparam.optim.grad_mults(model)
        )


def test_clipping_with_repopt_multipliers_is_refused_unless_forced(tmp_path, capsys):
    argv = ["train", "--model", "repopt_vgg_a0", "--data", "synthetic:16", *QUICK]
    argv += ["--grad-clip", "5", "--no-progress"]
    code, _, err = cli([*argv, "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "breaks the equivalence" in err and "force_grad_clip" in err
    code, _, _ = cli([*argv, "--set", "force_grad_clip=true", "--out", str(tmp_path / "b")], capsys)
    assert code == 0
