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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from reparam.errors import CheckpointError
from reparam.files import (
    atomic_path,
    check_finite,
    current_umask,
    fsync_path,
    load_state,
    load_weights,
    non_finite_tensors,
    read_json,
    write_error,
)
from reparam.saved import BEST_WEIGHTS, LAST_WEIGHTS, weights_path_of

__all__ = [
    "TrainState",
    "check_training_state",
    "checkpoint_info",
    "describe_checkpoint",
    "get_rng_state",
    "is_run_folder",
    "load_training_state",
    "remove_run_files",
    "save_training_state",
    "set_rng_state",
    "write_log_csv",
]

log = logging.getLogger(__name__)

LAST_STATE = "last.state.pt"


@dataclass
class TrainState:
    """Where a run stands (saved in ``last.state.pt`` beside the optimizer, scheduler, EMA and
    RNG states): position, running figures, the rows of ``log.csv`` so far."""

    epoch: int = 0  # finished epochs
    batch: int = 0  # batches done in the current epoch
    global_step: int = 0
    best_top1: float = -1.0
    best_source: str | None = None  # "raw" or "ema"
    best_epoch: int = 0  # the epoch best.safetensors is from
    train_seconds: float = 0.0
    seconds: float = 0.0  # training + evaluation
    images: int = 0  # training images seen, all processes
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0, 0])  # loss, correct, seen
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: copy.copy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, checkpoint: dict[str, Any]) -> TrainState:
        """The state from a checkpoint's dict (other keys ignored; ``best_epoch``, absent from
        checkpoints of earlier versions, defaults)."""
        names = [f.name for f in fields(cls) if f.name in checkpoint or f.name != "best_epoch"]
        return cls(**{name: copy.copy(checkpoint[name]) for name in names})


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


def _weights_metadata(path: Path) -> dict[str, str]:
    """A weights file's safetensors metadata (empty when unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError):
        return {}


def _weights_step(path: Path) -> str | None:
    """The ``global_step`` a weights file was saved at (``None`` when unreadable)."""
    return _weights_metadata(path).get("global_step")


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


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rng_states(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, dict) and {"python", "numpy", "torch"} <= set(v) for v in value
    )


# what each entry of ``last.state.pt`` must be, and how to say so
STATE_ENTRIES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epoch": (_count, "an integer >= 0"),
    "batch": (_count, "an integer >= 0"),
    "global_step": (_count, "an integer >= 0"),
    "images": (_count, "an integer >= 0"),
    "best_top1": (_number, "a number"),
    "best_source": (lambda v: v is None or isinstance(v, str), "a string or None"),
    "train_seconds": (_number, "a number"),
    "seconds": (_number, "a number"),
    "epoch_sums": (
        lambda v: isinstance(v, list) and len(v) == 3 and all(map(_number, v)),
        "a list of 3 numbers",
    ),
    "rows": (
        lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
        "a list of dicts",
    ),
    "optimizer": (lambda v: isinstance(v, dict), "a state dict"),
    "scheduler": (lambda v: isinstance(v, dict), "a state dict"),
    "ema": (lambda v: v is None or isinstance(v, dict), "a state dict or None"),
    "world_size": (lambda v: _count(v) and v >= 1, "an integer >= 1"),
    "config": (lambda v: isinstance(v, dict), "a dict"),
    "rng": (_rng_states, "a list of RNG state dicts (python, numpy, torch)"),
}


def check_training_state(state: Any, source: str, keys: Iterable[str] = STATE_ENTRIES) -> None:
    """Raise :class:`CheckpointError` naming ``source`` and the first entry of a training state
    (of ``keys``, default all) that is missing or of the wrong type (:data:`STATE_ENTRIES`),
    before any of it is used."""
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{source}: expected a dict of training state, got {type(state).__name__}"
        )
    for key in keys:
        ok, expected = STATE_ENTRIES[key]
        if key not in state:
            raise CheckpointError(
                f"{source}: entry {key!r} is missing; not a reparam training state"
            )
        value = state[key]
        if not ok(value):
            shown = repr(value) if isinstance(value, (int, float, str)) else type(value).__name__
            raise CheckpointError(f"{source}: entry {key!r} is {shown}; expected {expected}")
    if "rng" in keys and len(state["rng"]) != state["world_size"]:
        raise CheckpointError(
            f"{source}: entry 'rng' holds {len(state['rng'])} RNG states for world_size "
            f"{state['world_size']}"
        )


def load_training_state(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(weights, state)`` of ``out``'s last checkpoint; :class:`CheckpointError` when absent
    or when a weight or a tensor of the state (optimizer, EMA) holds NaN or inf. Only the
    state's ``global_step`` is type-checked here: a resume checks the rest
    (:func:`check_training_state`)."""
    if not (out / LAST_STATE).is_file():
        raise CheckpointError(
            f"{out}: no {LAST_STATE} to resume from (no checkpoint was saved); start the run "
            "again without --resume"
        )
    state = load_state(out / LAST_STATE)
    check_training_state(state, str(out / LAST_STATE), keys=["global_step"])
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
    bad = [f"{LAST_WEIGHTS}:{n}" for n in non_finite_tensors(weights)]
    bad += [f"{LAST_STATE}:{n}" for n in non_finite_tensors(dict(_tensors(state)))]
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise CheckpointError(
            f"{out}: refusing to resume, {len(bad)} tensor(s) of the checkpoint hold NaN or inf "
            f"({shown}); the run diverged before step {step}: start it again (e.g. lower the lr)"
        )
    return weights, state


def _tensors(value: Any, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(dotted name, tensor)`` for every tensor inside nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict | list | tuple):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            yield from _tensors(item, f"{name}.{key}" if name else str(key))


def checkpoint_info(source: str | os.PathLike, weights: str = "best") -> dict[str, Any]:
    """Which weights :func:`load_model` reads from ``source`` (**contract**, recorded in
    ``deploy.json``): ``weights`` (file name), ``epoch`` (finished epochs they are from; ``None``
    when not recorded, e.g. converted weights), ``source`` (``"raw"`` or ``"ema"`` for
    ``best.safetensors``), ``epochs`` (the run's length) and ``finished`` (``False`` only for a
    run still training or stopped early: a training state and no ``metrics.json``)."""
    run_dir, weights_path = weights_path_of(Path(source), weights)
    metadata = _weights_metadata(weights_path)
    epoch = metadata.get("epoch")
    state_path = run_dir / LAST_STATE
    if epoch is None and weights_path.name == LAST_WEIGHTS and state_path.is_file():
        epoch = load_state(state_path).get("epoch")
    config = read_json(run_dir / "config.json")
    return {
        "weights": weights_path.name,
        "epoch": None if epoch is None else int(epoch),
        "source": metadata.get("source"),
        "epochs": config.get("epochs"),
        "finished": (run_dir / "metrics.json").is_file() or not state_path.is_file(),
    }


def describe_checkpoint(info: dict[str, Any] | None) -> str:
    """``"best.safetensors, epoch 3 of 4, EMA weights"`` for :func:`checkpoint_info`'s dict."""
    if not info:
        return "weights of unrecorded origin"
    parts = [info["weights"]]
    if info.get("epoch") is not None:
        of = f" of {info['epochs']}" if info.get("epochs") else ""
        parts.append(f"epoch {info['epoch']}{of}")
    if info.get("source"):
        parts.append(f"{'EMA' if info['source'] == 'ema' else 'raw'} weights")
    if info.get("finished") is False:
        parts.append("run not finished")
    return ", ".join(parts)
