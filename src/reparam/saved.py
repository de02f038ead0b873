"""Saved models, read back without pickle: run folders, fused folders, and :func:`load`.

A run folder holds ``config.json`` and ``best.safetensors`` / ``last.safetensors``;
:func:`load_model` rebuilds its model and checks every weight against it.

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
from typing import Any, NamedTuple

import torch
from torch import nn

from reparam.data import Preprocessing
from reparam.errors import CheckpointError, DataError, DeployError
from reparam.files import (
    check_finite,
    load_weights,
    read_json,
    save_weights,
    write_json,
)
from reparam.fuse import prepare_for_deploy, reparameterize, train_mode_batchnorms
from reparam.models import create_model_from_config
from reparam.models.registry import check_model_config

__all__ = [
    "BEST_WEIGHTS",
    "FUSED_CONFIG",
    "FUSED_WEIGHTS",
    "LAST_WEIGHTS",
    "LoadedModel",
    "build_deploy_model",
    "class_names_of",
    "fuse_for_deploy",
    "fused_folder_of",
    "is_fused_folder",
    "load",
    "load_checked",
    "load_fused",
    "load_with_config",
    "load_model",
    "preprocessing_of",
    "read_config",
    "save_fused",
    "weights_path_of",
]

LAST_WEIGHTS, BEST_WEIGHTS = "last.safetensors", "best.safetensors"


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


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A run or fused folder's ``config.json``, checked as a whole before use: ``model``,
    ``num_classes``, ``model_kwargs``, the preprocessing (``preprocessing`` or, in older runs,
    ``image_size``; a config with neither loads, for the model alone) and ``class_names``; any
    problem is a :class:`CheckpointError` naming the file and the field."""
    config = read_json(path)
    check_model_config(config, str(path))
    if "preprocessing" in config or "image_size" in config:
        preprocessing_of(config, str(path))
    class_names_of(config, str(path))
    return config


def preprocessing_of(config: dict[str, Any], source: str = "config.json") -> Preprocessing:
    """The recorded preprocessing (runs from before it was recorded: the default for their
    ``image_size``); :class:`CheckpointError` naming ``source`` and the field when it cannot
    work or when ``image_size`` and ``preprocessing`` disagree."""
    size = config.get("image_size")
    if size is None and "preprocessing" not in config:
        raise CheckpointError(f"{source}: records no preprocessing (nor image_size)")
    try:
        if "preprocessing" not in config:
            return Preprocessing(size)
        preprocessing = Preprocessing.from_dict(config["preprocessing"])
    except DataError as err:  # "preprocessing <field>: <what was expected>"
        message = str(err)
        if "preprocessing" not in config:  # about the top-level image_size
            message = "field " + message.removeprefix("preprocessing ")
        raise CheckpointError(f"{source}: {message}") from None
    if "image_size" in config and size != preprocessing.image_size:
        raise CheckpointError(
            f"{source}: field 'image_size' is {size!r}, preprocessing.image_size is "
            f"{preprocessing.image_size}; expected the same size"
        )
    return preprocessing


def class_names_of(config: dict[str, Any], source: str = "config.json") -> list[str]:
    """The recorded class names (one string per class), or the class indices as names;
    :class:`CheckpointError` naming ``source`` when they do not fit ``num_classes``."""
    names, num_classes = config.get("class_names"), config["num_classes"]
    if names is None:
        return [str(i) for i in range(num_classes)]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{source}: field 'class_names': expected a list of strings")
    if len(names) != num_classes:
        raise CheckpointError(
            f"{source}: field 'class_names' has {len(names)} names; expected num_classes = "
            f"{num_classes}"
        )
    return list(names)


def load_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """``model.load_state_dict(state)`` after checking every key and shape: a mismatch is one
    :class:`CheckpointError` naming ``source`` (the weights file), ``what`` (the model its config
    describes) and the first differing key with both shapes."""
    own = model.state_dict()
    for key, tensor in own.items():  # in the model's order
        if key in state and state[key].shape != tensor.shape:
            raise CheckpointError(
                f"{source}: does not fit {what}: {key} is {list(state[key].shape)} in the file, "
                f"{list(tensor.shape)} in the model (config.json edited, or weights of another "
                "model?)"
            )
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: does not match {what}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(state)


def load_model(
    source: str | os.PathLike, weights: str = "best"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a run folder (or a ``.safetensors`` file inside one).

    ``weights`` picks ``best`` or ``last`` when ``source`` is a folder (``best`` falls back to
    ``last``). Returns ``(model in eval mode, config)``; the config is checked as a whole
    (:func:`read_config`) and the weights against the model it describes (:func:`load_checked`).
    """
    run_dir, weights_path = weights_path_of(Path(source), weights)
    config = read_config(run_dir / "config.json")
    model = create_model_from_config(config, str(run_dir / "config.json"))
    state = load_weights(weights_path)
    check_finite(state, str(weights_path))
    what = (
        f"model {config['model']!r} with num_classes={config['num_classes']} "
        f"({run_dir / 'config.json'})"
    )
    load_checked(model, state, str(weights_path), what)
    return model.eval(), config


def weights_path_of(source: Path, weights: str = "best") -> tuple[Path, Path]:
    """``(run folder, weights file)`` that :func:`load_model` reads for ``source``."""
    if source.is_dir():
        candidates = [source / f"{weights}.safetensors", source / LAST_WEIGHTS]
        return source, next((p for p in candidates if p.is_file()), candidates[0])
    if source.suffix == ".safetensors":
        return source.parent, source
    raise CheckpointError(f"{source}: expected a run folder or a .safetensors file")


class LoadedModel(NamedTuple):
    """What :func:`load` returns: unpack as ``model, preprocessing, class_names = ...``."""

    model: nn.Module
    preprocessing: Preprocessing
    class_names: list[str]


def load(path: str | os.PathLike) -> LoadedModel:
    """A ready model (eval mode) from a run folder, a ``.safetensors`` checkpoint inside one, or
    a fused (deploy) folder, with its preprocessing and class names (**contract**). The folder
    is all it needs: it may have been moved anywhere."""
    model, config = load_with_config(Path(path))
    return LoadedModel(model, preprocessing_of(config), class_names_of(config))


def load_with_config(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    if not path.exists():
        raise DeployError(
            f"{path}: not found (expected a run folder, fused folder or .safetensors)"
        )
    folder = fused_folder_of(path)
    return load_fused(folder) if folder is not None else load_model(path)
