"""Optimizer construction: weight-decay parameter groups, SGD/AdamW or their RepOpt forms, LAMB.

Weight-decay exemption rules (``wd_exempt``):

- ``"bn"``: only normalisation-layer parameters (BN/GN/LN weight and bias) get no decay
  (TF ResNet-RS);
- ``"1d"``: every parameter with ``ndim <= 1`` (biases, norm affines, scalars) gets no decay
  (timm's rule; also the RepVGG and RepOptimizers repositories' ``set_weight_decay``);
- ``"1d_but_identity"``: as ``"1d"``, except that identity scales (``*.scale_identity``) decay:
  the RepOptimizers repository's rule for its Hyper-Search models (``identity.weight`` decays);
- ``"none"``: every parameter decays.

If ``reparam.optim.grad_mults(model)`` is non-empty and ``config.grad_mult`` is true, the optimizer
is ``RepOptSGD`` / ``RepOptAdamW`` with ``grad_mults={param: mask}`` (gradient re-param).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import Lamb
from torch import nn

from reparam.app.train.recipe import TrainConfig
from reparam.errors import RecipeError
from reparam.optim import RepOptAdamW, RepOptSGD, grad_mults

__all__ = ["WD_EXEMPT", "create_optimizer", "weight_decay_groups"]

WD_EXEMPT = ("bn", "1d", "1d_but_identity", "none")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def weight_decay_groups(model: nn.Module, weight_decay: float, exempt: str) -> list[dict[str, Any]]:
    """Two param groups ``[{decay}, {no decay, weight_decay=0}]`` (empty groups dropped).

    Each group also carries ``"names"`` (parameter names) for inspection; optimizers ignore it.
    """
    if exempt not in WD_EXEMPT:
        raise ValueError(f"wd_exempt must be one of {WD_EXEMPT}, got {exempt!r}")
    norm_params: set[int] = set()
    if exempt == "bn":
        for module in model.modules():
            if isinstance(module, _NORM_TYPES):
                norm_params.update(id(p) for p in module.parameters(recurse=False))
    decay: tuple[list, list] = ([], [])
    no_decay: tuple[list, list] = ([], [])
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        one_d = param.ndim <= 1 and exempt in ("1d", "1d_but_identity")
        if exempt == "1d_but_identity" and name.endswith("scale_identity"):
            one_d = False
        skip = (exempt == "bn" and id(param) in norm_params) or one_d
        group = no_decay if skip else decay
        group[0].append(param)
        group[1].append(name)
    groups = [
        {"params": decay[0], "names": decay[1], "weight_decay": weight_decay},
        {"params": no_decay[0], "names": no_decay[1], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def create_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer a config asks for, over :func:`weight_decay_groups` (see module docstring)."""
    groups = weight_decay_groups(model, config.weight_decay, config.wd_exempt)
    for group in groups:
        del group["names"]
    lr = config.resolved_lr
    power = 1 if config.optimizer == "adamw" else 2
    mults = grad_mults(model, power=power) if config.grad_mult else {}
    if mults and config.optimizer == "lamb":
        raise RecipeError(
            f"optimizer lamb with {model.__class__.__name__}'s RepOpt gradient multipliers: "
            "LAMB's per-tensor trust ratio rescales each update by |w| / |update|, which breaks "
            "the equivalence with the multi-branch model the multipliers stand for; use sgd or "
            "adamw, or set grad_mult=false to train without the multipliers"
        )
    if mults and config.grad_clip is not None and not config.force_grad_clip:
        raise RecipeError(
            f"grad_clip={config.grad_clip} with {model.__class__.__name__}'s RepOpt gradient "
            "multipliers: clipping the global gradient norm breaks the equivalence with the "
            "multi-branch model the multipliers stand for; drop --grad-clip, or set "
            "force_grad_clip=true to clip anyway (Hyper-Search models have no multipliers and "
            "clip as usual)"
        )
    if mults:
        params = dict(model.named_parameters())
        unknown = sorted(set(mults) - set(params))
        if unknown:
            raise ValueError(f"grad_mults names parameters the model lacks: {unknown[:5]}")
        by_param = {params[name]: mask.to(params[name].device) for name, mask in mults.items()}
        if config.optimizer == "sgd":
            return RepOptSGD(
                groups,
                lr=lr,
                momentum=config.momentum,
                nesterov=config.nesterov,
                weight_decay=config.weight_decay,
                grad_mults=by_param,
            )
        return RepOptAdamW(
            groups,
            lr=lr,
            betas=config.betas,
            eps=config.eps,
            weight_decay=config.weight_decay,
            grad_mults=by_param,
        )
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "lamb":
        return Lamb(
            groups, lr=lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(
        groups, lr=lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )
