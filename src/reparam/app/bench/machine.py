"""The ``machine`` object recorded with every benchmark result (**contract**: at least
``cpu_model``, ``cores``, ``torch_version``, ``threads``)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

import torch

__all__ = ["cpu_model", "machine_info"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, core count, library versions, torch threads and the load average right now."""
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "reparam_version": _version("reparam"),
        "torch_version": torch.__version__,
        "timm_version": _version("timm"),
        "onnxruntime_version": _version("onnxruntime"),
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
