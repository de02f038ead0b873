"""``reparam bench train``: training images/s, memory and max batch, models side by side.

Two phases:

1. memory, one fresh process per model so the process peak RSS belongs to that model alone:
   per batch size the accounted memory (:mod:`reparam.app.bench.memory`) and peak RSS, and with a
   budget the largest batch that fits it (:mod:`reparam.app.bench.maxbatch`, predicted from the
   largest listed batch, verified by a full training step);
2. speed, all subjects in this process, interleaved (:mod:`reparam.app.bench.timing`): per window
   ``images/s = batch * steps / seconds`` and the seconds inside ``optimizer.step()``.

Each result (**contract**) has at least ``model``, ``batch_size``, ``image_size``, ``optimizer``,
``train_images_per_s`` (median over windows), ``peak_train_memory_mb`` (accounted),
``max_batch_size`` (with a budget) and ``machine``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import torch

from reparam.app.bench.machine import machine_info
from reparam.app.bench.maxbatch import largest_fitting_batch, predict_max_batch
from reparam.app.bench.memory import (
    MemoryBreakdown,
    activation_memory_mb,
    measure_training_memory,
    peak_rss_mb,
    rss_mb,
)
from reparam.app.bench.subjects import ModelSpec, TrainSubject
from reparam.app.bench.timing import interleaved_windows

__all__ = ["TrainBenchConfig", "in_fresh_process", "memory_job", "run_train_bench"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainBenchConfig:
    specs: tuple[ModelSpec, ...]
    batch_sizes: tuple[int, ...]
    image_size: int = 32
    num_classes: int = 100
    steps: int = 10
    warmup: int = 3
    repeats: int = 5
    threads: int = 2
    memory_budget_mb: float | None = None
    command: str = ""


def memory_job(
    spec: ModelSpec,
    batch_sizes: tuple[int, ...],
    image_size: int,
    num_classes: int,
    threads: int,
    budget_mb: float | None,
) -> dict[str, Any]:
    """Memory of training ``spec`` (run in a fresh process, so the RSS is this model's alone).

    ``{"per_batch": {batch: record}, "max_batch": {...} (with a budget)}``. Batch sizes run in
    ascending order, so the running peak RSS after each is that batch's peak."""
    torch.set_num_threads(threads)
    rss_after_import = rss_mb()
    subject = TrainSubject(spec, min(batch_sizes), image_size, num_classes)
    per_batch: dict[int, dict[str, Any]] = {}
    for batch in sorted(batch_sizes):
        subject.set_batch(batch)
        breakdown = _account(subject)
        for _ in range(2):
            subject.step()
        peak = peak_rss_mb()
        per_batch[batch] = {
            "optimizer": subject.optimizer_name,
            "parameters": subject.parameter_count,
            "memory": breakdown.as_dict(),
            "peak_train_memory_mb": breakdown.total_mb,
            "peak_rss_mb": peak,
            "rss_after_import_mb": rss_after_import,
            "rss_train_mb": None
            if peak is None or rss_after_import is None
            else peak - rss_after_import,
        }
    result: dict[str, Any] = {"per_batch": per_batch}
    if budget_mb is not None:
        result["max_batch"] = _max_batch(subject, budget_mb)
    return result


def _account(subject: TrainSubject) -> MemoryBreakdown:
    return measure_training_memory(
        subject.model, subject.optimizer, subject.step, subject.forward_loss, subject.batch_size
    )


def _max_batch(subject: TrainSubject, budget_mb: float) -> dict[str, Any]:
    """Largest batch whose accounted memory fits ``budget_mb``: predicted from the subject's
    current batch, searched with forward passes (saved activations), verified by a full training
    step at the answer."""
    reference = _account(subject)
    predicted = predict_max_batch(budget_mb, reference.fixed_mb, reference.activations_per_image_mb)

    def fits(batch: int) -> bool:
        subject.set_batch(batch)
        return (
            reference.fixed_mb + activation_memory_mb(subject.model, subject.forward_loss)
            <= budget_mb
        )

    # BatchNorm in training needs 2 values per channel (1x1 feature maps at the end of the net)
    fixed_fits = reference.fixed_mb < budget_mb
    found = largest_fitting_batch(fits, predicted, minimum=2) if fixed_fits else 0
    result: dict[str, Any] = {
        "budget_mb": budget_mb,
        "predicted": predicted,
        "max_batch_size": found,
    }
    if found > 0:
        subject.set_batch(found)
        verified = _account(subject).total_mb
        result.update(verified_memory_mb=verified, verified_fits=verified <= budget_mb)
    return result


def in_fresh_process(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a new (spawned) Python process; a process that dies raises
    ``concurrent.futures.process.BrokenProcessPool``."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _here(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    return function(*args)


def run_train_bench(
    config: TrainBenchConfig, progress: Progress, fresh_process: bool = True
) -> list[dict[str, Any]]:
    """Run both phases; one result per (model, batch size), in the order given.

    ``fresh_process=False`` runs the memory jobs in this process: quicker, but the peak RSS then
    covers everything this process ran before."""
    torch.set_num_threads(config.threads)
    isolate = in_fresh_process if fresh_process else _here
    keys = [(spec, batch) for spec in config.specs for batch in config.batch_sizes]
    memory: dict[ModelSpec, dict[str, Any]] = {}
    for spec in config.specs:
        budget = (
            f" and max batch within {config.memory_budget_mb:g} MiB"
            if config.memory_budget_mb
            else ""
        )
        progress(f"memory{budget}: {spec.label}")
        memory[spec] = isolate(
            memory_job,
            spec,
            config.batch_sizes,
            config.image_size,
            config.num_classes,
            config.threads,
            config.memory_budget_mb,
        )
    machine_before = machine_info()
    progress(f"speed: building {len(keys)} subjects")
    subjects = [
        TrainSubject(spec, batch, config.image_size, config.num_classes) for spec, batch in keys
    ]
    windows = interleaved_windows(
        [subject.step for subject in subjects],
        config.steps,
        config.warmup,
        config.repeats,
        on_round=lambda r: progress(f"speed: round {r + 1}/{config.repeats} done"),
    )
    machine = machine_before | {"load_average_after": machine_info()["load_average"]}
    results = []
    for (spec, batch), subject_windows in zip(keys, windows):
        images_per_s = [batch / w.seconds_per_call for w in subject_windows]
        optimizer_ms = [1e3 * w.phase_seconds_per_call for w in subject_windows]
        record = {
            "benchmark": "train",
            "model": spec.label,
            "model_name": spec.name,
            "batch_size": batch,
            "image_size": config.image_size,
            "num_classes": config.num_classes,
            **memory[spec]["per_batch"][batch],
            "train_images_per_s": statistics.median(images_per_s),
            "step_ms": statistics.median([1e3 * w.seconds_per_call for w in subject_windows]),
            "optimizer_step_ms": statistics.median(optimizer_ms),
            "window_images_per_s": images_per_s,
            "window_optimizer_step_ms": optimizer_ms,
            "steps": config.steps,
            "warmup": config.warmup,
            "repeats": config.repeats,
            "machine": machine,
            "command": config.command,
        }
        if "max_batch" in memory[spec]:
            record["max_batch_size"] = memory[spec]["max_batch"]["max_batch_size"]
            record["max_batch"] = memory[spec]["max_batch"]
        results.append(record)
    return results
