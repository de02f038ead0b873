"""Annealed activation, lambda schedules, lambda in checkpoints, refusal to fuse below 1."""

from __future__ import annotations

import io
import logging

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reparam import FusionError, reparameterize
from reparam.files import load_weights, save_weights
from reparam.models import create_model
from reparam.models.annealed import (
    AnnealedActivation,
    LambdaSchedule,
    fusion_macs,
    has_annealing,
    set_lambda,
)

DT = torch.float64


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 1.0])
def test_relu_annealing_is_leaky_relu(lam):
    act = AnnealedActivation().double()
    set_lambda(act, lam)
    x = torch.randn(4, 3, 5, 5, dtype=DT)
    torch.testing.assert_close(act(x), F.leaky_relu(x, lam), rtol=0, atol=0)


def test_generic_activation_formula_and_identity_at_one():
    act = AnnealedActivation(nn.GELU()).double()
    x = torch.randn(64, dtype=DT)
    set_lambda(act, 0.3)
    expected = 0.7 * F.gelu(x) + 0.3 * x
    torch.testing.assert_close(act(x), expected, rtol=1e-15, atol=1e-15)
    set_lambda(act, 1.0)
    torch.testing.assert_close(act(x), x, rtol=0, atol=1e-15)


def test_never_in_place():
    act = AnnealedActivation()
    set_lambda(act, 0.5)
    x = torch.randn(2, 4, 3, 3)
    before = x.clone()
    y = act(x)
    assert torch.equal(x, before)
    assert y.data_ptr() != x.data_ptr()
    assert not torch.equal(y, x)  # negative entries were scaled


def test_lambda_is_a_buffer_that_survives_save_and_load(tmp_path):
    model = create_model("reducenet20", num_classes=10)
    assert has_annealing(model)
    assert set_lambda(model, 0.375) == 9  # one per block
    keys = [k for k in model.state_dict() if k.endswith(".lam")]
    assert len(keys) == 9
    # torch.save round trip (resume state) and safetensors weights
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = create_model("reducenet20", num_classes=10)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    save_weights(model.state_dict(), tmp_path / "w.safetensors")
    from_file = create_model("reducenet20", num_classes=10)
    from_file.load_state_dict(load_weights(tmp_path / "w.safetensors"))
    for m in (restored, from_file):
        values = {a.value for a in m.modules() if isinstance(a, AnnealedActivation)}
        assert values == {0.375}


def test_set_lambda_validates_and_plain_models_have_no_annealing():
    with pytest.raises(ValueError, match="lambda"):
        set_lambda(AnnealedActivation(), 1.5)
    assert not has_annealing(create_model("reducenet20", num_classes=10, plain=True))
    assert set_lambda(nn.Linear(2, 2), 1.0) == 0


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["linear", "cosine"]),
    per=st.sampled_from(["iteration", "epoch"]),
    fraction=st.floats(0.01, 1.0),
    epochs=st.integers(1, 40),
    steps_per_epoch=st.integers(1, 50),
    ragged=st.integers(0, 49),
)
def test_schedule_ends_at_exactly_one(kind, per, fraction, epochs, steps_per_epoch, ragged):
    total = epochs * steps_per_epoch - min(ragged, steps_per_epoch - 1)  # last epoch may be short
    schedule = LambdaSchedule(kind, fraction, per)
    values = [schedule.value(s, total, steps_per_epoch) for s in range(total + 3)]
    assert values[total - 1] == 1.0  # the last training step runs at exactly 1.0
    assert all(v == 1.0 for v in values[total - 1 :])
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a <= b for a, b in zip(values, values[1:]))
    units = total if per == "iteration" else -(-total // steps_per_epoch)
    if round(fraction * units) > 1:
        assert values[0] == 0.0
    # lambda reaches 1.0 no later than the end of the fraction
    end = max(1, round(fraction * units))
    last_annealing_step = end - 1 if per == "iteration" else (end - 1) * steps_per_epoch
    assert values[last_annealing_step] == 1.0


def test_schedule_shapes():
    linear = LambdaSchedule("linear", 0.5, "iteration")
    cosine = LambdaSchedule("cosine", 0.5, "iteration")
    assert [linear.value(s, 10) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert cosine.value(2, 10) == pytest.approx(0.5, abs=1e-15)
    assert cosine.value(1, 10) < linear.value(1, 10)
    per_epoch = LambdaSchedule("linear", 1.0, "epoch")  # constant within an epoch
    assert [per_epoch.value(s, 9, 3) for s in range(9)] == [0.0] * 3 + [0.5] * 3 + [1.0] * 3


@pytest.mark.parametrize(
    "kwargs", [{"kind": "exp"}, {"per": "batch"}, {"fraction": 0.0}, {"fraction": 1.5}]
)
def test_schedule_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        LambdaSchedule(**kwargs)


def test_schedule_needs_steps_per_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        LambdaSchedule(per="epoch").value(0, 10)


def test_fusing_below_one_is_refused_and_names_the_layer():
    model = create_model("reducenet20", num_classes=10).eval()
    set_lambda(model, 0.999)
    with pytest.raises(FusionError, match=r"stages\.0\.0\.act.*lambda = 0\.999"):
        reparameterize(model)
    with pytest.raises(FusionError):
        AnnealedActivation().fuse()
    set_lambda(model, 1.0)
    reparameterize(model)  # fine now


def test_fusion_macs_reports_and_warns(caplog):
    wide = create_model("reducenet20", num_classes=10, expansion=2.0)
    report = fusion_macs(wide, 32)
    assert report["macs_after"] < report["macs_before"]
    assert report["ratio"] == report["macs_after"] / report["macs_before"]
    narrow = create_model("reducenet20", num_classes=10, expansion=0.25)
    with caplog.at_level(logging.WARNING):
        report = fusion_macs(narrow, 32)
    assert report["macs_after"] > report["macs_before"]
    assert any("increases compute" in r.getMessage() for r in caplog.records)
    assert {a.value for a in narrow.modules() if isinstance(a, AnnealedActivation)} == {0.0}
