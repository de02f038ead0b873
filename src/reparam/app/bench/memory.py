"""Training-memory accounting: where the bytes of one training step live.

``accounted = parameters + buffers + gradients + optimizer state + saved activations``, each
counted once per unique storage (views and tensors shared between categories count once, in the
first category that holds them, in that order). Saved activations are the tensors autograd keeps
for backward, captured with ``torch.autograd.graph.saved_tensors_hooks`` during one forward: they
are all alive at the end of the forward, when gradients of the previous step (or, with
``set_to_none``, the ones about to be written) also need room, so the sum is the step's peak
minus short-lived temporaries (kernel workspaces, the forward intermediates autograd does not
keep). The process view, peak RSS, is read from ``/proc/self/status`` (Linux; ``None`` elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "MIB",
    "MemoryBreakdown",
    "StorageCounter",
    "activation_memory_mb",
    "measure_training_memory",
    "optimizer_tensors",
    "peak_rss_mb",
    "rss_mb",
]

MIB = 2**20


def _storage_key(tensor: Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


class StorageCounter:
    """Bytes of unique storages, counted once however many tensors or views point at them."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()

    def add(self, tensors: Iterable[Tensor]) -> int:
        """Count the storages of ``tensors`` not seen before; return the new bytes."""
        added = 0
        for tensor in tensors:
            key = _storage_key(tensor)
            if key not in self._seen and key[1] > 0:
                self._seen.add(key)
                added += key[1]
        return added


def _tensors_in(obj: Any) -> Iterator[Tensor]:
    """Every tensor reachable through dicts, lists, tuples and sets in ``obj``."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors_in(value)
    elif isinstance(obj, list | tuple | set | frozenset):
        for value in obj:
            yield from _tensors_in(value)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """Tensors an optimizer holds besides the parameters: per-parameter state, tensors in param
    groups (other than ``params``) and tensor attributes such as gradient-multiplier masks."""
    found = list(_tensors_in(list(optimizer.state.values())))
    for group in optimizer.param_groups:
        found.extend(_tensors_in({k: v for k, v in group.items() if k != "params"}))
    attributes = {k: v for k, v in vars(optimizer).items() if k not in ("state", "param_groups")}
    found.extend(_tensors_in(attributes))
    return found


@dataclass
class MemoryBreakdown:
    """One training step's accounted memory in MiB (see module docstring)."""

    parameters_mb: float
    buffers_mb: float
    gradients_mb: float
    optimizer_state_mb: float
    activations_mb: float
    batch_size: int

    @property
    def fixed_mb(self) -> float:
        """Memory that does not grow with the batch."""
        return self.parameters_mb + self.buffers_mb + self.gradients_mb + self.optimizer_state_mb

    @property
    def total_mb(self) -> float:
        return self.fixed_mb + self.activations_mb

    @property
    def activations_per_image_mb(self) -> float:
        return self.activations_mb / self.batch_size

    def as_dict(self) -> dict[str, float]:
        out = asdict(self)
        del out["batch_size"]
        out["activations_per_image_mb"] = self.activations_per_image_mb
        out["total_mb"] = self.total_mb
        return out


def measure_training_memory(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: Callable[[], object],
    forward_loss: Callable[[], Tensor],
    batch_size: int,
) -> MemoryBreakdown:
    """Account the memory of ``model`` trained by ``optimizer``.

    ``step()`` runs one full training step (it is called once first, so gradients and optimizer
    state exist); ``forward_loss()`` runs the forward pass whose saved tensors are counted.
    """
    step()
    counter = StorageCounter()
    parameters = counter.add(model.parameters())
    buffers = counter.add(model.buffers())
    gradients = counter.add(p.grad for p in model.parameters() if p.grad is not None)
    optimizer_state = counter.add(optimizer_tensors(optimizer))
    activations = _saved_bytes(forward_loss, counter)
    optimizer.zero_grad(set_to_none=True)
    return MemoryBreakdown(
        parameters / MIB,
        buffers / MIB,
        gradients / MIB,
        optimizer_state / MIB,
        activations / MIB,
        batch_size,
    )


def _saved_bytes(forward_loss: Callable[[], Tensor], counter: StorageCounter) -> int:
    """Bytes of the storages autograd saves during ``forward_loss()`` not yet in ``counter``."""
    saved: list[Tensor] = []

    def pack(tensor: Tensor) -> Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward_loss()  # the graph (and what it saved) is freed when this returns
    return counter.add(saved)


def activation_memory_mb(model: nn.Module, forward_loss: Callable[[], Tensor]) -> float:
    """MiB of saved activations of one ``forward_loss()`` (parameters and buffers excluded)."""
    counter = StorageCounter()
    counter.add(model.parameters())
    counter.add(model.buffers())
    return _saved_bytes(forward_loss, counter) / MIB


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    """Current resident set size of this process in MiB (Linux only)."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB (``VmHWM``, Linux only)."""
    return _proc_status_mb("VmHWM")
