"""Weight / quantization statistics: exact values on constructed kernels, invariances (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reparam.analysis.quant_stats import (
    fake_quant_int8,
    layer_stats,
    output_metrics,
    sqnr_db,
    weight_stats,
)

SCALE_FREE = (
    "max_over_std",
    "excess_kurtosis",
    "channel_absmax_spread",
    "centre_over_surround_std",
    "sqnr_per_tensor_db",
    "sqnr_per_channel_db",
)


def test_fake_quant_is_exact_on_the_int8_grid():
    """Weights already on the grid ``k * absmax / 127`` come back unchanged; SQNR is inf."""
    steps = torch.arange(-127, 128, dtype=torch.float64).reshape(5, 51, 1, 1) * (0.3 / 127)
    assert torch.equal(fake_quant_int8(steps, per_channel=False), steps)
    assert sqnr_db(steps, fake_quant_int8(steps, per_channel=False)) == math.inf


def test_fake_quant_error_is_at_most_half_a_step():
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    for per_channel in (False, True):
        q = fake_quant_int8(w, per_channel)
        absmax = w.abs().reshape(8, -1).amax(1) if per_channel else w.abs().max().expand(8)
        step = (absmax / 127).reshape(8, 1, 1, 1)
        assert ((w - q).abs() <= step / 2 + 1e-15).all()


def test_known_values_on_a_constructed_kernel():
    """Output channel 0 = a +-1 checkerboard (5 x +1, 4 x -1 per 3x3), channel 1 = 0.25 times it."""
    sign = torch.tensor(
        [[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]], dtype=torch.float64
    )
    w = torch.stack([sign.expand(2, 3, 3), 0.25 * sign.expand(2, 3, 3)])  # [2, 2, 3, 3]
    s = layer_stats(w)
    assert s["absmax"] == 1.0
    assert s["channel_absmax_spread"] == 4.0
    mean, mean_square = (2 * 1.0 + 2 * 0.25) / 36, (18 * 1.0 + 18 * 0.0625) / 36
    assert s["std"] == pytest.approx(math.sqrt(mean_square - mean**2), rel=1e-12)
    assert s["centre_std"] == pytest.approx(0.375, rel=1e-12)  # centre taps {1, 1, .25, .25}
    assert s["sqnr_per_channel_db"] == math.inf  # every value is on its channel's grid
    # 9 x +1 and 9 x -1: a symmetric two-point distribution has excess kurtosis exactly -2
    balanced = layer_stats(sign.expand(1, 1, 3, 3) * torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
    assert balanced["excess_kurtosis"] == pytest.approx(-2.0, rel=1e-12)


def test_identity_heavy_centre_tap_is_detected():
    """A RepVGG-like kernel (small 3x3 + large Dirac centre) has a high centre/surround ratio,
    heavy tails and a lower per-tensor SQNR than the same kernel without the identity."""
    g = torch.Generator().manual_seed(0)
    w = 0.02 * torch.randn(16, 16, 3, 3, generator=g, dtype=torch.float64)
    with_identity = w.clone()
    with_identity[torch.arange(16), torch.arange(16), 1, 1] += 1.0
    plain, rep = layer_stats(w), layer_stats(with_identity)
    assert plain["centre_over_surround_std"] == pytest.approx(1.0, abs=0.2)
    assert rep["centre_over_surround_std"] > 10
    assert rep["max_over_std"] > 3 * plain["max_over_std"]
    assert rep["excess_kurtosis"] > 50
    assert rep["sqnr_per_tensor_db"] < plain["sqnr_per_tensor_db"] - 10


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_scale_free_figures_ignore_a_global_scale(scale, seed):
    """Multiplying every weight by a constant changes no scale-free figure (weight std alone
    does not decide INT8 accuracy)."""
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a, b = layer_stats(w), layer_stats(scale * w)
    for key in SCALE_FREE:
        assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-9), key
    assert b["std"] == pytest.approx(scale * a["std"], rel=1e-12)


def test_per_channel_never_worse_than_per_tensor():
    w = torch.randn(32, 8, 3, 3, dtype=torch.float64) * torch.logspace(-2, 0, 32).reshape(
        32, 1, 1, 1
    )
    s = layer_stats(w)
    assert s["sqnr_per_channel_db"] > s["sqnr_per_tensor_db"] + 3


def test_weight_stats_lists_every_conv_and_linear():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4, 2)
    )
    stats = weight_stats(model)
    assert [s["name"] for s in stats] == ["0", "2", "4"]
    assert [s["kind"] for s in stats] == ["Conv2d", "Conv2d", "Linear"]
    assert stats[1]["centre_std"] is None and stats[2]["centre_std"] is None


def test_output_metrics():
    reference = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    quantized = np.array([[2.0, 1.0], [0.0, 3.0], [0.0, 1.0], [0.0, 1.0]])
    labels = np.array([0, 1, 1, 1])
    m = output_metrics(reference, quantized, labels)
    assert m["top1_fp32"] == 0.75 and m["top1_int8"] == 1.0 and m["top1_agreement"] == 0.75
    assert m["output_sqnr_db"] == pytest.approx(10 * math.log10(16.0 / 2.0), rel=1e-12)
    assert m["n_images"] == 4
