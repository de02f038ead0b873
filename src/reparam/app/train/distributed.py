"""torchrun / DistributedDataParallel plumbing (gloo on CPU, nccl on CUDA).

A process is distributed when torchrun's environment is set (``WORLD_SIZE > 1``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Rank 0 alone writes files; every rank holds
the same model, optimizer and schedule, and DDP averages gradients before each step, so gradient
multipliers (RepOpt) and lambda schedules act identically on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

__all__ = [
    "DistInfo",
    "ResumableSampler",
    "all_gather_objects",
    "barrier",
    "cleanup",
    "reduce_sum",
    "setup",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistInfo:
    """Pick the device and, under torchrun, join the process group (idempotent)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def reduce_sum(info: DistInfo, values: list[float]) -> list[float]:
    """Sum a few numbers over ranks (float64)."""
    if not info.distributed:
        return list(values)
    tensor = torch.tensor(
        values, dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu"
    )
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose order is a function of ``(seed, epoch)`` only, and which can
    start ``skip_batches`` batches into an epoch (mid-epoch resume)."""

    def __init__(self, dataset: Dataset, info: DistInfo, seed: int, batch_size: int):
        super().__init__(
            dataset,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.batch_size = batch_size
        self.skip_batches = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip_batches * self.batch_size :])

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip_batches * self.batch_size)
