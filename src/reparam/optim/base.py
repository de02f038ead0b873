"""Shared machinery of the RepOptimizers: constructor forms, mask storage, blocks, state round trip.

Masks are stored factored where they factor (:class:`~reparam.optim.masks.FactoredMask`: every
CSLA mask whose parameter has more than one input channel per group), else full size (depthwise
and 1-D parameters, whose factors would be as large, and ``grad_mults=`` masks that vary over
input channels); ``factor_masks=False`` keeps every mask full size (same update, bit for bit).
The updates run block by block (:mod:`reparam.optim.blocks`), the masks in place in the
gradients' memory: ``step()`` leaves each masked ``.grad`` overwritten (see the subclasses'
contracts), so the masks cost no block-sized scratch. ``state_dict`` carries each mask in full as
``state[i]["grad_mult"]`` (the format of full-mask versions, so checkpoints load either way);
``load_state_dict`` refuses a saved mask that differs from this optimizer's (other scales) and
adopts one for a parameter this optimizer has none for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from reparam.optim.blocks import CACHE_BLOCK_BYTES, BlockPlan, plan_blocks
from reparam.optim.masks import FactoredMask, factor_mask, full_mask, param_grad_mults

__all__ = ["MaskedOptimizer"]

MASK = "grad_mult"


class MaskedOptimizer(Optimizer):
    """Base class: ``(model)`` or ``(params, grad_mults={param: mask})``; see module docstring.

    Subclasses set ``power`` (of the CSLA scales in the mask) and ``scratch_buffers`` (block-sized
    temporaries their update needs besides the gradients)."""

    power: int = 2
    scratch_buffers: int = 0

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[Any],
        defaults: dict[str, Any],
        grad_mults: dict[nn.Parameter, Tensor] | None,
        factor_masks: bool = True,
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
        self.factor_masks = factor_masks
        self.block_bytes = CACHE_BLOCK_BYTES
        self._mults: dict[Tensor, Tensor | FactoredMask] = {}
        self._plans: list[BlockPlan | None] = []
        for param, mask in grad_mults.items():
            if tuple(mask.shape) != tuple(param.shape):
                raise ValueError(
                    f"{name}: grad mult of shape {tuple(mask.shape)} for a parameter of shape "
                    f"{tuple(param.shape)}"
                )
            if not torch.isfinite(mask).all():
                raise ValueError(f"{name}: grad mult of a {tuple(param.shape)} param has NaN/inf")
            self._mults[param] = self._stored(mask.detach().to(param.device, param.dtype))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, then every number of the group (``lr``, ``momentum``, ``betas``, ...) checked
        finite: a NaN or infinite setting raises ``ValueError`` before it reaches a weight."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for key in ("lr", "momentum", "dampening", "weight_decay", "eps", "betas"):
            value = group.get(key)
            values = value if isinstance(value, (tuple, list)) else [value]
            if value is not None and not all(math.isfinite(float(v)) for v in values):
                raise ValueError(f"{type(self).__name__}: {key}={value} must be finite")

    def _stored(self, mask: Tensor) -> Tensor | FactoredMask:
        factored = factor_mask(mask) if self.factor_masks else None
        return mask.clone() if factored is None else factored

    def grad_mult(self, param: Tensor) -> Tensor | None:
        """The full-size mask this optimizer multiplies ``param``'s gradient by (a copy, for
        inspection), or ``None`` when it has none."""
        mult = self._mults.get(param)
        return None if mult is None else full_mask(mult)

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, each masked parameter's state with its full mask as ``grad_mult``."""
        packed = super().state_dict()
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        for param, mult in self._mults.items():
            i = index[id(param)]
            packed["state"][i] = {**packed["state"].get(i, {}), MASK: full_mask(mult)}
        return packed

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does, then take the saved masks out of the state: they must equal this
        optimizer's (same scales); one for a parameter without a mask here is adopted."""
        super().load_state_dict(state_dict)
        for param, state in self.state.items():
            loaded = state.pop(MASK, None)
            if loaded is None:
                continue
            mine = self._mults.get(param)
            if mine is None:
                self._mults[param] = self._stored(loaded)
                continue
            current = full_mask(mine)
            if loaded.shape != current.shape or not torch.allclose(
                loaded, current, rtol=1e-6, atol=0
            ):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: the saved grad mult of a "
                    f"{tuple(param.shape)} parameter differs from this optimizer's: the checkpoint "
                    "was trained with other scales"
                )
        self._plans.clear()

    @staticmethod
    def _closure_loss(closure: Callable[[], float] | None) -> float | None:
        """``closure()`` with gradients enabled (``step`` runs without), or ``None``."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def _groups(self) -> Iterator[tuple[dict, BlockPlan, list[Tensor], list[Tensor], list[dict]]]:
        """``(group, plan, params, grads, states)`` of each param group with a gradient: the
        params of :meth:`_gather` and their block plan (:meth:`_plan`)."""
        for group_index, group in enumerate(self.param_groups):
            params, grads, states, n = self._gather(group)
            if params:
                yield group, self._plan(group_index, params, n), params, grads, states

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[dict], int]:
        """``(params, grads, states, n)`` of the params with a grad, the ``n`` masked ones first."""
        masked: list[tuple[Tensor, Tensor, dict]] = []
        plain: list[tuple[Tensor, Tensor, dict]] = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            (masked if p in self._mults else plain).append((p, p.grad, self.state[p]))
        rows = masked + plain
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], len(masked)

    def _plan(self, group_index: int, params: list[Tensor], n: int) -> BlockPlan:
        """The block plan of param group ``group_index`` for these ``params`` (cached)."""
        key = (self.block_bytes, n, *map(id, params))
        self._plans.extend([None] * (group_index + 1 - len(self._plans)))
        plan = self._plans[group_index]
        if plan is None or plan.key != key:
            mults = [self._mults[p] for p in params[:n]]
            plan = plan_blocks(params, mults, self.scratch_buffers, self.block_bytes, key)
            self._plans[group_index] = plan
        return plan
