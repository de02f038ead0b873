"""The training engine end to end: run folder contents, CLI, non-finite loss, signals."""

import csv
import json
import os
import signal
import threading
import time

import pytest
import torch

from recount import recount
from reparam.app.cli import main
from reparam.app.train import TrainConfig, TrainingError, fit, load_model
from reparam.app.train import engine as engine_module
from reparam.app.train.recipe import RUN_INFO_KEYS
from reparam.files import load_state, load_weights


def test_run_folder_contents(tmp_path, tiny_config):
    config = tiny_config(ema=True, ema_decay=0.9)
    metrics = fit(config, progress=False)
    out = tmp_path / "run"
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "metrics.json",
        "log.csv",
        "last.safetensors",
        "last.state.pt",
        "best.safetensors",
    } <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    assert not any(n.endswith(".tmp") for n in names)

    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == "resnet_rs_tiny" and saved["num_classes"] == 10
    assert saved["image_size"] == 16 and saved["data"] == "synthetic:80"
    assert saved["model_kwargs"] == {} and saved["lr"] == pytest.approx(0.1 * 16 / 256)
    recipe = {k: v for k, v in saved.items() if k not in RUN_INFO_KEYS}
    assert TrainConfig.from_dict(recipe).to_dict() == recipe  # the full resolved recipe round-trips
    assert saved["class_names"] == [str(i) for i in range(10)]  # beside it, what the data gave
    assert saved["preprocessing"]["image_size"] == 16

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    for key in ("top1", "top1_ema", "epochs", "train_images_per_s", "seconds"):
        assert key in metrics
    assert metrics["epochs"] == 2 and metrics["steps"] == 8

    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [int(r["step"]) for r in rows] == [4, 8]

    state = load_state(out / "last.state.pt")  # weights_only=True
    assert state["global_step"] == 8 and state["epoch"] == 2
    raw = load_weights(out / "last.safetensors")
    ema = state["ema"]
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())

    model, cfg = load_model(out, weights="last")
    assert cfg["model"] == "resnet_rs_tiny" and not model.training
    assert torch.equal(model.state_dict()["fc.weight"], raw["fc.weight"])
    # the recorded figures are the saved weights' own, counted again from the files
    top1, val_loss = recount(model, saved)
    assert metrics["top1"] == top1 and metrics["val_loss"] == pytest.approx(val_loss, rel=1e-6)
    model.load_state_dict(ema)
    assert metrics["top1_ema"] == recount(model, saved)[0]


@pytest.mark.skipif(
    not torch.cpu._is_avx512_bf16_supported(), reason="the default is FP32 without native bf16"
)
def test_the_default_cpu_path_trains_a_32_px_run_in_bf16_channels_last(tmp_path, tiny_config):
    config = tiny_config(model="repopt_vgg_a0", image_size=32, device="cpu")
    assert (config.amp, config.channels_last) == (True, True)
    metrics = fit(config, progress=False)
    assert metrics["steps"] == 8
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["amp"], saved["channels_last"]) == (True, True)
    model, _ = load_model(tmp_path / "run", weights="last")
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    top1, val_loss = recount(model, saved)  # in bf16, channels-last, as the engine counted
    assert metrics["top1"] == top1 and metrics["val_loss"] == pytest.approx(val_loss, rel=1e-6)


def test_refuses_to_overwrite_a_run(tmp_path, tiny_config):
    metrics = fit(tiny_config(epochs=1), progress=False)
    assert (
        metrics["top1_ema"] is None
        and load_state(tmp_path / "run" / "last.state.pt")["ema"] is None
    )
    with pytest.raises(TrainingError, match="--resume"):
        fit(tiny_config(epochs=1), progress=False)


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path, monkeypatch, tiny_config):
    real_build = engine_module.build_model
    calls = {"n": 0}

    def poisoned(config, device, distributed=False):
        model = real_build(config, device, distributed)

        def hook(module, args, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] > 5:  # train steps 0..4 fine (epoch 1 = steps 0..3), step 5 NaN
                    return output * float("nan")
            return output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(engine_module, "build_model", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at step 5 \(epoch 2, batch 2\)"):
        fit(tiny_config(), progress=False)
    state = load_state(tmp_path / "run" / "last.state.pt")
    assert state["global_step"] == 4 and state["epoch"] == 1
    weights = load_weights(tmp_path / "run" / "last.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_sigterm_saves_and_returns(tmp_path, tiny_config):
    config = tiny_config(epochs=200)
    state_file = tmp_path / "run" / "last.state.pt"

    def killer():
        deadline = time.time() + 60
        while not state_file.exists() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=killer)
    thread.start()
    result = fit(config, progress=False)
    thread.join()
    assert result["interrupted"] and result["signal"] == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == previous
    state = load_state(state_file)
    assert state["global_step"] == result["global_step"] >= 4 and state["epoch"] < 200
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_cli_train_json_and_resume_flags(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "train",
        "--model",
        "resnet_rs_tiny",
        "--data",
        "synthetic:80",
        "--image-size",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--out",
        str(out),
        "--set",
        "crop_padding=0",
        "--ema",
        "--no-progress",
        "--json",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "top1_ema" in json.loads(printed[0])
    saved = json.loads((out / "config.json").read_text())
    assert saved["ema"] is True and saved["crop_padding"] == 0
    # a finished run refuses a second start; --resume of a finished run trains nothing more
    assert main(argv) == 2
    assert main(["train", "--out", str(out), "--resume", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] == 1


def test_cli_rejects_bad_override(tmp_path, capsys):
    assert main(["train", "--set", "nonsense=1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown config keys ['nonsense']" in capsys.readouterr().err
