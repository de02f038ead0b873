"""Faults and bad input: nothing silently wrong, nothing lost, one clear line."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from helpers import cli
from reparam import reparameterize
from reparam.app.cli import main
from reparam.app.dataspec import load_data
from reparam.app.folders import exclusive_lock
from reparam.app.train import TrainConfig, fit, hyper_search, load_model
from reparam.app.train.state import load_training_state, save_training_state
from reparam.errors import CheckpointError, DataError, RunInterrupted, TrainingError
from reparam.files import json_text, read_json, save_weights, write_json
from reparam.models import create_model
from reparam.testing import compare


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("side", ["candidate", "reference"])
def test_compare_fails_on_non_finite_values_on_either_side(bad, side):
    good = torch.ones(2, 3)
    broken = good.clone()
    broken[1, 2] = bad
    pair = (broken, good) if side == "candidate" else (good, broken)
    result = compare([(good, good), pair], tolerance=1e9)
    assert not result.passed and not result.finite
    assert result.max_abs_err is None and result.max_rel_err is None
    assert "non-finite" in result.describe()
    json.dumps(result.to_dict(), allow_nan=False)  # valid JSON: null, not NaN


def test_compare_passes_finite_values_within_tolerance():
    reference = torch.tensor([1.0, -2.0], dtype=torch.float64)
    result = compare([(reference + 1e-7, reference)], tolerance=1e-6)
    assert result.passed and result.finite and result.max_rel_err == pytest.approx(5e-8)


def test_a_diverged_run_stops_before_writing_non_finite_weights(tmp_path):
    """``--lr 1e6`` drives BN statistics to inf with a finite loss: the run stops with the
    tensors named, and no checkpoint or metrics file holds them. In FP32: under bf16 autocast
    (the default on bf16 CPUs at 32 px) the loss turns NaN first, the other guard."""
    config = TrainConfig(
        model="reducenet20",
        data="synthetic:64",
        epochs=3,
        batch_size=16,
        lr=1e6,
        out=str(tmp_path / "run"),
        device="cpu",
        amp=False,
        channels_last=False,
    )
    with pytest.raises(TrainingError, match=r"running_var.*no checkpoint had been written yet"):
        fit(config, progress=False)
    assert not any((tmp_path / "run").glob("*.safetensors"))
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_non_finite_weights_are_never_written_nor_loaded(tmp_path):
    model = create_model("vgg_a0", num_classes=3)
    state = model.state_dict()
    with pytest.raises(CheckpointError, match=r"refusing to write .*fc.bias"):
        save_weights(
            {**state, "fc.bias": torch.full((3,), float("nan"))}, tmp_path / "w.safetensors"
        )
    assert not (tmp_path / "w.safetensors").exists()
    run = tmp_path / "run"
    run.mkdir()
    write_json({"model": "vgg_a0", "num_classes": 3, "image_size": 16}, run / "config.json")
    save_file({**state, "fc.bias": torch.full((3,), float("inf"))}, str(run / "best.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) hold NaN or inf \(fc.bias\)"):
        load_model(run)
    assert main(["eval", str(run), "--data", "synthetic:8"]) == 2


def test_json_output_is_strict_json_with_a_flag_for_non_finite_values(tmp_path):
    text = json_text({"top1": 0.5, "val_loss": float("nan"), "rows": [{"loss": float("inf")}]})
    data = json.loads(text)
    assert data["val_loss"] is None and data["rows"][0]["loss"] is None
    assert data["non_finite"] == ["val_loss", "rows[0].loss"]
    write_json({"x": float("-inf")}, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None, "non_finite": ["x"]}


def test_only_a_checkpoint_at_lambda_one_becomes_best(tmp_path):
    """An annealed model's best checkpoint must fuse: epochs that end below lambda = 1 are
    never 'best', however good their top-1."""
    out = tmp_path / "run"
    config = TrainConfig(
        model="reducenet20",
        data="synthetic:32",
        epochs=2,
        batch_size=16,
        out=str(out),
        device="cpu",
    )
    fit(config, progress=False)
    with safe_open(str(out / "best.safetensors"), framework="pt") as handle:
        assert handle.metadata()["epoch"] == "2"
    model, _ = load_model(out)
    reparameterize(model)  # would raise FusionError below lambda = 1


TRAIN = ["train", "--model", "vgg_a0", "--data", "synthetic:32", "--epochs", "1"]
TRAIN += ["--batch-size", "16", "--image-size", "8", "--no-progress"]


def test_a_second_writer_of_the_same_output_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    with exclusive_lock(out):
        assert main([*TRAIN, "--out", str(out)]) == 2
    assert f"PID {os.getpid()}" in capsys.readouterr().err
    assert not out.exists()
    assert main([*TRAIN, "--out", str(out)]) == 0  # released: the lock never goes stale


@pytest.mark.slow
def test_train_refuses_a_folder_with_other_files_and_forces_only_a_run_folder(tmp_path, capsys):
    out = tmp_path / "deployed"
    out.mkdir()
    write_json({"model": "repvgg_a0", "fused": True}, out / "config.json")
    assert main([*TRAIN, "--out", str(out)]) == 2
    assert "not a run folder" in capsys.readouterr().err  # --force would not help: not named
    assert main([*TRAIN, "--out", str(out), "--force"]) == 2  # not a run: nothing removed
    assert "not a run folder" in capsys.readouterr().err
    assert read_json(out / "config.json")["model"] == "repvgg_a0"
    run = tmp_path / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    assert main([*TRAIN, "--out", str(run), "--force", "--model", "repvgg_a0"]) == 0
    assert read_json(run / "config.json")["model"] == "repvgg_a0"


@pytest.mark.slow
def test_deploy_never_replaces_a_run_and_replaces_a_deploy_folder_whole(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    config = read_json(run / "config.json")
    assert main(["deploy", str(run), "--out", str(run), "--force"]) == 2
    assert "training run folder" in capsys.readouterr().err
    assert read_json(run / "config.json") == config
    out = tmp_path / "deploy"
    assert main(["deploy", str(run), "--out", str(out), "--onnx"]) == 0
    assert (out / "model.onnx").is_file()
    assert main(["deploy", str(run), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["deploy", str(run), "--out", str(out), "--force"]) == 0
    assert not (out / "model.onnx").exists()  # nothing of the old folder is left behind
    assert not list(tmp_path.glob(".deploy.*tmp")) and not (tmp_path / ".deploy.old").exists()


def test_hypersearch_checks_its_output_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scales = tmp_path / "a0.safetensors"
    scales.write_bytes(b"earlier search")
    search = ["hypersearch", "--model", "repopt_vgg_a0", "--data", "synthetic:32"]
    search += ["--epochs", "1", "--batch-size", "16", "--image-size", "8", "--no-progress"]
    assert main([*search, "--out", str(scales)]) == 2
    assert "--force" in capsys.readouterr().err and scales.read_bytes() == b"earlier search"
    assert main([*search, "--out", str(tmp_path)]) == 2  # a folder, not a file
    assert not (tmp_path / "runs").exists()  # refused before any training


def _second_save_in_a_child(out: Path, kill_at: int) -> tuple[int, int]:
    """Save step 1, then step 2 in a forked child that dies by ``os._exit(137)`` (a kill: no
    finally blocks, no cleanup) at its ``kill_at``-th flush or rename (0: never). Returns the
    child's exit status and how many flushes and renames the second save made."""
    out.mkdir()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read)

            def weights(step):
                return {"w": torch.full((3,), float(step))}

            save_training_state(out, weights(1), {"global_step": 1})
            calls = [0]

            def dying(real):
                def call(*args, **kwargs):
                    calls[0] += 1
                    if calls[0] == kill_at:
                        os._exit(137)
                    return real(*args, **kwargs)

                return call

            os.replace, os.fsync = dying(os.replace), dying(os.fsync)
            save_training_state(out, weights(2), {"global_step": 2})
            os.write(write, str(calls[0]).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        calls = int(pipe.read() or 0)
    return os.waitstatus_to_exitcode(status), calls


def test_a_kill_at_any_step_of_a_checkpoint_save_leaves_a_complete_pair(tmp_path):
    """Kill the second save before each of its renames and flushes (and let it finish once):
    the run folder always loads as one consistent pair, the old one or the new one."""
    status, steps = _second_save_in_a_child(tmp_path / "whole", 0)
    assert status == 0 and steps >= 5  # 3+ flushes, 2 renames
    outcomes = []
    for kill_at in range(1, steps + 1):
        out = tmp_path / f"kill{kill_at}"
        assert _second_save_in_a_child(out, kill_at)[0] == 137
        weights, state = load_training_state(out)
        assert weights["w"][0].item() == state["global_step"], kill_at
        outcomes.append(state["global_step"])
    assert outcomes[0] == 1 and outcomes[-1] == 2  # killed first: old pair; killed last: new


@pytest.mark.slow
def test_sigterm_ends_the_whole_demo(tmp_path):
    """The stage that gets SIGTERM saves and stops, and the demo ends with rc 143 instead of
    going on to the next stage with a half-trained model."""
    out = tmp_path / "demo"
    demo = [str(Path(sys.executable).parent / "reparam"), "demo", "--out", str(out)]
    demo += ["--data", "synthetic:64", "--image-size", "8", "--batch-size", "16"]
    process = subprocess.Popen([*demo, "--hs-epochs", "500"], stderr=subprocess.PIPE, text=True)
    hs_run = out / "repopt_vgg_a0_hs"
    deadline = time.monotonic() + 120
    while not (hs_run / "last.state.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "--resume" in err and not (out / "repvgg_a0").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    return run


def test_every_input_mistake_is_one_line_with_status_2(trained_run, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    odd_config = tmp_path / "odd"
    odd_config.mkdir()
    (odd_config / "best.safetensors").write_bytes((trained_run / "best.safetensors").read_bytes())
    write_json(
        {"model": "vgg_a0", "num_classes": 10, "model_kwargs": {"bogus": 1}},
        odd_config / "config.json",
    )
    cases = {
        "--set without =": [*TRAIN, "--set", "foo", "--out", str(tmp_path / "r1")],
        "--out is a file": [*TRAIN, "--out", str(a_file)],
        "--out under a file": [*TRAIN, "--out", str(a_file / "run")],
        "eval --batch-size 0": ["eval", str(trained_run), "--batch-size", "0"],
        "deploy --percentile 200": [
            *("deploy", str(trained_run), "--out", str(tmp_path / "d1"), "--int8"),
            *("--calib-data", "synthetic:32", "--percentile", "200"),
        ],
        "deploy --latency-batch 0": [
            *("deploy", str(trained_run), "--out", str(tmp_path / "d2")),
            *("--latency-batch", "0"),
        ],
        "models --image-size 0": ["models", "vgg_a0", "--image-size", "0"],
        "unknown model_kwargs": ["eval", str(odd_config), "--data", "synthetic:32"],
    }
    for case, argv in cases.items():
        code, err = cli(argv, capsys)
        assert code == 2, case
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("reparam"), case
    assert not (tmp_path / "d1").exists()  # refused before any work


def test_a_full_disk_keeps_the_previous_checkpoint_and_a_matching_log(
    tmp_path, monkeypatch, capsys
):
    """The second epoch's checkpoint write fails with ENOSPC: one line naming it, and the run
    folder still holds epoch 1's pair, with log.csv listing exactly epoch 1."""
    from reparam.app.train import state

    real_save, calls = state.save_file, {"n": 0}

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", "last.safetensors")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(state, "save_file", full_disk)
    out = tmp_path / "run"
    code, err = cli([*TRAIN[:6], "2", *TRAIN[7:], "--out", str(out)], capsys)
    assert code == 2 and "No space left on device" in err
    weights, state = load_training_state(out)
    assert state["epoch"] == 1
    assert (out / "log.csv").read_text().count("\n") == 2  # header + epoch 1
    assert not list(out.glob(".last.*.tmp"))


def test_cifar_batches_are_read_strictly(tmp_path):
    """Protocol-2 pickles (bytes through ``_codecs.encode``) load; an empty test batch and
    non-uint8 data are refused, not cast."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)

    def write(name, data, protocol=2):
        batch = {b"data": data, b"labels": [int(i) for i in rng.integers(0, 10, len(data))]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=protocol))

    for i in range(1, 6):
        write(f"data_batch_{i}", rng.integers(0, 256, (4, 3072), dtype=np.uint8))
    write("test_batch", rng.integers(0, 256, (4, 3072), dtype=np.uint8))
    assert b"_codecs" in (root / "test_batch").read_bytes()
    assert len(load_data(f"cifar10:{tmp_path}", 32).train) == 20
    write("test_batch", np.zeros((0, 3072), dtype=np.uint8), protocol=4)
    with pytest.raises(DataError, match="no images"):
        load_data(f"cifar10:{tmp_path}", 32)
    write("test_batch", rng.random((4, 3072)).astype(np.float32) * 255)
    with pytest.raises(DataError, match="uint8"):
        load_data(f"cifar10:{tmp_path}", 32)


@pytest.mark.slow
def test_an_interrupted_hyper_search_keeps_its_run_and_resumes(tmp_path):
    out, run_dir = tmp_path / "a0.safetensors", tmp_path / "hs"
    settings = dict(epochs=2, batch_size=16, image_size=8, run_dir=run_dir, progress=False)
    with pytest.raises(RunInterrupted, match="--resume"):
        hyper_search(
            "repopt_vgg_a0", "synthetic:32", out, overrides={"stop_after_steps": 1}, **settings
        )
    assert (run_dir / "last.state.pt").is_file() and not out.exists()
    summary = hyper_search("repopt_vgg_a0", "synthetic:32", out, resume=True, **settings)
    assert out.is_file() and summary["epochs"] == 2 and summary["run_dir"] == str(run_dir)


@pytest.mark.slow  # 14 commands on a trained run and its deploy folder
@pytest.mark.parametrize(
    "damaged, argv",
    [
        ("run/best.safetensors", ["eval", "{run}", "--data", "synthetic:32"]),
        ("run/config.json", ["eval", "{run}", "--data", "synthetic:32"]),
        ("run/last.state.pt", [*TRAIN, "--out", "{run}", "--resume"]),
        ("run/last.safetensors", [*TRAIN, "--out", "{run}", "--resume"]),
        ("deploy/fused.safetensors", ["eval", "{deploy}", "--data", "synthetic:32"]),
        ("deploy/model.onnx", ["eval", "{deploy}/model.onnx", "--data", "synthetic:32"]),
        ("a0.pth", [*TRAIN[:2], "repopt_vgg_a0", *TRAIN[3:], "--scales", "{a0}", "--out", "{x}"]),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_each_kind_of_corrupt_file_is_one_line(
    trained_run, tmp_path, capsys, damaged, argv, damage
):
    run, deploy = tmp_path / "run", tmp_path / "deploy"
    shutil.copytree(trained_run, run)
    assert main(["deploy", str(run), "--out", str(deploy), "--onnx"]) == 0
    torch.save({"stage0.scale_conv.weight": torch.ones(48)}, tmp_path / "a0.pth")
    path = tmp_path / damaged
    data = path.read_bytes()
    path.write_bytes(b"\x00garbage" * 64 if damage == "garbage" else data[: len(data) // 2])
    paths = {"run": run, "deploy": deploy, "a0": tmp_path / "a0.pth", "x": tmp_path / "x"}
    code, err = cli([arg.format(**paths) for arg in argv], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert str(path.name) in err.strip().splitlines()[-1]
