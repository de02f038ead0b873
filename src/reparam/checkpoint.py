"""Atomic writes and safe loading of weights, states and run folders.

- Weights are safetensors (no pickle); optimizer/scheduler/RNG state is ``torch.save`` data that
  is read back with ``weights_only=True`` only.
- Every write goes to a temp file in the same folder and is renamed over the target, so a killed
  process leaves the previous file intact.
- A run folder (DESIGN.md) holds ``config.json`` with at least ``model``, ``num_classes`` and
  ``model_kwargs``; :func:`load_model` rebuilds the model from it and loads its weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "CheckpointError",
    "atomic_path",
    "load_model",
    "load_state",
    "load_weights",
    "read_json",
    "save_state",
    "save_weights",
    "write_json",
]


class CheckpointError(RuntimeError):
    """A checkpoint or run folder is missing, corrupted or for another model."""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def save_weights(
    state_dict: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a state dict as safetensors, atomically (tensors made contiguous, no shared storage)."""
    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def save_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` of tensors and plain containers only (so it loads with ``weights_only``)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: state file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: cannot load training state safely ({err})") from None


def load_model(
    source: str | os.PathLike, weights: str = "best"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a run folder (or a ``.safetensors`` file inside one).

    ``weights`` picks ``best`` or ``last`` when ``source`` is a folder (``best`` falls back to
    ``last``). Returns ``(model in eval mode, config)``.
    """
    from .models import create_model

    source = Path(source)
    if source.is_dir():
        run_dir = source
        candidates = [run_dir / f"{weights}.safetensors", run_dir / "last.safetensors"]
        weights_path = next((p for p in candidates if p.is_file()), candidates[0])
    elif source.suffix == ".safetensors":
        run_dir, weights_path = source.parent, source
    else:
        raise CheckpointError(f"{source}: expected a run folder or a .safetensors file")
    config = read_json(run_dir / "config.json")
    for key in ("model", "num_classes"):
        if key not in config:
            raise CheckpointError(f"{run_dir / 'config.json'}: missing key {key!r}")
    model = create_model(
        config["model"], num_classes=config["num_classes"], **config.get("model_kwargs", {})
    )
    state = load_weights(weights_path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path}: does not match model {config['model']!r}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.eval(), config
