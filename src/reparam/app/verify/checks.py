"""The checks behind ``reparam verify`` (**contract**: one entry per check, each
``{"max_abs_err", "max_rel_err", "dtype", "passed"}``).

Each check is a function ``() -> CheckResult`` that builds its own float64 (or, for ONNX,
float32) models with random BN statistics; add one line to :data:`CHECKS` per new check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from reparam.app.verify.deployment import verify_onnx_vs_torch
from reparam.app.verify.depth import verify_reducenet_deploy, verify_vanillanet_deploy
from reparam.app.verify.gradient import (
    verify_csla_vs_repopt_adamw,
    verify_csla_vs_repopt_sgd,
    verify_ghostnet_csla_vs_repopt_sgd,
)
from reparam.app.verify.structural import (
    verify_ghostnet_deploy,
    verify_repvgg_deploy,
    verify_repvgg_se_deploy,
)
from reparam.testing import CheckResult

__all__ = ["CHECKS", "run_checks"]

CHECKS: dict[str, Callable[[], CheckResult]] = {
    "repvgg_deploy": verify_repvgg_deploy,
    "repvgg_se_deploy": verify_repvgg_se_deploy,
    "csla_vs_repopt_sgd": verify_csla_vs_repopt_sgd,
    "csla_vs_repopt_adamw": verify_csla_vs_repopt_adamw,
    "onnx_vs_torch": verify_onnx_vs_torch,
    "reducenet_deploy": verify_reducenet_deploy,
    "vanillanet_deploy": verify_vanillanet_deploy,
    "ghostnet_deploy": verify_ghostnet_deploy,
    "ghostnet_csla_vs_repopt_sgd": verify_ghostnet_csla_vs_repopt_sgd,
}


def run_checks(names: Iterable[str] | None = None) -> dict[str, dict]:
    """Run the named checks (all by default) and return ``{name: result dict}``."""
    names = list(CHECKS) if names is None else list(names)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
    return {name: CHECKS[name]().to_dict() for name in names}
