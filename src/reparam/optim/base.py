"""Shared machinery of the RepOptimizers: constructor forms, mask storage, state round trip.

Masks live in the optimizer state (``state[p]["grad_mult"]``), so ``state_dict`` carries them
and ``load_state_dict`` restores them; a loaded mask that differs from the one this optimizer
was built with (other scales) is an error, and a missing one is rebuilt from the constructor's.
A parameter that was given a mask and has none at step time is an error, never a plain step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .masks import param_grad_mults

__all__ = ["MaskedOptimizer"]

MASK = "grad_mult"


class MaskedOptimizer(Optimizer):
    """Base class: ``(model)`` or ``(params, grad_mults={param: mask})``; see module docstring."""

    power: int = 2

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[Any],
        defaults: dict[str, Any],
        grad_mults: dict[nn.Parameter, Tensor] | None,
    ):
        name = type(self).__name__
        if isinstance(model_or_params, nn.Module):
            if grad_mults is not None:
                raise ValueError(f"{name}: grad_mults= goes with the (params, grad_mults=) form")
            grad_mults = param_grad_mults(model_or_params, self.power)
            if not grad_mults:
                raise ValueError(
                    f"{name}: {type(model_or_params).__name__} has no CSLA layers (no grad mults); "
                    "use a plain torch optimizer, or describe its layers with reparam.csla"
                )
            params: Iterable[Any] = model_or_params.parameters()
        else:
            params, grad_mults = model_or_params, dict(grad_mults or {})
            named = [key for key in grad_mults if not isinstance(key, Tensor)]
            if named:
                raise ValueError(
                    f"{name}: grad_mults= needs {{parameter: mask}}, got keys like {named[0]!r}; "
                    "reparam.optim.grad_mults(model) keys masks by name (for inspection), "
                    "reparam.optim.param_grad_mults(model) by parameter, or pass the model itself"
                )
        super().__init__(params, defaults)
        owned = {id(p) for group in self.param_groups for p in group["params"]}
        foreign = [tuple(p.shape) for p in grad_mults if id(p) not in owned]
        if foreign:
            raise ValueError(
                f"{name}: {len(foreign)} grad mult(s) belong to parameters this optimizer does not "
                f"train (shapes {foreign[:5]}); were the parameters replaced by a wrapper after "
                "the masks were built?"
            )
        for param, mask in grad_mults.items():
            if tuple(mask.shape) != tuple(param.shape):
                raise ValueError(
                    f"{name}: grad mult of shape {tuple(mask.shape)} for a parameter of shape "
                    f"{tuple(param.shape)}"
                )
            if not torch.isfinite(mask).all():
                raise ValueError(f"{name}: grad mult of a {tuple(param.shape)} param has NaN/inf")
            self.state[param][MASK] = mask.detach().to(param.device, param.dtype).clone()
        self._masked_ids = {id(p) for p in grad_mults}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does, then check masks: loaded ones must equal this optimizer's (same
        scales); missing ones are rebuilt from the constructor's; new ones are adopted."""
        current = {
            p: self.state[p][MASK]
            for group in self.param_groups
            for p in group["params"]
            if id(p) in self._masked_ids
        }
        super().load_state_dict(state_dict)
        for param, mask in current.items():
            loaded = self.state[param].get(MASK)
            if loaded is None:
                self.state[param][MASK] = mask
            elif loaded.shape != mask.shape or not torch.allclose(loaded, mask, rtol=1e-6, atol=0):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: the saved grad mult of a "
                    f"{tuple(param.shape)} parameter differs from this optimizer's: the checkpoint "
                    "was trained with other scales"
                )
        self._masked_ids |= {id(p) for p, s in self.state.items() if MASK in s}

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[dict], int]:
        """``(params, grads, states, n)`` of the params with a grad, the ``n`` masked ones first."""
        masked: list[tuple[Tensor, Tensor, dict]] = []
        plain: list[tuple[Tensor, Tensor, dict]] = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if MASK in state:
                masked.append((p, p.grad, state))
            elif id(p) in self._masked_ids:
                raise RuntimeError(
                    f"{type(self).__name__}: a {tuple(p.shape)} parameter lost its grad mult "
                    "(optimizer state cleared?); refusing a plain step"
                )
            else:
                plain.append((p, p.grad, state))
        rows = masked + plain
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], len(masked)

    @staticmethod
    def _masks(states: list[dict], n: int) -> list[Tensor]:
        return [s[MASK] for s in states[:n]]
