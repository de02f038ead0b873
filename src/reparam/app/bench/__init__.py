"""Benchmarks behind ``reparam bench``: training throughput, memory accounting, max batch search,
inference timing. Every speed ratio is measured side by side (:mod:`reparam.app.bench.timing`)."""

from reparam.app.bench.maxbatch import largest_fitting_batch, predict_max_batch
from reparam.app.bench.memory import MemoryBreakdown, activation_memory_mb, measure_training_memory
from reparam.app.bench.timing import interleaved_windows, paired_ratio

__all__ = [
    "MemoryBreakdown",
    "activation_memory_mb",
    "interleaved_windows",
    "largest_fitting_batch",
    "measure_training_memory",
    "paired_ratio",
    "predict_max_batch",
]
