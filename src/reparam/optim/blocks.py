"""Cache-blocked multi-tensor updates: the optimizers' tensors in blocks of a few MiB.

A tensor larger than ``block_bytes`` is split along dim 0 into row chunks (views); the chunks are
grouped into consecutive blocks of about ``block_bytes`` that never mix masked and plain tensors,
dtypes or devices. Each block has preallocated scratch buffers for the update's temporaries
(``d = M * g``, Adam's denominator), so a step allocates nothing and a block's tensors stay in
cache through every pass of the update. A masked block first writes its masks into scratch
(:meth:`Block.load_masks`): per-tap factors broadcast over input channels plus the few differing
elements (:class:`~reparam.optim.masks.FactoredMask`), or a copy of full masks. Elementwise ops
give the same float per element however the tensors are chunked (tested), so the result is the
unblocked update's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .masks import FactoredMask

__all__ = ["CACHE_BLOCK_BYTES", "Block", "BlockPlan", "cache_blocks", "plan_blocks"]

# a few MiB (the L2/L3 share of one core): the passes of an update over a block hit cache
CACHE_BLOCK_BYTES = 4 << 20


class Block(NamedTuple):
    """Chunks ``[start, stop)`` and their scratch: ``scratch[k][j]`` is a view of the flat buffer
    ``buffers[k]`` shaped like chunk ``start + j``. A masked block's ``mask_sources`` are what
    :meth:`load_masks` copies (broadcast per-tap factors or full-mask rows), then it writes
    ``exception_values`` at the flat ``exception_index`` (the factored masks' diagonals)."""

    start: int
    stop: int
    masked: bool
    scratch: tuple[list[Tensor], ...]
    buffers: tuple[Tensor, ...]
    mask_sources: list[Tensor]
    exception_index: Tensor
    exception_values: Tensor

    def load_masks(self, buffer: int) -> list[Tensor]:
        """Write the block's masks into ``scratch[buffer]`` and return its views."""
        views = self.scratch[buffer]
        torch._foreach_copy_(views, self.mask_sources)
        if len(self.exception_index):
            self.buffers[buffer].index_copy_(0, self.exception_index, self.exception_values)
        return views


class BlockPlan(NamedTuple):
    """How one param group's tensors are chunked (``rows[i]`` rows per chunk of tensor ``i``,
    ``None``: whole) and blocked; ``owners[j]`` is chunk ``j``'s tensor. ``key`` says which
    parameters (and block size) it was planned for."""

    key: tuple[int, ...]
    rows: list[int | None]
    owners: list[int]
    blocks: list[Block]

    def chunks(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """``tensors`` (shaped like the planned parameters) cut into the planned chunks."""
        out: list[Tensor] = []
        for tensor, rows in zip(tensors, self.rows):
            if rows is None:
                out.append(tensor)
            else:
                out.extend(tensor.split(rows))
        return out

    def per_chunk(self, values: Sequence[float]) -> list[float]:
        """One value per tensor -> one per chunk."""
        return [values[owner] for owner in self.owners]


def _rows_per_chunk(tensor: Tensor, block_bytes: int) -> int | None:
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes <= block_bytes or tensor.dim() == 0 or tensor.shape[0] < 2:
        return None
    return max(1, block_bytes // (nbytes // tensor.shape[0]))


def cache_blocks(
    tensors: Sequence[Tensor], n: int, block_bytes: int = CACHE_BLOCK_BYTES
) -> list[tuple[int, int]]:
    """Consecutive index ranges ``[start, stop)`` of about ``block_bytes`` each (a larger tensor is
    a block of its own) that never straddle index ``n`` (masked tensors first, then plain ones)
    nor a change of dtype or device."""
    blocks, start, size = [], 0, 0
    for index, tensor in enumerate(tensors):
        nbytes = tensor.numel() * tensor.element_size()
        if index > start:
            previous = tensors[index - 1]
            other_kind = (tensor.dtype, tensor.device) != (previous.dtype, previous.device)
            if index == n or other_kind or size + nbytes > block_bytes:
                blocks.append((start, index))
                start, size = index, 0
        size += nbytes
    if start < len(tensors):
        blocks.append((start, len(tensors)))
    return blocks


def plan_blocks(
    params: Sequence[Tensor],
    mults: Sequence[Tensor | FactoredMask],
    buffers: int,
    block_bytes: int,
    key: tuple[int, ...],
) -> BlockPlan:
    """Chunks, blocks and ``buffers`` scratch buffers for ``params``, whose first ``len(mults)``
    are masked by ``mults`` (full masks or factors)."""
    n = len(mults)
    rows = [_rows_per_chunk(p, block_bytes) for p in params]
    plan = BlockPlan(key, rows, [], [])
    chunks = plan.chunks(params)
    first_rows: list[int] = []
    for i, (param, r) in enumerate(zip(params, rows)):
        starts = [0] if r is None else list(range(0, param.shape[0], r))
        plan.owners.extend([i] * len(starts))
        first_rows.extend(starts)
    masked_chunks = sum(owner < n for owner in plan.owners)
    ranges = cache_blocks(chunks, masked_chunks, block_bytes)
    numel: dict[tuple[torch.dtype, torch.device], int] = {}
    for start, stop in ranges:
        kind = (chunks[start].dtype, chunks[start].device)
        numel[kind] = max(numel.get(kind, 0), sum(c.numel() for c in chunks[start:stop]))
    flat = {
        kind: tuple(torch.empty(size, dtype=kind[0], device=kind[1]) for _ in range(buffers))
        for kind, size in numel.items()
    }
    for start, stop in ranges:
        kind = (chunks[start].dtype, chunks[start].device)
        offsets = [0]
        for chunk in chunks[start:stop]:
            offsets.append(offsets[-1] + chunk.numel())
        scratch = tuple(
            [
                buffer[offset : offset + chunk.numel()].view(chunk.shape)
                for offset, chunk in zip(offsets, chunks[start:stop])
            ]
            for buffer in flat[kind]
        )
        sources, index, values = [], [], []
        for j in range(start, stop) if start < masked_chunks else ():
            chunk, mult, row = chunks[j], mults[plan.owners[j]], first_rows[j]
            if isinstance(mult, Tensor):
                sources.append(
                    mult if rows[plan.owners[j]] is None else mult[row : row + len(chunk)]
                )
                continue
            sources.append(mult.per_tap[row : row + len(chunk)].expand(chunk.shape))
            low, high = row * mult.row_numel, (row + len(chunk)) * mult.row_numel
            inside = (mult.index >= low) & (mult.index < high)
            index.append(mult.index[inside] - low + offsets[j - start])
            values.append(mult.values[inside])
        like = flat[kind][0]
        plan.blocks.append(
            Block(
                start,
                stop,
                start < masked_chunks,
                scratch,
                flat[kind],
                sources,
                torch.cat(index) if index else torch.zeros(0, dtype=torch.long, device=like.device),
                torch.cat(values) if values else like.new_zeros(0),
            )
        )
    return plan
