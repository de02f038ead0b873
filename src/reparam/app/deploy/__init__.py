"""Deployment: fused folders, ONNX export checked in ONNX Runtime, INT8 PTQ, the PTQ comparison.

Fusion itself (``reparameterize``) is :mod:`reparam.fuse`; the weight and output statistics that
explain a PTQ result are :mod:`reparam.analysis.quant_stats`.
"""

from reparam.app.deploy.compare import compare_ptq
from reparam.app.deploy.pipeline import deploy, load_source
from reparam.app.deploy.predict import evaluate, open_model
from reparam.quant.onnx import check_onnx_vs_torch, export_onnx, open_session
from reparam.quant.ort import QuantSettings, quantize_onnx
from reparam.saved import build_deploy_model, fuse_for_deploy, load_fused, save_fused

__all__ = [
    "QuantSettings",
    "build_deploy_model",
    "check_onnx_vs_torch",
    "compare_ptq",
    "deploy",
    "evaluate",
    "export_onnx",
    "fuse_for_deploy",
    "load_fused",
    "load_source",
    "open_model",
    "open_session",
    "quantize_onnx",
    "save_fused",
]
