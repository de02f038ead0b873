"""Output folders the application writes whole, and the locks that keep two writers apart.

A folder written whole (:func:`atomic_folder`) carries a marker, ``.reparam.json``
(``{"kind": ..., "files": [...]}``): what kind of output it is and every file reparam put in
it. Such a folder is replaced only by an output of the same kind and only while it holds
nothing else (:func:`check_replaceable`): never a run, data or anyone else's files.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from reparam.errors import BusyError, CheckpointError, ReparamError
from reparam.files import (
    current_umask,
    failed_write,
    fsync_path,
    make_parents,
    remove_empty,
    write_error,
    write_json,
)

log = logging.getLogger(__name__)

MARKER = ".reparam.json"


#: files that only a training run folder holds
RUN_SIGNS = ("last.state.pt", "metrics.json", "last.safetensors", "best.safetensors")


IMAGE_SUFFIXES = frozenset(
    (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
)


CIFAR_FILE = re.compile(r"data_batch_\d+|test_batch|batches\.meta")


WALK_LIMIT = 10_000


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
    made = make_parents(path.parent)
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
        if failed_write(err, path):
            raise write_error(path, err) from None
        raise
    finally:
        if work is not None and work.exists():
            shutil.rmtree(work)
        if not path.exists():
            remove_empty(made)


@contextmanager
def exclusive_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.<name>.lock`` beside ``target`` (a run folder, deploy
    folder or file) while writing it; a second process gets :class:`BusyError` naming the
    holder's PID. The kernel releases the lock when its process dies: a killed run never
    leaves a stale lock behind. When ``target`` was not written, the lock file and the folders
    made for it are removed again (a lock file that was removed under a waiting process is
    detected by its inode, and the new one locked)."""
    target = Path(target)
    made = make_parents(target.parent)
    lock_path = target.parent / f".{target.name}.lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            remove_empty(made)
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
            remove_empty(made)
        os.close(fd)  # releases the lock
