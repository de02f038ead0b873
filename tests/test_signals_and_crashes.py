"""Signals at any point, non-finite runs, the FP32 channels-last crash path, failed starts and
Hyper-Search's hints: each stop says what exists and the next command works."""

from __future__ import annotations

import logging
import os
import shlex
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from reparam.app.cli import build_parser, main
from reparam.app.commands import train as train_command
from reparam.app.train import TrainConfig, fit
from reparam.app.train import engine as engine_module
from reparam.app.train.hypersearch import default_run_dir, default_scale_file
from reparam.errors import CheckpointError, TrainingError
from reparam.files import write_json

TRAIN = ["train", "--model", "resnet_rs_tiny", "--data", "synthetic:80", "--image-size", "16"]
TRAIN += ["--epochs", "2", "--batch-size", "16", "--set", "crop_padding=0", "--threads", "1"]
TRAIN += ["--no-progress"]
SEARCH = ["hypersearch", "--model", "repopt_vgg_a0", "--data", "synthetic:32", "--epochs", "1"]
SEARCH += ["--batch-size", "16", "--image-size", "8", "--threads", "1", "--no-progress"]


def signal_on_call(monkeypatch, method: str, signum: int, call: int = 1) -> None:
    """Make ``_Trainer.<method>`` send ``signum`` to this process on its ``call``-th call."""
    real, calls = getattr(engine_module._Trainer, method), {"n": 0}

    def patched(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signum)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(engine_module._Trainer, method, patched)


def last_evaluation(monkeypatch, signum: int, epochs: int = 2) -> None:
    """The signal arrives during the last epoch's evaluation (one evaluation per epoch)."""
    signal_on_call(monkeypatch, "_evaluate", signum, call=epochs)


