"""Equivalence checks behind ``reparam verify``: every re-parameterization compared with the
module it replaces, one module per kind: ``structural`` (RepVGG fusion), ``gradient`` (CSLA vs
RepOptSGD / RepOptAdamW), ``depth`` (ReduceNet, VanillaNet fusion), ``deployment`` (ONNX Runtime
vs torch); :mod:`reparam.app.verify.checks` holds the registry ``CHECKS`` and ``run_checks``.
Their numerics (``compare``, ``rel_err``, random BN statistics) are the library's
:mod:`reparam.testing`.
"""

from reparam.app.verify.checks import CHECKS, run_checks

__all__ = ["CHECKS", "run_checks"]
