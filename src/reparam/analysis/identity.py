"""Identity variance analysis (RepOptimizer paper, fig. 4): how much of each block's output
variance its identity path carries, per block, for one model or several runs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data import load_eval_data
from ..train.checkpointing import load_model, preprocessing_of
from .plots import pyplot

__all__ = ["identity_variance_ratios", "plot_identity_variance", "run_identity_variance"]


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


def plot_identity_variance(
    results: Mapping[str, Mapping[str, float]], path: str | os.PathLike
) -> Path:
    """PNG: identity variance ratio per block (x: block order), one line per model label."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, ratios in results.items():
        ax.plot(range(1, len(ratios) + 1), list(ratios.values()), marker="o", ms=3, label=label)
    ax.set_xlabel("block with identity (network order)")
    ax.set_ylabel("Var(identity) / Var(block output)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_identity_variance(run_dir: str | os.PathLike, images: int = 128) -> dict[str, float]:
    """:func:`identity_variance_ratios` of a run's last weights, measured on the first ``images``
    validation images of its data, prepared as the model's inputs (empty for models without
    identity paths)."""
    model, config = load_model(run_dir, weights="last")
    val = load_eval_data(config["data"], preprocessing_of(config)).val
    probe = torch.stack([val[i][0] for i in range(min(images, len(val)))])
    return identity_variance_ratios(model, probe)
