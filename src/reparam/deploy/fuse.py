"""``reparameterize(model)``: the fused (deploy) copy of any reparam model.

Contract (**public API**): returns a new module in eval mode that computes the same function as
``model.eval()``; the original is never modified. A module takes part by defining

- ``fuse(self) -> nn.Module``: its deploy form, built from its current (eval-mode) weights;
- optionally ``check_fusable(self) -> None``: raise :class:`FusionError` when fusing now would
  change the function (for example an annealed activation with ``lambda < 1``).

Modules are replaced outermost first, so a block that fuses as a whole is never split.
"""

from __future__ import annotations

import copy
import logging

from torch import nn

__all__ = ["FusionError", "reparameterize", "train_mode_batchnorms"]

log = logging.getLogger(__name__)


class FusionError(RuntimeError):
    """Fusing now would silently produce a different function."""


def train_mode_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers that are in train mode (batch statistics)."""
    return [
        name or "<model>"
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
    ]


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
    in_train = train_mode_batchnorms(model)
    if in_train:
        if not switch_to_eval:
            shown = ", ".join(in_train[:5]) + (" ..." if len(in_train) > 5 else "")
            raise FusionError(
                f"{len(in_train)} BatchNorm layer(s) are in train mode ({shown}); fusing uses running "
                "statistics, so the fused model would differ from this one. Call model.eval() first "
                "or pass switch_to_eval=True."
            )
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
