"""The largest training batch that fits a memory budget.

The budget applies to accounted training memory (:mod:`reparam.app.bench.memory`), the CPU
stand-in for a GPU allocator's limit: ``fixed + batch * per_image <= budget``. The prediction
``floor((budget - fixed) / per_image)`` from one measured batch is only a starting guess (per-image
memory is not exactly constant: per-channel statistics, rounding); the search then measures
real batches, galloping from the guess and bisecting, so the answer is the largest batch whose
measured memory fits, given that memory grows with the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["largest_fitting_batch", "predict_max_batch"]


def predict_max_batch(budget_mb: float, fixed_mb: float, per_image_mb: float) -> int:
    """``floor((budget - fixed) / per_image)``, at least 0."""
    if per_image_mb <= 0:
        raise ValueError(f"per-image memory must be positive, got {per_image_mb}")
    return max(0, math.floor((budget_mb - fixed_mb) / per_image_mb))


def largest_fitting_batch(
    fits: Callable[[int], bool], guess: int, limit: int = 1 << 20, minimum: int = 1
) -> int:
    """Largest ``b`` in ``[minimum, limit]`` with ``fits(b)``, for ``fits`` true up to some batch
    and false after it; 0 when even ``minimum`` does not fit. Starts at ``guess``; ``O(log)``
    calls of ``fits``, two when the guess is exact. ``fits`` is only called inside the range
    (``minimum=2`` for training with BatchNorm, which needs two values per channel)."""
    if not 1 <= minimum <= limit:
        raise ValueError(f"need 1 <= minimum <= limit, got minimum {minimum}, limit {limit}")
    floor = minimum - 1  # stands for "fits" below the range
    guess = min(max(guess, minimum), limit)
    if fits(guess):
        low, step = guess, 1  # low fits; find a high that does not
        while True:
            high = min(low + step, limit + 1)
            if high > limit or not fits(high):
                break
            low, step = high, step * 2
    else:
        high, step = guess, 1  # high does not fit; find a low that does
        while True:
            low = max(high - step, floor)
            if low == floor or fits(low):
                break
            high, step = low, step * 2
    while high - low > 1:  # invariant: low fits (or is floor), high does not (or is limit + 1)
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low if low >= minimum else 0
