"""RepOptSGD: SGD with a constant per-element gradient mask (RepOptimizer, arXiv 2205.15242)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from reparam.compat import sgd_update_
from reparam.optim.base import MaskedOptimizer

__all__ = ["RepOptSGD"]


class RepOptSGD(MaskedOptimizer):
    """SGD on the target model that equals SGD on the imaginary CSLA model, exactly.

    Per step, for every parameter, block by block (:mod:`reparam.optim.blocks`):

        grad = M * grad           (M = grad mult, p = 2; in place; skipped without a mask)
        d = grad + weight_decay * W  (weight decay NOT multiplied)
        buf = momentum * buf + (1 - dampening) * d   (buf = d on the first step)
        d = d + momentum * buf  if nesterov  else  buf
        W = W - lr * d

    The last four lines are torch's fused SGD kernel (``torch._fused_sgd_``, what
    ``torch.optim.SGD(fused=True)`` runs; :func:`reparam.compat.sgd_update_` has the version check
    and the public fallback), one pass over each block: with unit masks the weights
    equal ``torch.optim.SGD(fused=True)``'s bit for bit (torch's default for-loop SGD, like the
    fallback, rounds as the kernel's SIMD lanes do; the kernel's element-by-element tail of each
    tensor rounds weight decay and dampening products on their own: an ulp now and then).
    **Contract:** ``step()`` leaves ``M * grad`` in ``.grad``: read or clip gradients before the
    step. This order is what makes the target's trajectory equal the CSLA model's (float64
    relative error ~1e-16 per step). Anything that rescales gradients per tensor before the step (gradient clipping by
    norm, LARS/LAMB trust ratios) breaks the equivalence: the imaginary model would clip or scale
    different tensors.

    Forms (**contract**): ``RepOptSGD(model, lr, ...)`` takes masks from ``grad_mults(model)``;
    ``RepOptSGD(params_or_groups, lr, ..., grad_mults={param: mask})`` is the low-level form.
    ``factor_masks=False`` stores full-size masks (see :mod:`reparam.optim.base`).
    """

    power = 2
    scratch_buffers = 0  # the mask is applied in the gradients, the rest inside the kernel

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[Any],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        grad_mults: dict[nn.Parameter, Tensor] | None = None,
        factor_masks: bool = True,
    ):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"RepOptSGD: lr={lr}, momentum={momentum}, weight_decay={weight_decay} must be >= 0"
            )
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("RepOptSGD: nesterov needs momentum > 0 and dampening = 0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
        )
        super().__init__(model_or_params, defaults, grad_mults, factor_masks)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = self._closure_loss(closure)
        for group, plan, params, grads, states in self._groups():
            lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
            fresh = [momentum and s.get("momentum_buffer") is None for s in states]
            for state, param, new in zip(states, params, fresh):
                if new:
                    state["momentum_buffer"] = torch.empty_like(param)
            chunks = plan.chunks
            param_chunks, grad_chunks = chunks(params), chunks(grads)
            buf_chunks = chunks([s["momentum_buffer"] for s in states]) if momentum else []
            fresh_chunks = plan.per_chunk(fresh)
            settings = dict(
                weight_decay=weight_decay,
                momentum=momentum,
                lr=lr,
                dampening=group["dampening"],
                nesterov=group["nesterov"],
            )
            for block in plan.blocks:
                start, stop = block.start, block.stop
                if block.masked:
                    block.mask_(grad_chunks[start:stop])
                for first in (False, True):  # one kernel call per kind of momentum buffer
                    chosen = [j for j in range(start, stop) if bool(fresh_chunks[j]) == first]
                    if chosen:
                        sgd_update_(
                            [param_chunks[j] for j in chosen],
                            [grad_chunks[j] for j in chosen],
                            [buf_chunks[j] for j in chosen] if momentum else [],
                            is_first_step=first,
                            **settings,
                        )
        return loss
