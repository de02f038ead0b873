"""Cache-blocked multi-tensor updates: the optimizers' tensors in blocks of about 2 MiB.

A tensor larger than ``block_bytes`` is split evenly along dim 0 into row chunks (views); the
chunks are grouped into consecutive blocks of about ``block_bytes`` that never mix masked and
plain tensors, dtypes or devices, so a block's tensors stay in cache through every pass of the
update. Masks are applied in place (:meth:`Block.mask_`) from their factors
(:class:`~reparam.optim.masks.FactoredMask`): a chunk viewed as ``[rows, C_in / T, T*k*k]`` is
multiplied by its per-tap factors repeated over ``T`` input channels (``[rows, 1, T*k*k]``, kept
with the plan), then the few differing elements (the identity's diagonal) are set to their own
products. The tile makes the broadcast's contiguous inner loop ``T`` times longer than the
``k*k = 9`` taps (``T = 2`` halves the multiply's time on a 1280x192x3x3 weight and keeps the
tiles at twice the factors' size). Non-contiguous chunks (channels-last: the input channels are
innermost already) and full masks multiply directly. Every element is the one product ``M * x``
whatever the chunking, so the result is the unblocked full-mask update's, bit for bit (tested).
Temporaries an update needs besides the gradients (Adam's denominator) live in preallocated
block-sized scratch: a step allocates nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from reparam.optim.masks import FactoredMask, full_mask

__all__ = ["CACHE_BLOCK_BYTES", "Block", "BlockPlan", "cache_blocks", "plan_blocks"]

# one core's L2: the passes of an update over a block hit cache (of 0.25-4 MiB, 2 MiB was the
# fastest on the 2-core bench machine)
CACHE_BLOCK_BYTES = 2 << 20
# input channels per mask tile (see the module docstring)
TILE_CHANNELS = 2


class MaskPatch(NamedTuple):
    """Elements of chunk ``chunk`` (index within its block) whose mask ``values`` differ from the
    broadcast factors: ``len(values)`` of them, ``stride`` apart in storage from ``offset``
    (relative to the chunk's first element). The identity's diagonal is one such run per
    chunk (one per group for grouped convolutions)."""

    chunk: int
    offset: int
    stride: int
    values: Tensor

    def view(self, tensor: Tensor) -> Tensor:
        """The patched elements of ``tensor`` (chunk ``chunk``), as a strided 1-D view."""
        return tensor.as_strided(
            (len(self.values),), (self.stride,), tensor.storage_offset() + self.offset
        )


class Block(NamedTuple):
    """Chunks ``[start, stop)`` and their ``scratch`` (``scratch[k][j]`` shaped like chunk
    ``start + j``, views of one flat buffer per ``k``). A masked block multiplies chunk ``j``,
    viewed as ``shapes[j]`` (``None``: as it is), by ``multipliers[j]``, then writes its
    ``patches``."""

    start: int
    stop: int
    masked: bool
    scratch: tuple[list[Tensor], ...]
    shapes: list[tuple[int, ...] | None]
    multipliers: list[Tensor]
    patches: list[MaskPatch]

    def mask_(self, tensors: list[Tensor]) -> list[Tensor]:
        """Multiply the block's chunks ``tensors`` by their masks, in place; return them."""
        patched = [e.view(tensors[e.chunk]) for e in self.patches]
        exact = torch._foreach_mul(patched, [e.values for e in self.patches]) if patched else []
        views = [t if shape is None else t.view(shape) for t, shape in zip(tensors, self.shapes)]
        torch._foreach_mul_(views, self.multipliers)
        if patched:
            torch._foreach_copy_(patched, exact)
        return tensors


def _tile_channels(channels: int) -> int:
    """The largest divisor of ``channels`` up to :data:`TILE_CHANNELS`."""
    return max(t for t in range(1, min(channels, TILE_CHANNELS) + 1) if channels % t == 0)


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
    return math.ceil(tensor.shape[0] / math.ceil(nbytes / block_bytes))  # even chunks


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
    """Chunks, blocks, ``buffers`` scratch buffers and mask multipliers for ``params``, whose first
    ``len(mults)`` are masked by ``mults`` (full masks or factors)."""
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
    masks = [
        _chunk_mask(chunks[j], mults[plan.owners[j]], first_rows[j]) if j < masked_chunks else None
        for j in range(len(chunks))
    ]
    numel: dict[tuple[torch.dtype, torch.device], int] = {}
    for start, stop in ranges:
        kind = (chunks[start].dtype, chunks[start].device)
        numel[kind] = max(numel.get(kind, 0), sum(c.numel() for c in chunks[start:stop]))
    flat_buffers = {
        kind: [torch.empty(size, dtype=kind[0], device=kind[1]) for _ in range(buffers)]
        for kind, size in numel.items()
    }
    for start, stop in ranges:
        kind = (chunks[start].dtype, chunks[start].device)
        shapes = [c.shape for c in chunks[start:stop]]
        scratch = tuple(_carve(buffer, shapes) for buffer in flat_buffers[kind])
        block = Block(start, stop, start < masked_chunks, scratch, [], [], [])
        for j, mask in enumerate(masks[start:stop]):
            if mask is not None:
                block.shapes.append(mask.view_shape)
                block.multipliers.append(mask.multiplier)
                block.patches.extend(patch._replace(chunk=j) for patch in mask.patches)
        plan.blocks.append(block)
    return plan


def _carve(buffer: Tensor, shapes: Sequence[Sequence[int]]) -> list[Tensor]:
    """Consecutive views of ``buffer`` shaped ``shapes``."""
    views, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        views.append(buffer[offset : offset + size].view(shape))
        offset += size
    return views


class _ChunkMask(NamedTuple):
    """How one chunk is masked: viewed as ``view_shape`` (``None``: as it is) times
    ``multiplier``, then ``patches``."""

    view_shape: tuple[int, ...] | None
    multiplier: Tensor
    patches: list[MaskPatch]


def _chunk_mask(chunk: Tensor, mult: Tensor | FactoredMask, row: int) -> _ChunkMask:
    """The masking of ``chunk``, rows ``row:row + len(chunk)`` of a parameter masked by ``mult``."""
    rows = len(chunk)
    if isinstance(mult, Tensor):
        return _ChunkMask(None, mult[row : row + rows], [])
    if not _dense(chunk):  # no storage-order positions: the full mask rows (rare layouts)
        return _ChunkMask(None, full_mask(mult)[row : row + rows], [])
    per_tap = mult.per_tap[row : row + rows]
    low = row * mult.row_numel
    inside = (mult.index >= low) & (mult.index < low + rows * mult.row_numel)
    # contiguous-order positions -> storage-order positions in this chunk, as strided runs
    position = torch.unravel_index(mult.index[inside] - low, chunk.shape)
    storage = sum(i * stride for i, stride in zip(position, chunk.stride()))
    patches = [MaskPatch(0, *run) for run in _runs(storage, mult.values[inside])]
    channels, taps = chunk.shape[1], math.prod(chunk.shape[2:])
    tile = _tile_channels(channels)
    if tile == 1 or not chunk.is_contiguous():
        return _ChunkMask(None, per_tap, patches)
    tiled = per_tap.reshape(rows, 1, taps).expand(rows, tile, taps).reshape(rows, 1, tile * taps)
    return _ChunkMask((rows, channels // tile, tile * taps), tiled, patches)


def _dense(tensor: Tensor) -> bool:
    """Whether ``tensor``'s elements fill its storage span without gaps (any dim order)."""
    return tensor.is_contiguous() or (
        tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
    )


def _runs(positions: Tensor, values: Tensor) -> list[tuple[int, int, Tensor]]:
    """``positions`` (with their ``values``) cut greedily, in increasing order, into runs of
    equally spaced ones, as ``(offset, stride, values)``: a diagonal is one run, scattered
    positions are many short ones."""
    order = positions.argsort()
    positions, values = positions[order].tolist(), values[order]
    runs, start = [], 0
    while start < len(positions):
        stop = start + 1
        stride = positions[stop] - positions[start] if stop < len(positions) else 1
        while stop < len(positions) and positions[stop] - positions[stop - 1] == stride:
            stop += 1
        runs.append((positions[start], stride, values[start:stop]))
        start = stop
    return runs
