"""Kernel algebra: pure functions on ``(weight, bias)`` pairs.

Every re-parameterization in reparam is built from these few identities, each tested once in
float64 against the modules it replaces (``tests/test_kernels.py``):

- structural re-param (RepVGG) = ``add_branches(fold_bn(...), ...)``
- gradient re-param (RepOptimizer) = the same sum seen through the chain rule (``csla.py``)
- depth re-param (ReduceNet, VanillaNet) = sequential composition of convolutions

No function here keeps state or touches ``nn.Module`` parameters in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

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
    "ConvSpec",
    "ExactRegion",
    "Composition",
    "compose",
]


class Kernel(NamedTuple):
    """A convolution as data: ``weight`` ``[C_out, C_in / groups, k, k]`` and ``bias`` ``[C_out]``."""

    weight: Tensor
    bias: Tensor


def fold_bn(
    weight: Tensor, bn: nn.modules.batchnorm._BatchNorm, bias: Tensor | None = None
) -> Kernel:
    """Fold an eval-mode BatchNorm that follows a conv into the conv.

    ``BN(conv(x)) = conv'(x)`` with ``t = gamma / sqrt(var + eps)``,
    ``W' = W * t`` (per output channel) and ``b' = beta + (b - mean) * t``
    (``b = 0`` when the conv has no bias; ``gamma = 1, beta = 0`` when the BN has no affine).
    Exact only for BN in eval mode (running statistics); callers check the mode.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "fold_bn needs a BatchNorm with running statistics (track_running_stats=True)"
        )
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
    kernel = torch.zeros(
        channels, in_per_group, kernel_size, kernel_size, dtype=dtype, device=device
    )
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
    first = branches[0].weight
    weight = torch.zeros(*first.shape[:2], size, size, dtype=first.dtype, device=first.device)
    bias = torch.zeros_like(branches[0].bias)
    for branch in branches:
        k = branch.weight.shape[-1]
        if (size - k) % 2:
            raise ValueError(f"cannot centre a {k}x{k} kernel in {size}x{size}")
        p = (size - k) // 2
        weight[..., p : p + k, p : p + k] += branch.weight
        bias += branch.bias
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


@dataclass(frozen=True)
class ConvSpec:
    """A convolution as data with its geometry: ``conv2d(pad(x, padding, padding_mode), W, b,
    stride, groups=groups)``; ``padding_mode`` is ``"zeros"`` or ``"circular"``."""

    kernel: Kernel
    stride: int = 1
    padding: int = 0
    groups: int = 1
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        if self.padding_mode not in ("zeros", "circular"):
            raise ValueError(
                f"padding_mode must be 'zeros' or 'circular', got {self.padding_mode!r}"
            )
        w = self.kernel.weight
        if w.dim() != 4 or w.shape[-1] != w.shape[-2]:
            raise ValueError(
                f"ConvSpec needs a square [C_out, C_in/groups, k, k] kernel, got {tuple(w.shape)}"
            )
        if self.stride < 1 or self.padding < 0 or w.shape[0] % self.groups:
            raise ValueError(
                f"bad geometry: stride {self.stride}, padding {self.padding}, groups {self.groups} "
                f"for {w.shape[0]} output channels"
            )

    @property
    def in_channels(self) -> int:
        return self.kernel.weight.shape[1] * self.groups

    @property
    def kernel_size(self) -> int:
        return self.kernel.weight.shape[-1]

    def __call__(self, x: Tensor) -> Tensor:
        """Apply the convolution (the reference semantics of this spec)."""
        if self.padding_mode == "circular" and self.padding:
            x = F.pad(x, [self.padding] * 4, mode="circular")
            padding = 0
        else:
            padding = self.padding
        w, b = self.kernel
        return F.conv2d(x, w, b, self.stride, padding, groups=self.groups)


@dataclass(frozen=True)
class ExactRegion:
    """Where a composed conv equals the two-conv chain.

    ``everywhere``: exact on every output pixel (``reason`` says which exact mode applies).
    Otherwise only interior pixels are guaranteed: a ring of up to ``border`` output pixels on each
    side is wrong, because the chain pads the intermediate with zeros while the composed conv
    sees conv1's response to the padded input there. :meth:`mask` gives the exact pixels for an
    input size.
    """

    everywhere: bool
    border: int
    reason: str
    first: tuple[int, int, int]  # conv1 (k, stride, padding)
    second: tuple[int, int, int]  # conv2 (k, stride, padding)

    def mask(self, height: int, width: int) -> Tensor:
        """Boolean ``[H_out, W_out]`` mask of the output pixels that are exact for an input of
        ``height x width``: those whose conv2 window lies inside the intermediate map."""

        def axis(size: int) -> Tensor:
            k1, s1, p1 = self.first
            k2, s2, p2 = self.second
            mid = (size + 2 * p1 - k1) // s1 + 1
            out = (mid + 2 * p2 - k2) // s2 + 1
            start = torch.arange(out) * s2 - p2
            if self.everywhere:
                return torch.ones(out, dtype=torch.bool)
            return (start >= 0) & (start + k2 <= mid)

        return axis(height)[:, None] & axis(width)[None, :]


@dataclass(frozen=True)
class Composition:
    """``conv2(conv1(x))`` as one conv: ``weight``, ``bias``, ``stride``, ``padding`` (plus
    ``groups`` and ``padding_mode``) and the ``exact_region`` where it equals the chain."""

    weight: Tensor
    bias: Tensor
    stride: int
    padding: int
    exact_region: ExactRegion
    groups: int = 1
    padding_mode: str = "zeros"

    def __iter__(self):
        """Unpacks as ``W, b, stride, padding, exact_region = compose(conv1, conv2)``."""
        return iter((self.weight, self.bias, self.stride, self.padding, self.exact_region))

    @property
    def spec(self) -> ConvSpec:
        """The composed conv as a :class:`ConvSpec` (to apply it or compose it further)."""
        return ConvSpec(
            Kernel(self.weight, self.bias),
            self.stride,
            self.padding,
            self.groups,
            self.padding_mode,
        )


