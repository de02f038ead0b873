"""Atomic writes and safe loading of weights, states and JSON files.

- Weights are safetensors (no pickle); optimizer/scheduler/RNG state is ``torch.save`` data that
  is read back with ``weights_only=True`` only.
- Every write goes to a temp file in the same folder and is renamed over the target, so a killed
  process leaves the previous file intact.

What the files mean (run folders, fused folders, scale files) is known to the layers above.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import BusyError, CheckpointError

__all__ = [
    "CheckpointError",
    "atomic_folder",
    "atomic_path",
    "exclusive_lock",
    "fsync_path",
    "check_finite",
    "check_writable",
    "current_umask",
    "first_line",
    "json_text",
    "non_finite_tensors",
    "load_state",
    "load_weights",
    "read_json",
    "save_state",
    "save_weights",
    "write_json",
]


def current_umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success flush it to disk and rename it over
    ``path`` (atomic on POSIX; the folder is flushed too, so the rename survives a power cut)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 whatever the umask
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _without_non_finite(obj: Any, path: str, found: list[str]) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append(path or "<value>")
        return None
    if isinstance(obj, dict):
        return {
            k: _without_non_finite(v, f"{path}.{k}" if path else str(k), found)
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [_without_non_finite(v, f"{path}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def json_text(obj: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """Strict JSON for ``obj``: a NaN or infinity (not JSON) becomes ``null``, and a dict gets a
    flag ``"non_finite": [paths of those values]``."""
    found: list[str] = []
    clean = _without_non_finite(obj, "", found)
    if found and isinstance(clean, dict):
        clean["non_finite"] = found
    return json.dumps(clean, indent=indent, sort_keys=sort_keys, allow_nan=False)


def check_writable(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless a file can be written at ``path`` (its folder is
    created if needed): checked before long work, so it never ends in a write error."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise CheckpointError(f"{path}: cannot write here ({err.strerror or err})") from None


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temp folder beside ``path``; on success it replaces ``path`` whole (an old
    ``path`` is renamed aside, the new folder renamed in, the old one deleted), so no file of an
    earlier version is left among the new ones. On failure the temp folder is deleted and
    ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(work, 0o777 & ~current_umask())  # mkdtemp makes 0700 whatever the umask
    try:
        yield work
        old = path.parent / f".{path.name}.old"
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(work, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work)


@contextmanager
def exclusive_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.<name>.lock`` beside ``target`` (a run folder, deploy
    folder or file) while writing it; a second process gets :class:`BusyError` naming the
    holder's PID. The kernel releases the lock when its process dies: a killed run never
    leaves a stale lock behind."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise BusyError(
            f"{target} is being written by another reparam process (PID {holder}); wait for it "
            "to finish or choose another output"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """:func:`json_text` of ``obj``, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def non_finite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity, sorted."""
    return sorted(
        name
        for name, tensor in tensors.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    )


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise :class:`CheckpointError` naming the tensors of ``what`` that are not finite."""
    bad = non_finite_tensors(tensors)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(f"{what}: {len(bad)} tensor(s) hold NaN or inf ({shown})")


def save_weights(
    state_dict: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a state dict as safetensors, atomically (tensors made contiguous, no shared storage).

    Non-finite weights are refused (:func:`check_finite`): a checkpoint is never written broken.
    """
    check_finite(state_dict, f"refusing to write {path}")
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


def first_line(err: BaseException) -> str:
    """The first line of an error's message (torch's load errors run to a dozen lines)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: state file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(
            f"{path}: cannot load training state safely ({first_line(err)})"
        ) from None
