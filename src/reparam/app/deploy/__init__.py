"""Deploy folders: ``reparam deploy`` as a function (fused model, ONNX checked in ONNX Runtime,
INT8), the PTQ comparison, QAT runs, and one predictor for run folders, fused folders and ONNX
files. The model-level parts are the library's :mod:`reparam.quant` and :mod:`reparam.saved`.

Fusion itself (``reparameterize``) is :mod:`reparam.fuse`; the weight and output statistics that
explain a PTQ result are :mod:`reparam.analysis.quant_stats`.
"""

from reparam.app.deploy.compare import compare_ptq
from reparam.app.deploy.pipeline import deploy, load_source
from reparam.app.deploy.predict import evaluate, open_model

__all__ = [
    "compare_ptq",
    "deploy",
    "evaluate",
    "load_source",
    "open_model",
]
