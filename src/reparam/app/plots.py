"""matplotlib, imported only when a plot is drawn (``import reparam`` stays free of it); without
the ``[plots]`` extra a plot ends in one line naming it."""

from __future__ import annotations

from typing import Any

from reparam.extras import require

__all__ = ["pyplot"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no screen needed)."""
    matplotlib = require("matplotlib", extra="plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
