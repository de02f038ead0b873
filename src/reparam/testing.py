"""The numerics of every equivalence check: relative error, :class:`CheckResult`, random BN
statistics and fused-vs-reference output pairs (pure torch; used by the checks, by deployment's
ONNX check and by the tests).

Relative error is ``max|candidate - reference| / max|reference|`` over all compared tensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = ["CheckResult", "compare", "fused_output_pairs", "randomize_batchnorm_", "rel_err"]


@dataclass
class CheckResult:
    """One comparison. ``finite`` is false when either side held a NaN or an infinity: then the
    errors are ``None`` (JSON ``null``) and the check has failed."""

    max_abs_err: float | None
    max_rel_err: float | None
    dtype: str
    passed: bool

    @property
    def finite(self) -> bool:
        return self.max_abs_err is not None

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """``"max rel err 1.2e-16 (abs 3.4e-15)"``, or what was not finite."""
        if not self.finite:
            return "non-finite values (NaN or inf) in the compared outputs"
        return f"max rel err {self.max_rel_err:.2e} (abs {self.max_abs_err:.2e})"


def compare(pairs: Iterable[tuple[Tensor, Tensor]], tolerance: float) -> CheckResult:
    """Compare ``(candidate, reference)`` tensor pairs; passed when every value on both sides is
    finite and ``max_rel_err <= tolerance``."""
    max_abs, max_ref, dtype, finite = 0.0, 0.0, None, True
    for candidate, reference in pairs:
        candidate, reference = candidate.detach(), reference.detach()
        dtype = dtype or str(reference.dtype).replace("torch.", "")
        finite = finite and bool(
            torch.isfinite(candidate).all() and torch.isfinite(reference).all()
        )
        max_abs = max(max_abs, (candidate - reference).abs().max().item())
        max_ref = max(max_ref, reference.abs().max().item())
    if dtype is None:
        raise ValueError("compare needs at least one pair of tensors")
    if not finite:
        return CheckResult(None, None, dtype, passed=False)
    rel = max_abs / max_ref if max_ref > 0 else max_abs
    return CheckResult(max_abs, rel, dtype, rel <= tolerance)


def randomize_batchnorm_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters, in place.

    ``mean ~ U(-1, 1)``, ``var ~ U(0.5, 2)``, ``gamma ~ U(0.5, 1.5)``, ``beta ~ U(-1, 1)``: a freshly
    initialised BN (mean 0, var 1, gamma 1, beta 0) would hide folding mistakes.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for tensor, low, high in (
                (module.running_mean, -1.0, 1.0),
                (module.running_var, 0.5, 2.0),
                (module.weight, 0.5, 1.5),
                (module.bias, -1.0, 1.0),
            ):
                if tensor is not None:
                    values = torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
                    tensor.data.copy_(values * (high - low) + low)
    return model


@torch.no_grad()
def fused_output_pairs(
    model: nn.Module,
    fused: nn.Module,
    shapes: tuple[tuple[int, int], ...],
    generator: torch.Generator | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """``(fused, model)`` output pairs, features and logits, on random float64 images of each
    ``(batch, size)``: the inputs of :func:`compare`."""
    pairs = []
    for batch, size in shapes:
        x = torch.randn(batch, 3, size, size, dtype=torch.float64, generator=generator)
        pairs.append((fused.forward_features(x), model.forward_features(x)))
        pairs.append((fused(x), model(x)))
    return pairs


def rel_err(candidate: Tensor, reference: Tensor) -> float:
    """``max|candidate - reference| / max|reference|`` (0 when both are all zeros)."""
    return ((candidate - reference).abs().max() / reference.abs().max().clamp_min(1e-300)).item()
