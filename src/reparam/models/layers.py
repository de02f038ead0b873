"""Building blocks shared by every model family.

Deploy structure of every VGG-style family here (RepVGG, RepOpt-VGG, plain VGG) is the same
``Sequential(conv=Conv2d(3x3, bias), act=ReLU)`` per block, so fused state dicts line up;
RepVGG-D2se's blocks keep their squeeze-and-excitation between the two (``conv``, ``se``, ``act``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from reparam.kernels import Kernel, add_branches, fold_bn, identity_kernel

__all__ = ["ConvBN", "RepVGGBlock", "SEBlock", "VGGBlock", "conv_from_kernel"]


def conv_from_kernel(kernel: Kernel, template: nn.Conv2d) -> nn.Conv2d:
    """A biased ``nn.Conv2d`` with ``template``'s geometry (stride, groups) holding ``kernel``.

    Padding is "same" for the kernel size: ``k // 2``.
    """
    k = kernel.weight.shape[-1]
    conv = skip_init(
        nn.Conv2d,
        template.in_channels,
        template.out_channels,
        k,
        stride=template.stride,
        padding=k // 2,
        groups=template.groups,
        bias=True,
        device=kernel.weight.device,
        dtype=kernel.weight.dtype,
    )
    conv.weight.data.copy_(kernel.weight)
    conv.bias.data.copy_(kernel.bias)
    return conv


class ConvBN(nn.Module):
    """``BN(conv(x))`` with a bias-free conv and "same" padding; fuses into one biased conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))

    def kernel(self) -> Kernel:
        """The folded ``(W, b)``: ``W * t``, ``beta - mean * t``."""
        return fold_bn(self.conv.weight, self.bn)

    def fuse(self) -> nn.Conv2d:
        return conv_from_kernel(self.kernel(), self.conv)


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018, https://arxiv.org/abs/1709.01507) as RepVGG-D2se
    has it: ``x * sigmoid(up(ReLU(down(mean_hw(x)))))``, ``down`` and ``up`` biased 1x1 convs
    through ``channels // reduction`` hidden channels (official ``SEBlock``, reduction 16)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(f"SE on {channels} channels needs at least {reduction} of them")
        self.down = nn.Conv2d(channels, hidden, 1)
        self.up = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.up(torch.relu(self.down(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class VGGBlock(nn.Sequential):
    """Plain VGG block: ``ReLU(BN(conv3x3(x)))``; deploy form ``ReLU(conv3x3(x) + b)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1):
        super().__init__(
            OrderedDict(conv=ConvBN(in_channels, out_channels, 3, stride, groups), act=nn.ReLU())
        )


class RepVGGBlock(nn.Module):
    """RepVGG training block (Ding et al. 2021, https://arxiv.org/abs/2101.03697).

    ``y = ReLU(BN3(conv3x3(x)) + BN1(conv1x1(x)) + BNid(x))``, the identity branch only when
    ``stride == 1`` and ``in == out``. Deploy: ``ReLU(conv3x3'(x))`` with
    ``W' = fold(W3) + pad(fold(W1)) + fold(Dirac)``, ``b' = b3 + b1 + bid``.

    ``se=True`` (RepVGG-D2se): ``ReLU(SE(sum))``, the SE on the sum of the branches before the
    ReLU, so the deploy form is ``ReLU(SE(conv3x3'(x)))``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 1,
        se: bool = False,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.conv3x3 = ConvBN(in_channels, out_channels, 3, stride, groups)
        self.conv1x1 = ConvBN(in_channels, out_channels, 1, stride, groups)
        self.identity = (
            nn.BatchNorm2d(out_channels) if stride == 1 and in_channels == out_channels else None
        )
        self.se = SEBlock(out_channels) if se else None
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv3x3(x) + self.conv1x1(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y if self.se is None else self.se(y))

    def identity_variance_parts(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(BN_id(x), branch sum)`` (before SE and ReLU), for
        :func:`reparam.analysis.identity_variance_ratios`."""
        if self.identity is None:
            return None
        identity = self.identity(x)
        return identity, self.conv3x3(x) + self.conv1x1(x) + identity

    def kernel(self) -> Kernel:
        branches = [self.conv3x3.kernel(), self.conv1x1.kernel()]
        if self.identity is not None:
            dirac = identity_kernel(
                self.out_channels,
                3,
                self.groups,
                dtype=self.conv3x3.conv.weight.dtype,
                device=self.conv3x3.conv.weight.device,
            )
            branches.append(fold_bn(dirac, self.identity))
        return add_branches(branches)

    def fuse(self) -> nn.Sequential:
        """``Sequential(conv, act)``, or ``(conv, se, act)`` with this block's SE."""
        layers = OrderedDict(conv=conv_from_kernel(self.kernel(), self.conv3x3.conv))
        if self.se is not None:
            layers["se"] = copy.deepcopy(self.se)
        layers["act"] = nn.ReLU()
        return nn.Sequential(layers)
