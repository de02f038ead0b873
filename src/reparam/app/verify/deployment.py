"""``reparam verify`` check for deployment: a fused model exported to ONNX, run in ONNX Runtime,
against torch."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from reparam.fuse import reparameterize
from reparam.models import create_model
from reparam.quant.onnx import ONNX_TOLERANCE, check_onnx_vs_torch, export_onnx
from reparam.testing import CheckResult, randomize_batchnorm_

__all__ = ["verify_onnx_vs_torch"]


def verify_onnx_vs_torch(tolerance: float = ONNX_TOLERANCE) -> CheckResult:
    """``reparam verify`` check: fused RepVGG-A0 (10 classes, random BN statistics) exported to
    ONNX; ORT vs torch at batch 3 (not the export batch), 32x32, float32."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = (
        randomize_batchnorm_(create_model("repvgg_a0", num_classes=10), generator).float().eval()
    )
    fused = reparameterize(model)
    images = torch.randn(3, 3, 32, 32, generator=generator)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(fused, Path(tmp) / "model.onnx", 32)
        return check_onnx_vs_torch(model, path, images, tolerance)
