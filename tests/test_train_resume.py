"""Kill-and-resume equals an uninterrupted run, bit for bit (CPU, fixed seed)."""

import csv

import pytest
import torch

from reparam.app.train import TrainConfig, fit
from reparam.files import CheckpointError, load_state, load_weights

# every RNG consumer on: RandAugment + padded crop + flip (python/numpy/torch RNG), dropout,
# stochastic depth (torch RNG), EMA, warmup + cosine, momentum
RECIPE = dict(
    model="resnet_rs_tiny",
    data="synthetic:80",
    image_size=16,
    epochs=3,
    batch_size=16,
    randaugment="rand-m9-n2-mmax10",
    hflip=True,
    crop_padding=2,
    drop_rate=0.25,
    drop_path_rate=0.2,
    ema=True,
    ema_decay=0.9,
    warmup_epochs=1.0,
    workers=0,
    threads=1,
    seed=7,
)


def run_folder_state(out):
    weights = load_weights(out / "last.safetensors")
    state = load_state(out / "last.state.pt")
    rows = list(csv.DictReader((out / "log.csv").open()))
    for row in rows:
        del row["seconds"], row["train_images_per_s"]
    return weights, state, rows


def assert_same_run(a, b):
    (wa, sa, ra), (wb, sb, rb) = a, b
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(sa["ema"][k], sb["ema"][k]) for k in sa["ema"])
    opt_a, opt_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    assert all(torch.equal(opt_a[i]["momentum_buffer"], opt_b[i]["momentum_buffer"]) for i in opt_a)
    assert ra == rb


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "full"
    fit(TrainConfig(**RECIPE, out=str(out)), progress=False)
    return run_folder_state(out)


@pytest.mark.parametrize("stops", [(6, 3), (4,)], ids=["mid-epoch-twice", "epoch-end"])
def test_interrupted_then_resumed_is_bit_identical(tmp_path, uninterrupted, stops):
    out = tmp_path / "run"
    for index, budget in enumerate(stops):
        result = fit(
            TrainConfig(**RECIPE, out=str(out), resume=index > 0, stop_after_steps=budget),
            progress=False,
        )
        assert result["interrupted"]
    assert load_state(out / "last.state.pt")["global_step"] == sum(stops)
    fit(TrainConfig(**RECIPE, out=str(out), resume=True), progress=False)
    assert_same_run(run_folder_state(out), uninterrupted)


def test_resume_refuses_a_changed_recipe(tmp_path):
    out = tmp_path / "run"
    fit(TrainConfig(**RECIPE, out=str(out), stop_after_steps=2), progress=False)
    changed = dict(RECIPE, lr=0.5)
    with pytest.raises(CheckpointError, match="lr"):
        fit(TrainConfig(**changed, out=str(out), resume=True), progress=False)


def test_resume_detects_weights_from_another_step(tmp_path):
    out = tmp_path / "run"
    fit(TrainConfig(**RECIPE, out=str(out), stop_after_steps=2), progress=False)
    first = (out / "last.safetensors").read_bytes()
    fit(TrainConfig(**RECIPE, out=str(out), resume=True, stop_after_steps=1), progress=False)
    (out / "last.safetensors").write_bytes(first)  # as if killed between the two renames
    with pytest.raises(CheckpointError, match="differ"):
        fit(TrainConfig(**RECIPE, out=str(out), resume=True), progress=False)


@pytest.mark.slow  # loader worker processes
def test_with_loader_workers_a_mid_epoch_stop_resumes_at_the_epoch_boundary(tmp_path):
    """Worker processes' augmentation cannot be resumed mid-epoch: the run keeps its last
    finished epoch, says so, and the resumed run equals an uninterrupted one."""
    recipe = {**RECIPE, "epochs": 2, "workers": 1}
    fit(TrainConfig(**recipe, out=str(tmp_path / "full")), progress=False)
    out = tmp_path / "stopped"
    result = fit(TrainConfig(**recipe, out=str(out), stop_after_steps=7), progress=False)
    assert "kept the checkpoint of epoch 1" in result["stopped"]  # stopped in epoch 2, batch 3
    assert load_state(out / "last.state.pt")["global_step"] == 4  # the end of epoch 1
    fit(TrainConfig(**recipe, out=str(out), resume=True), progress=False)
    assert_same_run(run_folder_state(out), run_folder_state(tmp_path / "full"))