# --- execution path: an explicit precision picks its layout --------------------------------------


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--no-amp"], (False, False)),
        (["--set", "amp=false"], (False, False)),
        (["--amp"], (True, True)),
        (["--no-amp", "--channels-last"], (False, True)),
        (["--amp", "--no-channels-last"], (True, False)),
    ],
)
def test_an_explicit_amp_sets_channels_last_with_it(monkeypatch, flags, expected):
    """On a CPU whose default is bf16 + channels-last, ``--no-amp`` must not keep channels-last
    (FP32 NHWC is the path that crashes in oneDNN)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    args = build_parser().parse_args(
        ["train", "--model", "repvgg_a0", "--image-size", "224", *flags]
    )
    config = train_command.build_config(args)
    assert (config.amp, config.channels_last) == expected


def test_fp32_channels_last_at_the_crash_sizes_is_named_in_a_warning():
    (warning,) = TrainConfig(
        image_size=128, device="cpu", amp=False, channels_last=True
    ).execution_warnings()
    assert "oneDNN#6035" in warning and "--no-channels-last" in warning
    assert (
        TrainConfig(image_size=64, device="cpu", amp=False, channels_last=True).execution_warnings()
        == []
    )
    assert TrainConfig(image_size=224, device="cpu", amp=False).execution_warnings() == []


def test_the_amp_warning_is_logged_once_per_run(tmp_path, caplog, tiny_config, monkeypatch):
    config = tiny_config(amp=True, channels_last=False, stop_after_steps=1)
    # no real step: a bf16 step at 16 px can hit the very oneDNN fault the warning is about
    monkeypatch.setattr(engine_module._Trainer, "_train_step", lambda self, x, y: (0.0, 0))
    with caplog.at_level(logging.WARNING):
        fit(config, progress=False)
    assert sum("amp at 16 px" in r.getMessage() for r in caplog.records) == 1


def test_a_start_that_crashed_is_started_again_by_the_same_command(tmp_path, monkeypatch):
    """A native crash in the first step (oneDNN) cleans nothing up; the folder it leaves holds
    no checkpoint, and the same command starts afresh there without --force."""
    out = tmp_path / "run"
    argv = [*TRAIN, "--epochs", "1", "--out", str(out)]

    def crash(self, images, labels):
        raise SystemExit(139)  # no cleanup code runs on this path either

    monkeypatch.setattr(engine_module._Trainer, "_train_step", crash)
    with pytest.raises(SystemExit):
        main(argv)
    assert {p.name.split(".")[0] for p in out.iterdir()} == {"config", "events"}  # no checkpoint
    monkeypatch.undo()
    assert main(argv) == 0 and (out / "metrics.json").is_file()
    assert main(argv) == 2  # a run with a checkpoint is never replaced without --force


def test_a_folder_with_a_foreign_config_json_is_not_taken_for_a_failed_start(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    write_json({"architectures": ["Bert"]}, out / "config.json")
    assert main([*TRAIN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "not a run folder" in err


# --- signals: at any point, evaluation included ------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_the_last_evaluation_stops_train_resumably(
    tmp_path, monkeypatch, capsys, signum
):
    out = tmp_path / "run"
    last_evaluation(monkeypatch, signum)
    assert main([*TRAIN, "--out", str(out)]) == 128 + signum
    err = capsys.readouterr().err
    hint = f"continue with: reparam train --out {out} --resume"
    assert f"stopped by {signum.name} at step 8 (after epoch 2)" in err and hint in err
    assert not (out / "metrics.json").exists()
    monkeypatch.undo()
    assert main(shlex.split(hint.split(": ", 1)[1])[1:]) == 0
    assert (out / "metrics.json").is_file()


def test_sigterm_before_any_checkpoint_says_to_start_again_with_the_same_command(
    tmp_path, monkeypatch, capsys
):
    """With loader workers a run saves at epoch ends only: stopped in its first epoch, it has
    nothing to resume, says so, and the same command starts it again."""
    argv = [*TRAIN, "--epochs", "1", "--workers", "1", "--out", str(tmp_path / "run")]
    signal_on_call(monkeypatch, "_train_step", signal.SIGTERM)
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert f"nothing to resume, start again with: {shlex.join(['reparam', *argv])}" in err
    assert "--resume" not in err
    monkeypatch.undo()
    assert main(argv) == 0


def test_a_signal_in_hypersearch_s_last_evaluation_gives_its_own_resume_command(
    tmp_path, monkeypatch, capsys
):
    out, run_dir = tmp_path / "a0.safetensors", tmp_path / "hs"
    argv = [*SEARCH, "--out", str(out), "--run-dir", str(run_dir)]
    last_evaluation(monkeypatch, signal.SIGTERM, epochs=1)
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert "reparam train" not in err and not out.exists()
    command = err.split("continue it with: ")[1].strip()
    assert command.startswith("reparam hypersearch --model repopt_vgg_a0 --data synthetic:32")
    assert command.endswith(f"--run-dir {run_dir} --out {out} --resume")
    monkeypatch.undo()
    assert main([*shlex.split(command)[1:], "--no-progress"]) == 0 and out.is_file()


def test_a_signal_in_the_demo_s_evaluation_stops_it_in_that_stage(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    demo = ["demo", "--out", str(out), "--data", "synthetic:32", "--image-size", "8"]
    demo += ["--batch-size", "16", "--epochs", "1", "--hs-epochs", "1", "--no-progress"]
    last_evaluation(monkeypatch, signal.SIGINT, epochs=1)
    assert main(demo) == 130
    err = capsys.readouterr().err
    assert "reparam demo: stage [1/6] (Hyper-Search for repopt_vgg_a0 on synthetic:32): " in err
    assert "hyper-search stopped by SIGINT" in err and "--resume" in err
    assert not (out / "repopt_vgg_a0").exists()


def test_sigterm_outside_training_stops_the_demo_in_its_stage(tmp_path, monkeypatch, capsys):
    """Outside training (loading, fusing, exporting) SIGTERM unwinds like Ctrl-C: exit 143."""
    from reparam.app import demo

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(demo, "hyper_search", terminated)
    previous = signal.getsignal(signal.SIGTERM)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 143
    assert "reparam demo: stopped by SIGTERM in stage [1/6]" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == previous


# --- non-finite runs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "good_steps, kept",
    [
        (0, r"loss is nan at step 0 .*no checkpoint had been written yet \(nothing to resume\)"),
        (
            5,
            r"loss is nan at step 5 .*checkpoint in .* \(step 4, 1 epoch\(s\) finished\) is intact",
        ),
    ],
)
def test_a_nan_loss_says_which_checkpoint_exists(monkeypatch, tiny_config, good_steps, kept):
    real_build, forwards = engine_module.build_model, {"n": 0}

    def poisoned(config, device, distributed=False):
        model = real_build(config, device, distributed)

        def hook(module, args, output):
            forwards["n"] += module.training
            return output * float("nan") if forwards["n"] > good_steps else output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(engine_module, "build_model", poisoned)
    with pytest.raises(TrainingError, match=kept):
        fit(tiny_config(), progress=False)


@pytest.mark.parametrize(
    "poison", ["weights", "optimizer", "ema"], ids=["weights", "optimizer", "ema"]
)
def test_resume_refuses_a_checkpoint_with_non_finite_tensors(tmp_path, tiny_config, poison, capsys):
    config = tiny_config(ema=True, stop_after_steps=2)
    fit(config, progress=False)
    out = Path(config.out)
    if poison == "weights":
        weights = load_file(str(out / "last.safetensors"))
        name = next(k for k, v in weights.items() if v.is_floating_point())
        weights[name] = torch.full_like(weights[name], float("inf"))
        save_file(weights, str(out / "last.safetensors"), metadata={"global_step": "2"})
        expected = f"last.safetensors:{name}"
    else:
        state = torch.load(out / "last.state.pt", weights_only=True)
        if poison == "optimizer":
            buffer = state["optimizer"]["state"][0]["momentum_buffer"]
            expected = "last.state.pt:optimizer.state.0.momentum_buffer"
        else:
            name = next(k for k, v in state["ema"].items() if v.is_floating_point())
            buffer, expected = state["ema"][name], f"last.state.pt:ema.{name}"
        buffer.fill_(float("nan"))
        torch.save(state, out / "last.state.pt")
    with pytest.raises(CheckpointError, match=r"refusing to resume, 1 tensor\(s\)") as caught:
        fit(tiny_config(ema=True, resume=True), progress=False)
    assert expected in str(caught.value)
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "NaN or inf" in capsys.readouterr().err


# --- Hyper-Search: flags it accepts, folders that do not collide --------------------------------


def test_hypersearch_names_its_own_flags(tmp_path, caplog, capsys):
    run_dir = tmp_path / "hs"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    argv = [*SEARCH, "--out", str(tmp_path / "a0.safetensors"), "--run-dir", str(run_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "choose another --run-dir" in err and "--out" not in err
    assert (run_dir / "notes.txt").read_text() == "mine"
    with caplog.at_level(logging.WARNING):
        assert main([*argv[:-1], str(tmp_path / "fresh")]) == 0  # repopt-hs warms up 5 epochs
    warning = next(r.getMessage() for r in caplog.records if "warmup_epochs" in r.getMessage())
    assert "--warmup-epochs" not in warning
    capsys.readouterr()
    elsewhere = ["--out", str(tmp_path / "b.safetensors"), "--run-dir", str(tmp_path / "elsewhere")]
    assert main([*SEARCH, *elsewhere, "--resume"]) == 2
    assert "elsewhere: no Hyper-Search run to resume there; pass the search's --run-dir" in (
        capsys.readouterr().err
    )


def test_default_hypersearch_outputs_differ_for_two_data_folders_of_one_name(tmp_path, monkeypatch):
    first, second = tmp_path / "a" / "data", tmp_path / "b" / "data"
    first.mkdir(parents=True)
    run_dirs = {default_run_dir("repopt_vgg_a0", f"folder:{p}") for p in (first, second)}
    scale_files = {default_scale_file("repopt_vgg_a0_hs", f"folder:{p}") for p in (first, second)}
    assert len(run_dirs) == len(scale_files) == 2
    assert all(p.name.startswith("hs-repopt_vgg_a0-folder-data-") for p in run_dirs)
    monkeypatch.chdir(tmp_path / "a")
    assert default_run_dir("repopt_vgg_a0", "folder:data") in run_dirs  # the same folder
    assert default_run_dir("repopt_vgg_a0", "synthetic:64").name == "hs-repopt_vgg_a0-synthetic-64"
    assert default_run_dir("repopt_vgg_a0", "digits").name == "hs-repopt_vgg_a0-digits"


def test_sigterm_while_deploying_exits_143_and_leaves_no_temp_folder(tmp_path, monkeypatch, capsys):
    """Every command unwinds on SIGTERM: the deploy folder's temp copy is removed."""
    from reparam.app.deploy import pipeline

    run, out = tmp_path / "run", tmp_path / "deployed"
    assert main([*TRAIN, "--epochs", "1", "--out", str(run)]) == 0
    real_save = pipeline.save_fused

    def save_then_terminated(*args, **kwargs):
        real_save(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(pipeline, "save_fused", save_then_terminated)
    assert main(["deploy", str(run), "--out", str(out)]) == 143
    assert "reparam deploy: stopped by SIGTERM" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["run"]
