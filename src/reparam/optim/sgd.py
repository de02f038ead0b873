"""RepOptSGD: SGD with a constant per-element gradient mask (RepOptimizer, arXiv 2205.15242)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .base import MaskedOptimizer

__all__ = ["RepOptSGD", "cache_blocks"]

# multi-tensor updates run over blocks of about this many bytes (a few MiB: the L2/L3 share of
# one core), so the four passes of the momentum update hit cache instead of memory
CACHE_BLOCK_BYTES = 4 << 20


class RepOptSGD(MaskedOptimizer):
    """SGD on the target model that equals SGD on the imaginary CSLA model, exactly.

    Per step, for every parameter (multi-tensor ``torch._foreach_*`` ops, no per-parameter math):

        d = grad * M            (M = grad mult, p = 2; 1 for parameters without one)
        d = d + weight_decay * W  (weight decay NOT multiplied)
        buf = momentum * buf + (1 - dampening) * d   (buf = d on the first step)
        d = d + momentum * buf  if nesterov  else  buf
        W = W - lr * d

    This order is what makes the target's trajectory equal the CSLA model's (float64 relative
    error ~1e-16 per step). Anything that rescales gradients per tensor before the step (gradient
    clipping by norm, LARS/LAMB trust ratios) breaks the equivalence: the imaginary model would
    clip or scale different tensors.

    Forms (**contract**): ``RepOptSGD(model, lr, ...)`` takes masks from ``grad_mults(model)``;
    ``RepOptSGD(params_or_groups, lr, ..., grad_mults={param: mask})`` is the low-level form.
    """

    power = 2

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[Any],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        grad_mults: dict[nn.Parameter, Tensor] | None = None,
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
        super().__init__(model_or_params, defaults, grad_mults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states, n = self._gather(group)
            if not params:
                continue
            lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
            bufs = [s.get("momentum_buffer") for s in states] if momentum else []
            if momentum and not group["nesterov"] and all(b is not None for b in bufs):
                self._in_place_momentum_step(params, grads, states, bufs, n, group)
                continue
            d = grads
            if n:
                d = list(torch._foreach_mul(grads[:n], self._masks(states, n))) + grads[n:]
            if weight_decay:
                d = torch._foreach_add(d, params, alpha=weight_decay)
            if momentum:
                if any(b is None for b in bufs):
                    for i, state in enumerate(states):
                        if bufs[i] is None:
                            state["momentum_buffer"] = bufs[i] = d[i].detach().clone()
                        else:
                            bufs[i].mul_(momentum).add_(d[i], alpha=1 - group["dampening"])
                else:
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, d, alpha=1 - group["dampening"])
                d = torch._foreach_add(d, bufs, alpha=momentum) if group["nesterov"] else bufs
            torch._foreach_add_(params, d, alpha=-lr)
        return loss

    def _in_place_momentum_step(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict],
        bufs: list[Tensor],
        n: int,
        group: dict[str, Any],
    ) -> None:
        """Same update without temporaries (heavy-ball momentum after the first step):
        ``buf = m buf + (1 - dampening) (grad * M + wd W)``, ``W -= lr buf``, run block by block
        (:func:`cache_blocks`) so each block's tensors stay in cache through the four passes."""
        keep, masks = 1 - group["dampening"], self._masks(states, n)
        for start, stop in cache_blocks(params, n):
            p, g, b = params[start:stop], grads[start:stop], bufs[start:stop]
            torch._foreach_mul_(b, group["momentum"])
            if start < n:
                torch._foreach_addcmul_(b, g, masks[start:stop], value=keep)
            else:
                torch._foreach_add_(b, g, alpha=keep)
            if group["weight_decay"]:
                torch._foreach_add_(b, p, alpha=group["weight_decay"] * keep)
            torch._foreach_add_(p, b, alpha=-group["lr"])


def cache_blocks(
    tensors: list[Tensor], n: int, block_bytes: int = CACHE_BLOCK_BYTES
) -> list[tuple[int, int]]:
    """Consecutive index ranges ``[start, stop)`` of about ``block_bytes`` each (a larger tensor is
    a block of its own) that never straddle index ``n`` (masked tensors first, then plain ones)."""
    blocks, start, size = [], 0, 0
    for index, tensor in enumerate(tensors):
        nbytes = tensor.numel() * tensor.element_size()
        if index > start and (index == n or size + nbytes > block_bytes):
            blocks.append((start, index))
            start, size = index, 0
        size += nbytes
    if start < len(tensors):
        blocks.append((start, len(tensors)))
    return blocks
