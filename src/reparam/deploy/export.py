"""Fused model folders: write, read, and rebuild the fused structure from a run's config.

A fused folder (**contract**) holds ``fused.safetensors`` (the state dict of the deploy model)
and ``config.json``: the run's config (``model``, ``num_classes``, ``model_kwargs``, ...) plus
``"fused": true``. :func:`build_deploy_model` turns such a config into the fused module
(create -> eval -> any annealing lambda set to 1 -> :func:`reparameterize`), and
:func:`load_fused` loads the weights into it (strict: every key must match).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import check_finite, load_weights, save_weights, write_json
from ..errors import CheckpointError
from ..fuse import prepare_for_deploy, reparameterize, train_mode_batchnorms
from ..models import create_model_from_config
from ..train.checkpointing import load_checked, read_config

__all__ = [
    "FUSED_CONFIG",
    "FUSED_WEIGHTS",
    "build_deploy_model",
    "fuse_for_deploy",
    "fused_folder_of",
    "is_fused_folder",
    "load_fused",
    "save_fused",
]

log = logging.getLogger(__name__)

FUSED_WEIGHTS = "fused.safetensors"
FUSED_CONFIG = "config.json"


def build_deploy_model(config: dict[str, Any], source: str = "model config") -> nn.Module:
    """The fused (deploy) structure of ``config["model"]``, weights not loaded (**contract**).

    ``create_model(model, num_classes, **model_kwargs)`` put in its end-of-training state by
    :func:`reparam.fuse.prepare_for_deploy`, then :func:`reparameterize`; the parameters hold
    whatever the fresh model folds to.
    """
    model = create_model_from_config(config, source)
    return reparameterize(prepare_for_deploy(model))


def fuse_for_deploy(model: nn.Module) -> nn.Module:
    """Fused copy of a trained model; a model left in train mode is fused from eval mode (logged).

    An annealed model whose lambda is below 1 is refused by its ``check_fusable``
    (:class:`~reparam.errors.FusionError`): forcing lambda would change its function.
    """
    if train_mode_batchnorms(model):
        log.info("model is in train mode: fusing an eval-mode copy (BatchNorm running statistics)")
    return reparameterize(model, switch_to_eval=True)


def save_fused(fused: nn.Module, config: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``fused.safetensors`` + ``config.json`` (``config`` with ``"fused": true``)."""
    out_dir = Path(out_dir)
    save_weights(
        fused.state_dict(), out_dir / FUSED_WEIGHTS, metadata={"model": str(config["model"])}
    )
    write_json({**config, "fused": True}, out_dir / FUSED_CONFIG)
    return out_dir


def is_fused_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / FUSED_WEIGHTS).is_file()


def fused_folder_of(path: str | os.PathLike) -> Path | None:
    """The fused folder ``path`` names (the folder itself or its ``fused.safetensors``), else None."""
    path = Path(path)
    folder = path.parent if path.name == FUSED_WEIGHTS else path
    return folder if folder.is_dir() and is_fused_folder(folder) else None


def load_fused(folder: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a fused model from its folder; returns ``(model in eval mode, config)``."""
    folder = Path(folder)
    config = read_config(folder / FUSED_CONFIG)
    if not config.get("fused"):
        raise CheckpointError(
            f'{folder / FUSED_CONFIG}: not a fused model config (no "fused": true)'
        )
    model = build_deploy_model(config, str(folder / FUSED_CONFIG))
    state = load_weights(folder / FUSED_WEIGHTS)
    check_finite(state, str(folder / FUSED_WEIGHTS))
    what = (
        f"model {config['model']!r} (fused) with num_classes={config['num_classes']} "
        f"({folder / FUSED_CONFIG})"
    )
    load_checked(model, state, str(folder / FUSED_WEIGHTS), what)
    return model.eval(), config
