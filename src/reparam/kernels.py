"""Kernel algebra: pure functions on ``(weight, bias)`` pairs.

Every re-parameterization in reparam is built from these few identities, each tested once in
float64 against the modules it replaces (``tests/test_kernels.py``):

- structural re-param (RepVGG) = ``add_branches(fold_bn(...), ...)``
- gradient re-param (RepOptimizer) = the same sum seen through the chain rule (``csla.py``)
- depth re-param (ReduceNet, VanillaNet) = sequential composition of convolutions

No function here keeps state or touches ``nn.Module`` parameters in place.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Kernel",
    "fold_bn",
    "pad_kernel",
    "identity_kernel",
    "add_branches",
    "conv_macs",
]


class Kernel(NamedTuple):
    """A convolution as data: ``weight`` ``[C_out, C_in / groups, k, k]`` and ``bias`` ``[C_out]``."""

    weight: Tensor
    bias: Tensor


def fold_bn(weight: Tensor, bn: nn.modules.batchnorm._BatchNorm, bias: Tensor | None = None) -> Kernel:
    """Fold an eval-mode BatchNorm that follows a conv into the conv.

    ``BN(conv(x)) = conv'(x)`` with ``t = gamma / sqrt(var + eps)``,
    ``W' = W * t`` (per output channel) and ``b' = beta + (b - mean) * t``
    (``b = 0`` when the conv has no bias; ``gamma = 1, beta = 0`` when the BN has no affine).
    Exact only for BN in eval mode (running statistics); callers check the mode.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn needs a BatchNorm with running statistics (track_running_stats=True)")
    mean, var = bn.running_mean, bn.running_var
    gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(mean)
    t = gamma / torch.sqrt(var + bn.eps)
    conv_bias = bias if bias is not None else torch.zeros_like(mean)
    folded_weight = weight * t.reshape(-1, *([1] * (weight.dim() - 1)))
    return Kernel(folded_weight.detach(), (beta + (conv_bias - mean) * t).detach())


def pad_kernel(weight: Tensor, kernel_size: int) -> Tensor:
    """Zero-pad a ``k x k`` kernel to ``K x K`` around its centre (``K - k`` even).

    Equivalent convolution: a ``k x k`` conv with padding ``p`` equals the padded ``K x K`` conv
    with padding ``p + (K - k) / 2`` (same stride), e.g. 1x1/p0 -> 3x3/p1.
    """
    k = weight.shape[-1]
    if weight.shape[-2] != k:
        raise ValueError(f"pad_kernel expects a square kernel, got {tuple(weight.shape[-2:])}")
    if kernel_size < k or (kernel_size - k) % 2:
        raise ValueError(f"cannot centre a {k}x{k} kernel in {kernel_size}x{kernel_size}")
    p = (kernel_size - k) // 2
    return F.pad(weight, [p, p, p, p])


def identity_kernel(
    channels: int,
    kernel_size: int = 3,
    groups: int = 1,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Dirac kernel of a grouped conv that maps ``x`` to itself.

    ``K[i, i % (C / groups), c, c] = 1`` with ``c = kernel_size // 2``, shape
    ``[C, C / groups, k, k]``; with padding ``k // 2`` and stride 1 the conv is the identity.
    """
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    if kernel_size % 2 == 0:
        raise ValueError(f"identity kernel needs an odd kernel size, got {kernel_size}")
    in_per_group = channels // groups
    kernel = torch.zeros(channels, in_per_group, kernel_size, kernel_size, dtype=dtype, device=device)
    index = torch.arange(channels, device=kernel.device)
    centre = kernel_size // 2
    kernel[index, index % in_per_group, centre, centre] = 1
    return kernel


def add_branches(branches: Iterable[Kernel]) -> Kernel:
    """Parallel branches summed: ``sum_i conv_i(x) = conv(x; sum_i pad(W_i), sum_i b_i)``.

    Smaller kernels are centre-padded to the largest (the branches must share stride, groups and
    "same" padding, as in RepVGG, DBB and CSLA blocks).
    """
    branches = list(branches)
    if not branches:
        raise ValueError("add_branches needs at least one branch")
    size = max(b.weight.shape[-1] for b in branches)
    weight = sum(pad_kernel(b.weight, size) for b in branches)
    bias = sum(b.bias for b in branches)
    return Kernel(weight, bias)


def conv_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    output_size: int | tuple[int, int],
    groups: int = 1,
) -> int:
    """Multiply-accumulates of one conv: ``H_out W_out C_out (C_in / groups) k_h k_w``.

    A linear layer is the 1x1 case with ``output_size = 1``. Biases are not counted.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    return oh * ow * out_channels * (in_channels // groups) * kh * kw
