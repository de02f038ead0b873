"""Deployment: fuse (``reparameterize``), fused folders, ONNX, INT8 PTQ, quantization stats."""

from .export import DeployError, build_deploy_model, fuse_for_deploy, load_fused, save_fused
from .fuse import FusionError, reparameterize
from .onnx_export import check_onnx_vs_torch, export_onnx, open_session
from .pipeline import deploy, load_source
from .predict import evaluate, open_model
from .quant_stats import layer_stats, weight_stats
from .quantize import QuantSettings, quantize_onnx

__all__ = [
    "DeployError",
    "FusionError",
    "QuantSettings",
    "build_deploy_model",
    "check_onnx_vs_torch",
    "deploy",
    "evaluate",
    "export_onnx",
    "fuse_for_deploy",
    "layer_stats",
    "load_fused",
    "load_source",
    "open_model",
    "open_session",
    "quantize_onnx",
    "reparameterize",
    "save_fused",
    "weight_stats",
]
