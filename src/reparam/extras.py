"""Optional dependencies, imported where a feature uses them.

``pip install reparam`` installs what building, training (``reparam train``) and fusing models
need: torch, torchvision, timm, safetensors, tqdm and pydantic. Each other feature names the
extra that brings its packages (:data:`EXTRAS`, as ``pyproject.toml`` declares them)::

    onnx = require("onnx", extra="deploy")   # the module, or MissingExtraError:
    # onnx is not installed; pip install 'reparam[deploy]'

The ``reparam`` command prints a :class:`MissingExtraError` as its usual one line (exit
status 2).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from reparam.errors import ReparamError
from reparam.files import first_line

__all__ = ["EXTRAS", "MissingExtraError", "install_command", "require", "require_extra"]

# extra -> the importable top-level packages it installs
EXTRAS: dict[str, tuple[str, ...]] = {
    "deploy": ("onnx", "onnxruntime", "onnxscript"),
    "qat": ("torchao",),
    "plots": ("matplotlib",),
    "tb": ("tensorboard",),
    "bench": ("scipy", "sklearn"),
}


class MissingExtraError(ReparamError, ImportError):
    """A feature's optional dependency is not installed (or does not import); the message
    names the ``pip install`` command of the extra that brings it."""


def install_command(extra: str) -> str:
    """The pip command that installs ``extra``."""
    return f"pip install 'reparam[{extra}]'"


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (a dotted name is fine) and return it; when its package is missing,
    raise :class:`MissingExtraError` naming ``pip install 'reparam[<extra>]'``."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; one of {sorted(EXTRAS)}")
    package = module.partition(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = isinstance(err, ModuleNotFoundError) and (
            err.name is None or err.name == package or module.startswith(err.name + ".")
        )
        reason = "is not installed" if missing else f"cannot be imported ({first_line(err)})"
        raise MissingExtraError(f"{package} {reason}; {install_command(extra)}") from None


def require_extra(extra: str) -> None:
    """Check, before any work starts, that every package of ``extra`` is installed
    (:class:`MissingExtraError` naming the first that is not). Nothing is imported: a package's
    import-time cost and notices come where it is used (:func:`require`)."""
    for package in EXTRAS[extra]:
        if not _installed(package):
            raise MissingExtraError(f"{package} is not installed; {install_command(extra)}")


def _installed(package: str) -> bool:
    if package in sys.modules:  # None there: an import known to fail
        return sys.modules[package] is not None
    return importlib.util.find_spec(package) is not None
