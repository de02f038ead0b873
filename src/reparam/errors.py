"""The errors a user can fix, one type per kind of mistake; the bottom layer of the package.

Every type derives from :class:`ReparamError`, which the ``reparam`` command prints as one line
(``reparam <command>: error: ...``, exit status 2) instead of a traceback. Each also keeps the
built-in base it has always had (``RuntimeError`` or ``ValueError``), so ``except`` clauses
written against those still work.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DataError",
    "BusyError",
    "DeployError",
    "FusionError",
    "RecipeError",
    "ReparamError",
    "RunInterrupted",
    "ScaleError",
    "Terminated",
    "TrainingError",
    "UserError",
]


class ReparamError(Exception):
    """Base of every error caused by the input (files, specs, settings), not by a bug.

    One line wherever it is raised: torch re-raises an error of a data loader worker (or its
    pin-memory thread) in the main process as ``type(err)(text)``, where the text is "Caught ...
    in DataLoader worker process N." and the worker's whole traceback; such a text is cut back
    to the original message."""

    def __init__(self, *args: object):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_worker_message(args[0], type(self)),)
        super().__init__(*args)


def _worker_message(text: str, kind: type) -> str:
    """The original message inside torch's ``ExceptionWrapper.reraise`` text (else ``text``):
    what follows the traceback's last ``<module>.<name>: ``."""
    if not text.startswith(f"Caught {kind.__name__} in "):
        return text
    marker = f"\n{kind.__module__}.{kind.__qualname__}: "
    at = text.rfind(marker)
    return text[at + len(marker) :].strip() if at >= 0 else text


class BusyError(ReparamError, RuntimeError):
    """Another process is writing the same run folder, deploy folder or scale file."""


class UserError(ReparamError):
    """An argument that cannot work: a command-line flag, or a parameter of a function (such as
    :func:`reparam.models.convert.convert_checkpoint`'s model name or layout) that names nothing
    known, is out of range or does not go with the others."""


class FusionError(ReparamError, RuntimeError):
    """Fusing now would silently produce a different function."""


class DataError(ReparamError, ValueError):
    """A data spec, path or file is missing or not in the expected format."""


class CheckpointError(ReparamError, RuntimeError):
    """A checkpoint or run folder is missing, corrupted or for another model."""


class ScaleError(CheckpointError):
    """Scales that do not fit the model: wrong keys, shapes, model, or non-finite values."""


class DeployError(ReparamError, RuntimeError):
    """A deployable model or its inputs do not fit: wrong input size, corrupted ONNX file,
    calibration data of the wrong shape, ONNX output that differs from torch."""


class RecipeError(ReparamError, ValueError):
    """A recipe name, file or override is unknown or has a value of the wrong type."""


class RunInterrupted(ReparamError):
    """A run stopped by a signal after saving (resumable); the command exits ``128 + signal``
    (143 for SIGTERM, 130 for Ctrl-C) instead of going on to its next stage."""

    def __init__(self, message: str, signal: int | None = None):
        super().__init__(message)
        self.signal = signal


class TrainingError(ReparamError, RuntimeError):
    """Training cannot go on (non-finite loss, inconsistent resume)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM as an exception (the ``reparam`` command and a training run raise it), so that
    cleanup runs as for Ctrl-C's :class:`KeyboardInterrupt`; the command exits 143."""
