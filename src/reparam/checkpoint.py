"""Atomic writes and safe loading of weights, states and JSON files.

- Weights are safetensors (no pickle); optimizer/scheduler/RNG state is ``torch.save`` data that
  is read back with ``weights_only=True`` only.
- Every write goes to a temp file in the same folder and is renamed over the target, so a killed
  process leaves the previous file intact. A write that fails (a full disk, an I/O error) is one
  :class:`CheckpointError` naming the file and the reason, and leaves no temp file and no folder
  it created.
- A folder written whole (:func:`atomic_folder`) carries a marker, ``.reparam.json``
  (``{"kind": ..., "files": [...]}``): what kind of output it is and every file reparam put in
  it. Such a folder is replaced only by an output of the same kind and only while it holds
  nothing else (:func:`check_replaceable`): never a run, data or anyone else's files.

What the files mean (run folders, fused folders, scale files) is known to the layers above;
this module knows only enough to name what a folder holds when it refuses to replace it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import BusyError, CheckpointError, ReparamError

__all__ = [
    "MARKER",
    "RUN_SIGNS",
    "CheckpointError",
    "atomic_folder",
    "atomic_path",
    "check_replaceable",
    "describe_folder",
    "describe_foreign",
    "find_data",
    "read_marker",
    "write_error",
    "write_marker",
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

log = logging.getLogger(__name__)

MARKER = ".reparam.json"
#: files that only a training run folder holds
RUN_SIGNS = ("last.state.pt", "metrics.json", "last.safetensors", "best.safetensors")
IMAGE_SUFFIXES = frozenset(
    (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
)
CIFAR_FILE = re.compile(r"data_batch_\d+|test_batch|batches\.meta")
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
WALK_LIMIT = 10_000
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


def _failed_write(err: BaseException, path: str | os.PathLike) -> bool:
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


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the folders created, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)  # FileExistsError / NotADirectoryError under a file
    return missing[::-1]


def _remove_empty(folders: list[Path]) -> None:
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
    made = _make_parents(path.parent)
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
            _remove_empty(made)


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


def read_marker(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of a folder reparam wrote (``{"kind": ..., "files": [...]}``), else None."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("kind"), str) else None


def write_marker(folder: str | os.PathLike, kind: str, list_files: bool = True) -> None:
    """Mark ``folder`` as a ``kind`` output; with ``list_files`` the marker lists every file in it
    (then it may be replaced whole by the next ``kind`` output, see :func:`check_replaceable`)."""
    folder = Path(folder)
    marker: dict[str, Any] = {"kind": kind}
    if list_files:
        marker["files"] = sorted(
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.name != MARKER
        )
    write_json(marker, folder / MARKER)


def _data_kind(name: str) -> str | None:
    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
        return "image data"
    return "CIFAR data" if CIFAR_FILE.fullmatch(name) else None


def find_data(folder: str | os.PathLike, depth: int = 3) -> str | None:
    """``holds image data (PATH)`` (or CIFAR data) when such a file lies in ``folder`` or up to
    ``depth - 1`` folders below it (class folders, split/class folders), else None."""
    folder = Path(folder)
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        for name in sorted(files):
            data = _data_kind(name)
            if data:
                return f"holds {data} ({here / name})"
        if len(here.relative_to(folder).parts) >= depth - 1:
            dirs.clear()
        dirs.sort()
    return None


def describe_foreign(folder: str | os.PathLike, listed: Collection[str] = ()) -> str | None:
    """What ``folder`` holds besides ``listed`` (paths relative to it) and its marker, the most
    serious first: a training run, image or CIFAR data, another reparam output, other files;
    None when nothing (empty folders do not count). Past :data:`WALK_LIMIT` files the walk
    stops at the first thing found."""
    folder = Path(folder)
    found: dict[str, str] = {}
    seen = 0
    for root, dirs, files in os.walk(folder):
        seen += len(files)
        if found and seen > WALK_LIMIT:  # a large tree: what was found so far is enough
            break
        dirs.sort()
        here = Path(root)
        if any(name in files for name in RUN_SIGNS):
            found["run"] = (
                "is a training run folder" if here == folder else f"holds a training run ({here})"
            )
            break
        if here != folder and MARKER in files and "output" not in found:
            kind = (read_marker(here) or {}).get("kind", "output")
            found["output"] = f"holds a reparam {kind} folder ({here})"
        for name in sorted(files):
            relative = (here / name).relative_to(folder).as_posix()
            if relative == MARKER or relative in listed:
                continue
            data = _data_kind(name)
            if data:
                found.setdefault("data", f"holds {data} ({here / name})")
            else:
                found.setdefault("other", f"holds files reparam did not write ({here / name})")
        for name in dirs:
            if (here / name).is_symlink():
                found.setdefault("other", f"holds a link reparam did not make ({here / name})")
    return next((found[k] for k in ("run", "data", "output", "other") if k in found), None)


def describe_folder(folder: str | os.PathLike) -> str | None:
    """What ``folder`` is: ``is a reparam KIND folder`` when marked, else
    :func:`describe_foreign` (None for an empty or absent folder)."""
    marker = read_marker(folder)
    return f"is a reparam {marker['kind']} folder" if marker else describe_foreign(folder)


def check_replaceable(
    path: str | os.PathLike,
    kind: str,
    legacy: Callable[[Path], Collection[str]] | None = None,
    flag: str = "--out",
) -> None:
    """Raise :class:`CheckpointError` unless ``path`` may be replaced whole by a ``kind`` output:
    it is absent, an empty folder, or a ``kind`` folder reparam wrote that holds only what its
    marker lists (without a marker, written before markers: only the names ``legacy(path)``
    returns). The message names what is there (:func:`describe_foreign`) and ``flag``."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise CheckpointError(f"{path}: is a file; {flag} must be a folder")
    marker = read_marker(path)
    if marker is not None and marker["kind"] != kind:
        raise CheckpointError(
            f"{path}: is a reparam {marker['kind']} folder, not a {kind} folder; "
            f"choose another {flag}"
        )
    if marker is not None:
        listed = set(marker.get("files") or ())
    else:
        listed = set(legacy(path)) if legacy is not None else set()
    found = describe_foreign(path, listed)
    if found:
        raise CheckpointError(
            f"{path}: {found}; reparam replaces only an empty folder or a {kind} folder it "
            f"wrote, so nothing was changed: choose another {flag}"
        )


