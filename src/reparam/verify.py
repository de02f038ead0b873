"""Equivalence checks behind ``reparam verify`` (**contract**: one entry per check, each
``{"max_abs_err", "max_rel_err", "dtype", "passed"}``).

Each check is a function ``() -> CheckResult`` named in :data:`CHECKS` as ``"module:function"``
(imported lazily, so one family's failure to import does not hide the others). Relative error is
``max|a - b| / max|b|`` over all compared tensors.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

__all__ = ["CHECKS", "CheckResult", "compare", "run_checks"]

# check name -> "module:function" (add one line per check)
CHECKS: dict[str, str] = {
    "repvgg_deploy": "reparam.models.checks:verify_repvgg_deploy",
    "csla_vs_repopt_sgd": "reparam.optim.checks:verify_csla_vs_repopt_sgd",
    "csla_vs_repopt_adamw": "reparam.optim.checks:verify_csla_vs_repopt_adamw",
    "onnx_vs_torch": "reparam.deploy.onnx_export:verify_onnx_vs_torch",
    "reducenet_deploy": "reparam.models.reducenet:verify_reducenet_deploy",
    "vanillanet_deploy": "reparam.models.vanillanet:verify_vanillanet_deploy",
}


@dataclass
class CheckResult:
    max_abs_err: float
    max_rel_err: float
    dtype: str
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def compare(pairs: Iterable[tuple[Tensor, Tensor]], tolerance: float) -> CheckResult:
    """Compare ``(candidate, reference)`` tensor pairs; passed when ``max_rel_err <= tolerance``."""
    max_abs, max_ref, dtype = 0.0, 0.0, None
    for candidate, reference in pairs:
        dtype = dtype or str(reference.dtype).replace("torch.", "")
        max_abs = max(max_abs, (candidate.detach() - reference.detach()).abs().max().item())
        max_ref = max(max_ref, reference.detach().abs().max().item())
    if dtype is None:
        raise ValueError("compare needs at least one pair of tensors")
    rel = max_abs / max_ref if max_ref > 0 else max_abs
    finite = torch.isfinite(torch.tensor([max_abs, rel])).all().item()
    return CheckResult(max_abs, rel, dtype, bool(finite and rel <= tolerance))


def resolve(target: str) -> Callable[[], CheckResult]:
    module_name, function = target.split(":")
    return getattr(importlib.import_module(module_name), function)


def run_checks(names: Iterable[str] | None = None) -> dict[str, dict]:
    """Run the named checks (all by default) and return ``{name: result dict}``."""
    names = list(CHECKS) if names is None else list(names)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; known: {sorted(CHECKS)}")
    return {name: resolve(CHECKS[name])().to_dict() for name in names}