def _dense(weight: Tensor, groups: int) -> Tensor:
    """Grouped ``[C_out, C_in/g, k, k]`` -> the dense block-diagonal ``[C_out, C_in, k, k]``."""
    if groups == 1:
        return weight
    out_per_group, in_per_group = weight.shape[0] // groups, weight.shape[1]
    blocks = weight.reshape(groups, out_per_group, in_per_group, *weight.shape[2:])
    dense = weight.new_zeros(groups, out_per_group, groups, in_per_group, *weight.shape[2:])
    index = torch.arange(groups, device=weight.device)
    dense[index, :, index] = blocks
    return dense.reshape(weight.shape[0], groups * in_per_group, *weight.shape[2:])


def compose(
    conv1: ConvSpec, conv2: ConvSpec, *, intermediate_padding: str = "zeros"
) -> Composition:
    """Sequential convolutions as one: ``conv2(conv1(x)) = conv(x; W, b, S, P)``.

    Geometry: ``K = k1 + (k2 - 1) s1``, ``S = s1 s2``, ``P = p1 + s1 p2``.
    Weights (cross-correlation, no flips): ``W[o, i, u] = sum_{m, a, q: u = q + s1 a}
    W2[o, m, a] W1[m, i, q]`` (conv1's kernel convolved with conv2's kernel dilated by ``s1``),
    ``b = b2 + sum_{m, a} W2[o, m, a] b1[m]``. Groups: equal groups stay grouped (depthwise
    after depthwise is depthwise); different groups give a dense (``groups=1``) kernel.

    Exactness (``exact_region``):

    - conv2 has no padding (``p2 = 0``, e.g. a ``1x1`` after a ``k x k``; also "pad the input
      once by ``P``, then valid convs"): exact everywhere;
    - circular padding on both, conv1 stride 1 and "same" (``2 p1 = k1 - 1``): exact everywhere
      (apply the result with circular padding ``P``; torch needs ``P <= H``);
    - ``intermediate_padding="bias"`` with conv1 a ``1x1`` without padding: the chain pads the
      intermediate with ``b1`` instead of zeros (DiverseBranchBlock's fix): exact everywhere;
    - otherwise (zero padding between): exact only in the interior; a ring of up to
      ``ceil(p2 / s2)`` output pixels per side is wrong.
    """
    if intermediate_padding not in ("zeros", "bias"):
        raise ValueError(
            f"intermediate_padding must be 'zeros' or 'bias', got {intermediate_padding!r}"
        )
    w1, b1 = conv1.kernel
    w2, b2 = conv2.kernel
    mid = w1.shape[0]
    if conv2.in_channels != mid:
        raise ValueError(f"conv2 expects {conv2.in_channels} input channels, conv1 gives {mid}")
    k1, s1, p1 = conv1.kernel_size, conv1.stride, conv1.padding
    k2, s2, p2 = conv2.kernel_size, conv2.stride, conv2.padding
    groups = conv1.groups if conv1.groups == conv2.groups else 1
    if groups == 1:
        w1, w2 = _dense(w1, conv1.groups), _dense(w2, conv2.groups)
    out_per_group, mid_per_group = w2.shape[0] // groups, mid // groups
    if k2 == 1:  # pointwise conv2: a batched matmul over channels (~9x faster than the transpose)
        weight = torch.einsum(
            "gom,gmiuv->goiuv",
            w2.reshape(groups, out_per_group, mid_per_group),
            w1.reshape(groups, mid_per_group, *w1.shape[1:]),
        ).reshape(w2.shape[0], *w1.shape[1:])
    else:
        # conv_transpose2d(input=W1 as [C_in/g, C_mid, k1, k1], weight [C_mid, C_out/g, k2, k2],
        # dilation s1) computes sum_{m, a, q: u = q + s1 a} W1[m, i, q] W2[o, m, a]
        w2_t = (
            w2.reshape(groups, out_per_group, mid_per_group, k2, k2)
            .transpose(1, 2)
            .reshape(mid, out_per_group, k2, k2)
        )
        weight = F.conv_transpose2d(w1.transpose(0, 1), w2_t, groups=groups, dilation=s1)
        weight = weight.transpose(0, 1)
    bias = b2 + torch.einsum(
        "gom,gm->go",
        w2.sum((2, 3)).reshape(groups, out_per_group, mid_per_group),
        b1.reshape(groups, mid_per_group),
    ).reshape(-1)
    both_circular = conv1.padding_mode == conv2.padding_mode == "circular"
    if p2 == 0:
        everywhere, reason = True, "conv2 has no padding"
    elif both_circular and s1 == 1 and 2 * p1 == k1 - 1:
        everywhere, reason = True, "circular padding, conv1 stride 1 and 'same'"
    elif intermediate_padding == "bias" and k1 == 1 and p1 == 0 and conv2.padding_mode == "zeros":
        everywhere, reason = True, "1x1 conv1, intermediate padded with its bias"
    else:
        everywhere, reason = False, "zero padding between the convs: interior only"
    region = ExactRegion(
        everywhere, 0 if everywhere else -(-p2 // s2), reason, (k1, s1, p1), (k2, s2, p2)
    )
    return Composition(weight, bias, s1 * s2, p1 + s1 * p2, region, groups, conv1.padding_mode)
