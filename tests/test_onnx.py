"""ONNX export: ORT FP32 matches torch on every model family; dynamic batch; clear errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import reparam
from reparam.app.verify.checks import CHECKS
from reparam.app.verify.deployment import verify_onnx_vs_torch
from reparam.errors import DeployError
from reparam.quant.onnx import (
    ONNX_TOLERANCE,
    check_onnx_vs_torch,
    export_onnx,
    input_shape,
    open_session,
    run_session,
)
from reparam.testing import randomize_batchnorm_

# one small model per family (a new family makes test_every_family_is_covered fail)
FAMILY_MODELS = {
    "repvgg": "repvgg_a0",
    "vgg": "vgg_a0",
    "repopt_vgg": "repopt_vgg_a0",
    "reducenet": "reducenet20",
    "vanillanet": "vanillanet_5",
    "resnet_rs": "resnet_rs_tiny",
    "repghostnet": "repghostnet_0_5x",
    "repopt_ghostnet": "repopt_ghostnet_0_5x",
}


def family(name: str) -> str:
    """``repvgg_b1g2`` -> ``repvgg``, ``reducenet18_imagenet`` -> ``reducenet``,
    ``resnet_rs_tiny`` -> ``resnet_rs``."""
    prefix = re.split(r"\d", name, maxsplit=1)[0]
    return re.sub(r"_(tiny|small|base|large|[a-z])$", "", prefix).rstrip("_")


def test_every_family_is_covered():
    families = {family(name) for name in reparam.list_models()}
    assert families <= set(FAMILY_MODELS), f"add a model for {families - set(FAMILY_MODELS)}"


@pytest.fixture(scope="module")
def vgg_onnx(tmp_path_factory):
    model = randomize_batchnorm_(reparam.create_model("repvgg_a0", num_classes=10)).eval()
    fused = reparam.reparameterize(model)
    return model, export_onnx(fused, tmp_path_factory.mktemp("onnx") / "m.onnx", 32)


@pytest.mark.slow
@pytest.mark.parametrize("family_name", sorted(FAMILY_MODELS))
def test_onnx_matches_torch_every_family(family_name, tmp_path):
    """Export the fused model; ORT output vs the *unfused* torch model, float32, batch 3 != 2
    (the export batch): relative error within 1e-4."""
    name = FAMILY_MODELS[family_name]
    model = reparam.prepare_for_deploy(
        randomize_batchnorm_(reparam.create_model(name, num_classes=10))
    )
    path = export_onnx(reparam.reparameterize(model), tmp_path / "m.onnx", 32)
    result = check_onnx_vs_torch(model, path, torch.randn(3, 3, 32, 32))
    assert result.passed and result.max_rel_err <= ONNX_TOLERANCE, result


@pytest.mark.slow
def test_dynamic_batch_and_metadata(vgg_onnx):
    import onnx

    model, path = vgg_onnx
    session = open_session(path)
    assert input_shape(session) == (3, 32, 32)
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(x).numpy()
        out = run_session(session, x)
        assert out.shape == (batch, 10)
        np.testing.assert_allclose(
            out, expected, rtol=0, atol=ONNX_TOLERANCE * np.abs(expected).max()
        )
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["image_size"] == "32"


@pytest.mark.slow
def test_wrong_input_size_is_a_clear_error(vgg_onnx):
    session = open_session(vgg_onnx[1])
    with pytest.raises(DeployError, match=r"expects inputs \[N, 3, 32, 32\].*prepared at 32 px"):
        run_session(session, np.zeros((2, 3, 48, 48), np.float32))


@pytest.mark.slow
def test_corrupted_or_missing_onnx_is_a_clear_error(vgg_onnx, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(vgg_onnx[1].read_bytes()[:200])
    with pytest.raises(DeployError, match="not a loadable ONNX model"):
        open_session(bad)
    with pytest.raises(DeployError, match="not found"):
        open_session(tmp_path / "missing.onnx")


def test_verify_registers_onnx_check():
    assert CHECKS["onnx_vs_torch"] is verify_onnx_vs_torch
