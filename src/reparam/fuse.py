"""``reparameterize(model)``: the fused (deploy) copy of any reparam model.

Contract (**public API**): returns a new module in eval mode that computes the same function as
``model.eval()``; the original is never modified. A module takes part by defining

- ``fuse(self) -> nn.Module``: its deploy form, built from its current (eval-mode) weights;
- optionally ``check_fusable(self) -> None``: raise :class:`FusionError` when fusing now would
  change the function (for example an annealed activation with ``lambda < 1``);
- optionally ``prepare_for_deploy(self) -> None``: put itself in the state its training ends in
  (an annealed activation sets ``lambda = 1``), used by :func:`prepare_for_deploy`.

Modules are replaced outermost first, so a block that fuses as a whole is never split.
"""

from __future__ import annotations

import copy
import logging

from torch import nn

from reparam.errors import FusionError

__all__ = [
    "FusionError",
    "check_eval_mode",
    "prepare_for_deploy",
    "reparameterize",
    "train_mode_batchnorms",
]

log = logging.getLogger(__name__)


def train_mode_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers that are in train mode (batch statistics)."""
    return [
        name or "<model>"
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
    ]


def check_eval_mode(module: nn.Module) -> None:
    """Raise :class:`FusionError` when a BatchNorm in ``module`` uses batch statistics: BN folds
    are exact only with running statistics."""
    in_train = train_mode_batchnorms(module)
    if in_train:
        shown = ", ".join(in_train[:5]) + (" ..." if len(in_train) > 5 else "")
        raise FusionError(
            f"{len(in_train)} BatchNorm layer(s) are in train mode ({shown}); fusing uses running "
            "statistics, so the fused model would differ from this one. Call model.eval() first "
            "(reparameterize(model, switch_to_eval=True) fuses an eval-mode copy)."
        )


def prepare_for_deploy(model: nn.Module) -> nn.Module:
    """Put ``model`` (in place) in the state its training ends in: eval mode, and every module
    with a ``prepare_for_deploy()`` hook called (annealed activations: ``lambda = 1``).

    The one place for "the model as it will be fused": a fresh model prepared this way fuses
    to the deploy structure of its family. Returns ``model``.
    """
    model.eval()
    for module in model.modules():
        hook = getattr(module, "prepare_for_deploy", None)
        if callable(hook):
            hook()
    return model


def _fuse_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if hasattr(child, "fuse"):
            setattr(module, name, child.fuse())
        else:
            _fuse_children(child)


def reparameterize(model: nn.Module, *, switch_to_eval: bool = False) -> nn.Module:
    """Return the fused copy of ``model`` (eval mode; ``model`` untouched).

    BatchNorm folds are exact only with running statistics, so a model with BN layers in train
    mode is refused unless ``switch_to_eval=True`` (then the copy is put in eval mode, and that is
    logged). Any ``check_fusable`` failure is raised before anything is fused.
    """
    if not switch_to_eval:
        check_eval_mode(model)
    elif train_mode_batchnorms(model):
        log.info("reparameterize: switching a copy of the model to eval mode before fusing")
    for name, module in model.named_modules():
        check = getattr(module, "check_fusable", None)
        if check is not None:
            try:
                check()
            except FusionError as err:
                raise FusionError(f"{name or '<model>'}: {err}") from None
    fused = copy.deepcopy(model).eval()
    if hasattr(fused, "fuse"):
        fused = fused.fuse()
    else:
        _fuse_children(fused)
    return fused.eval()
