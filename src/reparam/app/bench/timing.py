"""Interleaved timed windows: the way every speed figure here is taken.

Each subject is warmed up, then ``repeats`` rounds run one timed window (``steps`` calls) per
subject; the order of subjects rotates every round. Subjects compared with each other are thus
measured seconds apart, under the same machine load, and a paired ratio per round
(``a[r] / b[r]``) cancels drift that a ratio of separate runs would not.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Window", "interleaved_windows", "paired_ratio"]


@dataclass
class Window:
    """Seconds per call of one window, plus seconds per call of a named inner phase."""

    seconds_per_call: float
    phase_seconds_per_call: float = 0.0


def _window(call: Callable[[], float | None], steps: int) -> Window:
    phase = 0.0
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(steps):
            phase += call() or 0.0
        elapsed = time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return Window(elapsed / steps, phase / steps)


def interleaved_windows(
    calls: Sequence[Callable[[], float | None]],
    steps: int,
    warmup: int,
    repeats: int,
    on_round: Callable[[int], None] | None = None,
) -> list[list[Window]]:
    """``result[i][r]``: window ``r`` of ``calls[i]``. A call may return seconds spent in an inner
    phase (e.g. the optimizer step), averaged per call into ``Window.phase_seconds_per_call``."""
    if steps < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"need steps >= 1, repeats >= 1, warmup >= 0; got {steps}, {repeats}, {warmup}"
        )
    for call in calls:
        for _ in range(warmup):
            call()
    windows: list[list[Window]] = [[] for _ in calls]
    for round_index in range(repeats):
        shift = round_index % len(calls)
        order = list(range(len(calls)))[shift:] + list(range(len(calls)))[:shift]
        for i in order:
            windows[i].append(_window(calls[i], steps))
        if on_round is not None:
            on_round(round_index)
    return windows


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of ``a[r] / b[r]`` (the windows of one round ran side by side)."""
    if len(a) != len(b) or not a:
        raise ValueError(
            f"paired ratio needs two equally long, non-empty series; got {len(a)}, {len(b)}"
        )
    return statistics.median(x / y for x, y in zip(a, b))
