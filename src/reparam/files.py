"""Atomic writes and safe loading of weights, states and JSON files (no pickle is executed).

- Weights are safetensors (no pickle); optimizer/scheduler/RNG state is ``torch.save`` data that
  is read back with ``weights_only=True`` only.
- Every write goes to a temp file in the same folder and is renamed over the target, so a killed
  process leaves the previous file intact. A write that fails (a full disk, an I/O error) is one
  :class:`CheckpointError` naming the file and the reason, and leaves no temp file and no folder
  it created.
What the files mean (run folders, fused folders, scale files) is known to the layers above;
this module knows only enough to name what a folder holds when it refuses to replace it.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from reparam.errors import CheckpointError, ReparamError

__all__ = [
    "CheckpointError",
    "atomic_path",
    "write_error",
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

log = logging.getLogger(__name__)

FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL = 1 << 20  # bytes free below which a failed write is taken for a full disk
NO_SPACE = re.compile(r"No space left|os error 28|code: 28")  # torch's and safetensors' texts


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


def write_error(path: str | os.PathLike, err: BaseException) -> CheckpointError:
    """One line for a failed write of ``path``: the OS reason (``No space left on device``, ...);
    torch's and safetensors' write errors, which drop the OS error, are read as a full disk when
    the message or the file system says so."""
    if isinstance(err, OSError) and err.errno is not None:
        reason = os.strerror(err.errno)
    elif NO_SPACE.search(str(err)) or _disk_full(path):
        reason = os.strerror(errno.ENOSPC)
    else:
        reason = first_line(err)
    return CheckpointError(f"{path}: cannot write ({reason})")


def failed_write(err: BaseException, path: str | os.PathLike) -> bool:
    """Whether ``err``, raised while writing a folder's files, is a failed write: a full disk,
    an I/O error, or any error raised while the file system is full."""
    if isinstance(err, OSError) and err.errno in (*FULL_DISK, errno.EIO):
        return True
    return bool(NO_SPACE.search(str(err))) or _disk_full(path)


def _disk_full(path: str | os.PathLike) -> bool:
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < NEARLY_FULL


def make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the folders created, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)  # FileExistsError / NotADirectoryError under a file
    return missing[::-1]


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders :func:`_make_parents` created, innermost first, while they are empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success flush it to disk and rename it over
    ``path`` (atomic on POSIX; the folder is flushed too, so the rename survives a power cut).

    A failed write (``OSError``, torch's and safetensors' write errors) raises
    :func:`write_error`; the temp file and the folders created for ``path`` are removed."""
    path = Path(path)
    made = make_parents(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 whatever the umask
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except ReparamError:
        raise
    except (OSError, RuntimeError, SafetensorError) as err:
        raise write_error(path, err) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if not path.exists():
            remove_empty(made)


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
    """Raise :class:`CheckpointError` unless a file can be written at ``path``: checked before
    long work, so it never ends in a write error. Creates nothing (a missing folder is checked
    at its nearest existing parent)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; expected a file path")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CheckpointError(f"{path}: cannot write here ({folder} is a file)")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise CheckpointError(f"{path}: cannot write here ({err.strerror or err})") from None


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
