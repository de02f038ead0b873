"""Run-folder checkpoints: ``last.safetensors`` + ``last.state.pt``, ``best.safetensors``, and
:func:`load_model`, which rebuilds a trained model from a run folder.

``last.state.pt`` holds only tensors and plain containers (it loads with ``weights_only=True``):
the position (``epoch``, ``batch`` done in that epoch, ``global_step``), optimizer, scheduler and
EMA state, every rank's RNG states, running figures and the resolved config. Both files are
written atomically; the weights carry their ``global_step`` in the safetensors metadata and
loading checks it against the state's.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import os
import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..checkpoint import (
    atomic_path,
    check_finite,
    current_umask,
    fsync_path,
    load_state,
    load_weights,
    read_json,
    write_error,
)
from ..errors import CheckpointError
from ..models import create_model_from_config

__all__ = [
    "TrainState",
    "get_rng_state",
    "is_run_folder",
    "load_model",
    "load_training_state",
    "remove_run_files",
    "save_training_state",
    "set_rng_state",
    "write_log_csv",
]

log = logging.getLogger(__name__)

LAST_WEIGHTS, LAST_STATE, BEST_WEIGHTS = "last.safetensors", "last.state.pt", "best.safetensors"


@dataclass
class TrainState:
    """Where a run stands (saved in ``last.state.pt`` beside the optimizer, scheduler, EMA and
    RNG states): position, running figures, the rows of ``log.csv`` so far."""

    epoch: int = 0  # finished epochs
    batch: int = 0  # batches done in the current epoch
    global_step: int = 0
    best_top1: float = -1.0
    best_source: str | None = None  # "raw" or "ema"
    train_seconds: float = 0.0
    seconds: float = 0.0  # training + evaluation
    images: int = 0  # training images seen, all processes
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0, 0])  # loss, correct, seen
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: copy.copy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, checkpoint: dict[str, Any]) -> TrainState:
        """The state from a checkpoint's dict (other keys ignored)."""
        return cls(**{f.name: copy.copy(checkpoint[f.name]) for f in fields(cls)})


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, as weights_only-loadable data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(
    out: Path, model_state: dict[str, torch.Tensor], state: dict[str, Any]
) -> None:
    """Commit the pair ``last.safetensors`` + ``last.state.pt`` as one unit.

    Both are written in full to ``.<name>.<step>.tmp`` and flushed, then the state and then the
    weights are renamed into place. A kill before the first rename leaves the previous pair; a
    kill between the two leaves the new state beside the complete new weights' temp file, which
    :func:`load_training_state` renames in (roll forward). Either way a complete pair remains.
    A failed write (a full disk) removes both temp files and raises one :class:`CheckpointError`.
    """
    check_finite(model_state, f"refusing to write {out / LAST_WEIGHTS}")
    step = state["global_step"]
    for stale in out.glob(".last.*.tmp"):  # left by a kill during an earlier save
        stale.unlink()
    weights_tmp, state_tmp = _pending(out, LAST_WEIGHTS, step), _pending(out, LAST_STATE, step)
    tensors = {k: v.detach().contiguous().clone() for k, v in model_state.items()}
    try:
        save_file(tensors, str(weights_tmp), metadata={"global_step": str(step)})
        torch.save(state, state_tmp)
        for path in (weights_tmp, state_tmp):
            os.chmod(path, 0o666 & ~current_umask())  # safetensors writes 0600
            fsync_path(path)
        fsync_path(out)
    except (OSError, RuntimeError, SafetensorError) as err:
        failed = write_error(out / LAST_WEIGHTS, err)  # while the temp files still fill the disk
        weights_tmp.unlink(missing_ok=True)
        state_tmp.unlink(missing_ok=True)
        kept = (
            "the previous checkpoint is kept"
            if (out / LAST_STATE).is_file()
            else "no checkpoint to resume from yet"
        )
        raise CheckpointError(f"{failed}; {kept}") from None
    os.replace(state_tmp, out / LAST_STATE)
    os.replace(weights_tmp, out / LAST_WEIGHTS)
    fsync_path(out)


def _pending(out: Path, name: str, step: int) -> Path:
    return out / f".{name}.{step}.tmp"


def _weights_step(path: Path) -> str | None:
    """The ``global_step`` a weights file was saved at (``None`` when unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("global_step")
    except (SafetensorError, OSError):
        return None


RUN_FILES = ("config.json", "metrics.json", "log.csv", LAST_WEIGHTS, LAST_STATE, BEST_WEIGHTS)


def is_run_folder(folder: Path) -> bool:
    """``folder`` holds a training run: a checkpoint or metrics, or the ``config.json`` of a run
    (``epochs`` recorded, not a fused or converted model's)."""
    if any((folder / name).is_file() for name in (LAST_STATE, "metrics.json", LAST_WEIGHTS)):
        return True
    try:
        config = read_json(folder / "config.json")
    except CheckpointError:
        return False
    return (
        isinstance(config, dict)
        and "epochs" in config
        and not config.get("fused")
        and "converted_from" not in config
    )


def remove_run_files(out: Path) -> None:
    """Delete what a run writes in the run folder ``out`` (:data:`RUN_FILES`, TensorBoard events);
    other files stay. A folder that is not a run folder is refused (:class:`CheckpointError`)."""
    if not out.is_dir():
        return
    if not is_run_folder(out):
        raise CheckpointError(f"{out}: not a run folder; its files are not removed")
    for path in out.iterdir():
        if path.name in RUN_FILES or path.name.startswith("events.out.tfevents."):
            path.unlink()


def write_log_csv(rows: list[dict[str, Any]], fields: list[str], path: Path) -> None:
    """``log.csv``: one row per finished epoch (rewritten whole, atomically; ``None`` -> empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def load_training_state(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(weights, state)`` of ``out``'s last checkpoint; :class:`CheckpointError` when absent."""
    if not (out / LAST_STATE).is_file():
        raise CheckpointError(f"{out}: no {LAST_STATE} to resume from")
    state = load_state(out / LAST_STATE)
    step = state.get("global_step")
    pending = _pending(out, LAST_WEIGHTS, step)
    if _weights_step(out / LAST_WEIGHTS) != str(step) and pending.is_file():
        load_weights(pending)  # complete and readable: the save was killed between its renames
        if _weights_step(pending) == str(step):
            log.warning("%s: completing the checkpoint of step %s (interrupted save)", out, step)
            os.replace(pending, out / LAST_WEIGHTS)
            fsync_path(out)
    weights = load_weights(out / LAST_WEIGHTS)
    weights_step = _weights_step(out / LAST_WEIGHTS)
    if weights_step != str(step):
        raise CheckpointError(
            f"{out}: {LAST_WEIGHTS} (step {weights_step}) and {LAST_STATE} "
            f"(step {state.get('global_step')}) differ; the run was killed between the two writes"
        )
    return weights, state


def load_model(
    source: str | os.PathLike, weights: str = "best"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a run folder (or a ``.safetensors`` file inside one).

    ``weights`` picks ``best`` or ``last`` when ``source`` is a folder (``best`` falls back to
    ``last``). Returns ``(model in eval mode, config)``.
    """
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
    model = create_model_from_config(config, str(run_dir / "config.json"))
    state = load_weights(weights_path)
    check_finite(state, str(weights_path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path}: does not match model {config['model']!r}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.eval(), config
