"""Grad mults of a model, collected from its CSLA-described layers (see ``reparam.csla``), and
their factored storage in the optimizers.

Keyed by parameter name (**contract**: ``grad_mults(model) -> dict[str, Tensor]``), so the same
names work through wrappers that prefix them (``module.`` for DDP, ``_orig_mod.`` for
``torch.compile``) as long as masks and parameters come from the same (wrapped) model.

A CSLA mask is ``M = sum_i |a_i|^p (.) pad(1_{k_i})`` (+1 on the identity's diagonal centre):
one value per output channel and tap, the same for every input channel, except on the diagonal.
The optimizers store it as a :class:`FactoredMask` (``[C_out, 1, k, k]`` plus the diagonal) and
never hold the full-size mask; :func:`factor_mask` finds the factors in any mask.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from reparam.csla import grad_mult, specs_of

__all__ = ["FactoredMask", "factor_mask", "full_mask", "grad_mults", "param_grad_mults"]


def grad_mults(model: nn.Module, power: int = 2) -> dict[str, Tensor]:
    """``{parameter name: M}`` for every CSLA target in ``model`` (empty when it has none).

    ``power`` 2 for SGD, 1 for AdamW. Each mask has its parameter's shape, dtype and device.
    """
    masks: dict[str, Tensor] = {}
    for module_name, module in model.named_modules():
        for local, spec in specs_of(module).items():
            name = f"{module_name}.{local}" if module_name else local
            try:
                param = module.get_parameter(local)
            except AttributeError:
                raise ValueError(f"{name}: CSLA spec for a parameter that does not exist") from None
            if name in masks:
                raise ValueError(f"{name}: described by two CSLA specs")
            mask = grad_mult(spec, power, dtype=param.dtype, device=param.device)
            if mask.shape != param.shape:
                raise ValueError(
                    f"{name}: CSLA spec gives a grad mult of shape {tuple(mask.shape)}, "
                    f"the parameter has shape {tuple(param.shape)}"
                )
            masks[name] = mask
    return masks


def param_grad_mults(model: nn.Module, power: int = 2) -> dict[nn.Parameter, Tensor]:
    """:func:`grad_mults` keyed by the ``Parameter`` objects: the ``grad_mults=`` argument of
    ``RepOptSGD(param_groups, grad_mults=...)`` when the caller builds its own groups."""
    with torch.no_grad():
        return {model.get_parameter(name): mask for name, mask in grad_mults(model, power).items()}


class FactoredMask(NamedTuple):
    """A mask ``M`` of shape ``size`` stored as ``per_tap`` (``[C_out, 1, ...]``, broadcast over
    dim 1, the input channels) except at the flat positions ``index``, where ``M = values``."""

    per_tap: Tensor
    index: Tensor
    values: Tensor
    size: torch.Size

    @property
    def row_numel(self) -> int:
        """Elements per output channel (one row of dim 0)."""
        return math.prod(self.size[1:])


def factor_mask(mask: Tensor) -> FactoredMask | None:
    """``mask`` as ``per_tap = min over dim 1`` plus the elements that differ from it, or ``None``
    when factoring saves nothing or does not fit: fewer than 2 dims, one input channel per group
    (depthwise: the mask is already ``[C_out, 1, k, k]``), or more differing elements than output
    channels (not "per output channel and tap plus an identity diagonal"). Exact: the factors hold
    the mask's own values."""
    if mask.dim() < 2 or mask.shape[1] == 1:
        return None
    per_tap = mask.amin(dim=1, keepdim=True)
    index = (mask != per_tap).flatten().nonzero().squeeze(1)
    if index.numel() > mask.shape[0]:
        return None
    return FactoredMask(per_tap, index, mask.flatten()[index], mask.shape)


def full_mask(mult: Tensor | FactoredMask) -> Tensor:
    """The full-size mask (a copy) of a stored grad mult."""
    if isinstance(mult, Tensor):
        return mult.clone()
    mask = mult.per_tap.expand(mult.size).contiguous()
    mask.view(-1).index_copy_(0, mult.index, mult.values)
    return mask
