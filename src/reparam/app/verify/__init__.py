"""Equivalence checks: every re-parameterization compared with the module it replaces.

- :mod:`reparam.testing` (exported here): ``compare``, ``rel_err``, ``CheckResult``,
  ``randomize_batchnorm_``, ``fused_output_pairs``; pure torch, so any layer (and the tests)
  may use them;
- one module per re-parameterization kind: ``structural`` (RepVGG fusion), ``gradient`` (CSLA
  vs RepOptSGD / RepOptAdamW), ``depth`` (ReduceNet, VanillaNet fusion), ``deployment`` (ONNX
  Runtime vs torch);
- :mod:`reparam.app.verify.checks`: the registry ``CHECKS`` and ``run_checks``, behind
  ``reparam verify``.

The check modules import the whole library, so this package face imports only ``core``.
"""

from reparam.testing import CheckResult, compare, fused_output_pairs, randomize_batchnorm_, rel_err

__all__ = ["CheckResult", "compare", "fused_output_pairs", "randomize_batchnorm_", "rel_err"]
