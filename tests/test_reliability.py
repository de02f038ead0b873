"""Faults and bad input: nothing silently wrong, nothing lost, one clear line."""

from __future__ import annotations

import json

import pytest
import torch

from reparam.verify import compare


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
