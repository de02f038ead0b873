"""Grad mults of a model, collected from its CSLA-described layers (see ``reparam.csla``).

Keyed by parameter name (**contract**: ``grad_mults(model) -> dict[str, Tensor]``), so the same
names work through wrappers that prefix them (``module.`` for DDP, ``_orig_mod.`` for
``torch.compile``) as long as masks and parameters come from the same (wrapped) model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..csla import grad_mult, specs_of

__all__ = ["grad_mults", "param_grad_mults"]


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
