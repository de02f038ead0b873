"""Identity variance analysis (RepOptimizer paper, fig. 4): how much of each block's output
variance its identity path carries, per block, for one model or several runs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["identity_variance_ratios"]


@torch.no_grad()
def identity_variance_ratios(model: nn.Module, images: Tensor) -> dict[str, float]:
    """Per block with an identity branch: ``Var(identity path) / Var(block output)``.

    RepOpt paper fig. 4. Blocks take part through ``identity_variance_parts(x) -> (identity,
    output)`` or ``None`` when they have no identity (HS block: ``s_id x`` over the pre-BN sum;
    RepOpt-VGG block: ``x`` over the pre-BN conv output, i.e. the share of an unscaled identity;
    RepVGG block: ``BN_id(x)`` over the pre-ReLU sum). Runs in eval mode (running statistics);
    the model's mode is restored.
    """
    ratios: dict[str, float] = {}
    hooks = []
    for name, module in model.named_modules():

        def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
            result = mod.identity_variance_parts(args[0])
            if result is not None:
                ratios[name] = (result[0].var() / result[1].var()).item()

        if callable(getattr(module, "identity_variance_parts", None)):
            hooks.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()(images)
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    return ratios
