"""Helpers for equivalence checks (used by ``reparam verify`` and the tests)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["fused_output_pairs", "randomize_batchnorm_", "rel_err"]


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
    ``(batch, size)``: the inputs of :func:`reparam.verify.compare`."""
    pairs = []
    for batch, size in shapes:
        x = torch.randn(batch, 3, size, size, dtype=torch.float64, generator=generator)
        pairs.append((fused.forward_features(x), model.forward_features(x)))
        pairs.append((fused(x), model(x)))
    return pairs


def rel_err(candidate: Tensor, reference: Tensor) -> float:
    """``max|candidate - reference| / max|reference|`` (0 when both are all zeros)."""
    return ((candidate - reference).abs().max() / reference.abs().max().clamp_min(1e-300)).item()