def _remove_stale(path: Path) -> None:
    """Clean up after a killed :func:`atomic_folder` of ``path``: its temp folders are removed
    and a previous version renamed aside (a kill between the two renames) is put back."""
    temp = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    for entry in path.parent.iterdir():
        if temp.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            log.info("removing %s, left by an interrupted write of %s", entry, path)
            shutil.rmtree(entry)
    old = path.parent / f".{path.name}.old"
    if old.is_dir() and not old.is_symlink():
        if path.exists():
            shutil.rmtree(old)
        else:
            log.info("restoring %s from %s (an interrupted replacement)", path, old)
            os.replace(old, path)


@contextmanager
def atomic_folder(
    path: str | os.PathLike, kind: str, legacy: Callable[[Path], Collection[str]] | None = None
) -> Iterator[Path]:
    """Yield a new temp folder beside ``path``; on success it is marked as a ``kind`` output
    (:func:`write_marker`) and replaces ``path`` whole (an old ``path`` is renamed aside, the new
    folder renamed in, the old one deleted), so no file of an earlier version is left among the
    new ones. ``path`` is checked by :func:`check_replaceable` (``kind``, ``legacy``) at the swap.

    On failure the temp folder (and any folder created for it) is deleted, ``path`` untouched,
    and a failed write (a full disk, an I/O error, torch's write errors) is one
    :func:`write_error`. Hold :func:`exclusive_lock` on ``path``: the temp folders of earlier
    writers that were killed are removed first."""
    path = Path(path)
    made = _make_parents(path.parent)
    work = None
    try:
        _remove_stale(path)
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(work, 0o777 & ~current_umask())  # mkdtemp makes 0700 whatever the umask
        yield work
        write_marker(work, kind)
        check_replaceable(path, kind, legacy)
        old = path.parent / f".{path.name}.old"
        if path.exists():
            os.replace(path, old)
        os.replace(work, path)
        fsync_path(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except ReparamError:
        raise
    except (OSError, RuntimeError, SafetensorError) as err:
        if _failed_write(err, path):
            raise write_error(path, err) from None
        raise
    finally:
        if work is not None and work.exists():
            shutil.rmtree(work)
        if not path.exists():
            _remove_empty(made)


@contextmanager
def exclusive_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.<name>.lock`` beside ``target`` (a run folder, deploy
    folder or file) while writing it; a second process gets :class:`BusyError` naming the
    holder's PID. The kernel releases the lock when its process dies: a killed run never
    leaves a stale lock behind. When ``target`` was not written, the lock file and the folders
    made for it are removed again (a lock file that was removed under a waiting process is
    detected by its inode, and the new one locked)."""
    target = Path(target)
    made = _make_parents(target.parent)
    lock_path = target.parent / f".{target.name}.lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            _remove_empty(made)
            raise BusyError(
                f"{target} is being written by another reparam process (PID {holder}); wait for "
                "it to finish or choose another output"
            ) from None
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it before we locked it: lock the current file
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        if not target.exists():
            lock_path.unlink(missing_ok=True)  # while locked: see the inode check above
            _remove_empty(made)
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
