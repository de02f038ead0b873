"""Private torch functions behind a version check, each with a public fallback.

torch may change or drop an underscore name in any release, so each is called only where the
installed torch lies in :data:`TORCH_RANGE` (the range ``pyproject.toml`` declares and the tests
cover) and has it; elsewhere a public equivalent runs:

- :func:`sgd_update_`: ``torch._fused_sgd_`` (what ``torch.optim.SGD(fused=True)`` runs), else
  the same per-element update from public tensor ops, rounded the same way;
- :func:`cpu_has_native_bf16`: ``torch.cpu._is_avx512_bf16_supported`` /
  ``_is_amx_tile_supported``, else the CPU flags in ``/proc/cpuinfo``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["TORCH_RANGE", "cpu_has_native_bf16", "has_fused_sgd", "sgd_update_", "torch_in_range"]

TORCH_RANGE = ((2, 6), (3, 0))  # lowest supported, first unsupported (major, minor)
CPUINFO = Path("/proc/cpuinfo")


def torch_in_range() -> bool:
    """Whether the installed torch lies in :data:`TORCH_RANGE`."""
    low, high = TORCH_RANGE
    return low <= torch.__version__ < high  # a TorchVersion: compares with tuples


def has_fused_sgd() -> bool:
    """Whether :func:`sgd_update_` runs torch's fused kernel."""
    return torch_in_range() and hasattr(torch, "_fused_sgd_")


def sgd_update_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    *,
    is_first_step: bool,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
) -> None:
    """torch's SGD update of ``params`` and ``momentum_buffers`` in place (``grads`` are read
    only; no buffers without momentum), element by element::

        d = grad + weight_decay * p
        buf = d  if is_first_step  else  momentum * buf + (1 - dampening) * d
        d = d + momentum * buf  if nesterov  else  buf
        p = p - lr * d

    The fallback rounds as torch's CPU kernel does, so both give the same bits: ``torch.add(c,
    a, alpha=b)`` rounds ``c + b * a`` once (a fused multiply-add), as the kernel's
    ``p - lr * d``, ``grad + weight_decay * p`` and Nesterov's ``d + momentum * buf`` are; the
    kernel's momentum line rounds ``momentum * buf`` first, then ``+ (1 - dampening) * d``."""
    if has_fused_sgd():
        torch._fused_sgd_(
            list(params),
            list(grads),
            list(momentum_buffers) if momentum else [],
            weight_decay=weight_decay,
            momentum=momentum,
            lr=lr,
            dampening=dampening,
            nesterov=nesterov,
            maximize=False,
            is_first_step=is_first_step,
        )
        return
    buffers = momentum_buffers if momentum else [None] * len(params)
    for param, grad, buf in zip(params, grads, buffers, strict=True):
        step = torch.add(grad, param, alpha=weight_decay) if weight_decay else grad
        if buf is not None:
            if is_first_step:
                buf.copy_(step)
            else:
                buf.mul_(momentum).add_(step, alpha=1 - dampening)
            step = torch.add(step, buf, alpha=momentum) if nesterov else buf
        param.add_(step, alpha=-lr)


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    cpu = torch.cpu
    if torch_in_range() and hasattr(cpu, "_is_avx512_bf16_supported"):
        amx = getattr(cpu, "_is_amx_tile_supported", lambda: False)
        return bool(cpu._is_avx512_bf16_supported() or amx())
    return _cpuinfo_has({"avx512_bf16", "amx_tile"})


def _cpuinfo_has(flags: set[str]) -> bool:
    """Whether Linux's :data:`CPUINFO` lists one of ``flags`` (False elsewhere)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(flags & set(line.partition(":")[2].split()))
    return False
