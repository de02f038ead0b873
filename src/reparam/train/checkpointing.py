"""Run-folder checkpoints: ``last.safetensors`` + ``last.state.pt``, ``best.safetensors``.

``last.state.pt`` holds only tensors and plain containers (it loads with ``weights_only=True``):
the position (``epoch``, ``batch`` done in that epoch, ``global_step``), optimizer, scheduler and
EMA state, every rank's RNG states, running figures and the resolved config. Both files are
written atomically; the weights carry their ``global_step`` in the safetensors metadata and
loading checks it against the state's.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..checkpoint import CheckpointError, atomic_path, load_state, load_weights

__all__ = [
    "get_rng_state",
    "load_training_state",
    "save_training_state",
    "set_rng_state",
    "write_log_csv",
]

LAST_WEIGHTS, LAST_STATE, BEST_WEIGHTS = "last.safetensors", "last.state.pt", "best.safetensors"


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
    """Write both files to temp names, then rename them back to back (the rename window is the
    only moment a kill can pair new weights with an old state; loading detects that case)."""
    step = str(state["global_step"])
    tensors = {k: v.detach().contiguous().clone() for k, v in model_state.items()}
    with atomic_path(out / LAST_STATE) as state_tmp, atomic_path(out / LAST_WEIGHTS) as weights_tmp:
        save_file(tensors, str(weights_tmp), metadata={"global_step": step})
        torch.save(state, state_tmp)


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
    weights = load_weights(out / LAST_WEIGHTS)
    with safe_open(str(out / LAST_WEIGHTS), framework="pt") as handle:
        weights_step = (handle.metadata() or {}).get("global_step")
    if weights_step != str(state.get("global_step")):
        raise CheckpointError(
            f"{out}: {LAST_WEIGHTS} (step {weights_step}) and {LAST_STATE} "
            f"(step {state.get('global_step')}) differ; the run was killed between the two writes"
        )
    return weights, state
