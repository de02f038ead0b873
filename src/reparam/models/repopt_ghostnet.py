"""RepGhostNet (Chen et al. 2022, https://arxiv.org/abs/2211.06088) and RepOpt-GhostNet with its
Hyper-Search model (Ding et al. 2022, https://arxiv.org/abs/2205.15242), laid out as the official
RepOptimizers code (https://github.com/DingXiaoH/RepOptimizers, ``repoptghostnet_model.py``).

Skeleton: ``stem`` ``ReLU(BN(conv3x3, stride 2))`` -> ``blocks.0`` .. ``blocks.8`` (the official
bottleneck groups) -> ``blocks.9`` ``ReLU(BN(conv1x1))`` -> ``pool`` (global average) ->
``conv_head`` (1x1 + bias, 1280) -> ``act2`` (ReLU) -> ``head_drop`` -> ``classifier``, as timm's
``ghostnet``, whose pretrained cfg (bicubic, crop 0.875) the models register with. A bottleneck:
``ghost1`` (ReLU) -> [stride 2: ``conv_dw``, depthwise kxk + BN] -> [``se``] -> ``ghost2``
(linear), plus ``shortcut`` (identity, or depthwise kxk + BN -> 1x1 + BN). A ghost module:
``x1 = act(BN(conv1x1(x)))`` (``primary_conv``), ``y = act(cheap_operation(x1))``; only the
cheap operation (a depthwise 3x3 on ``x1``, same width) differs between the three forms:

- ``repghostnet_*`` (structural, RepGhost): ``BN(dw(x1)) + BN_fusion(x1)``, deploys as one
  depthwise conv ``fold(W, BN) + fold(I, BN_fusion)`` (``I`` the Dirac kernel);
- ``repopt_ghostnet_*_hs`` (Hyper-Search): ``BN(s (.) dw(x1) + s_id (.) x1)`` with trainable
  per-channel ``s`` (init ``sqrt(2 / (m + 1))``) and ``s_id`` (init 1), ``m = 2n - 1`` for ghost1
  and ``2n`` for ghost2 of the ``n``-th bottleneck in a run of stride-1 same-width bottlenecks
  (counted across the config groups, as the official code does);
- ``repopt_ghostnet_*`` (target): ``BN(dw(x1))`` with ``s`` and ``s_id`` as constant buffers.
  Its imaginary CSLA block is ``s (.) dw(x1) + s_id (.) x1`` with a trainable identity, so
  ``RepOptSGD(model)`` multiplies the conv's gradient by ``M = s^2`` (+ 1 at the centre tap),
  and the conv starts at eq. 14, ``W'0 = s W0 + s_id0 I`` (``identity_init`` as in RepOpt-VGG;
  the official code uses ``"scale"``).

Scales live at ``blocks.I.J.ghost{1,2}.cheap_operation.scale_{conv,identity}``; the official
``.pth`` keys (``...ghostK.fusion_scale.weight`` = ``s_id``, ``...ghostK.cheap_operation.1.weight``
= ``s``) are renamed by :mod:`reparam.models.scales`. Every form deploys to the same structure
with every BN folded. Target kwargs: ``scales``, ``channel_average``, ``reinit``,
``identity_init``, as for ``repopt_vgg_*``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reparam.csla import Branch, CSLASpec, Scale, equivalent_weight, init_weight
from reparam.kernels import Kernel, add_branches, fold_bn, identity_kernel
from reparam.models.layers import ConvBN
from reparam.models.registry import register_model
from reparam.models.scales import build_target
from reparam.models.vggnet import PooledClassifier

__all__ = [
    "GHOSTNET_ARCHS",
    "BottleneckSpec",
    "CheapSpec",
    "GhostArch",
    "GhostBottleneck",
    "GhostModule",
    "GhostNet",
    "HSGhostCheap",
    "RepGhostCheap",
    "RepOptGhostCheap",
    "make_divisible",
    "repghostnet",
    "repopt_ghostnet",
    "repopt_ghostnet_hs",
]


def make_divisible(value: float, divisor: int = 4) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), one
    ``divisor`` up when that rounding lost more than 10 % (the MobileNet rule GhostNet uses)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class BottleneckSpec:
    """One bottleneck at width 1.0: depthwise ``kernel_size`` (for stride 2 and the shortcut),
    ``hidden_channels`` (the expansion), ``out_channels``, ``se_ratio`` (0: no SE), ``stride``."""

    kernel_size: int
    hidden_channels: int
    out_channels: int
    se_ratio: float
    stride: int


def _b(k: int, hidden: int, out: int, se: float, stride: int) -> BottleneckSpec:
    return BottleneckSpec(k, hidden, out, se, stride)


# the official config: (k, hidden, out, SE, stride) per bottleneck, grouped as ``blocks.0..8``
GHOSTNET_STAGES: tuple[tuple[BottleneckSpec, ...], ...] = (
    (_b(3, 8, 16, 0, 1),),
    (_b(3, 24, 24, 0, 2),),
    (_b(3, 36, 24, 0, 1),),
    (_b(5, 36, 40, 0.25, 2),),
    (_b(5, 60, 40, 0.25, 1),),
    (_b(3, 120, 80, 0, 2),),
    (
        _b(3, 100, 80, 0, 1),
        _b(3, 120, 80, 0, 1),
        _b(3, 120, 80, 0, 1),
        _b(3, 240, 112, 0.25, 1),
        _b(3, 336, 112, 0.25, 1),
    ),
    (_b(5, 336, 160, 0.25, 2),),
    (
        _b(5, 480, 160, 0, 1),
        _b(5, 480, 160, 0.25, 1),
        _b(5, 480, 160, 0, 1),
        _b(5, 480, 160, 0.25, 1),
    ),
)


@dataclass(frozen=True)
class GhostArch:
    """A GhostNet: bottleneck groups at width 1.0, the width multiplier, the stem and head widths
    (stem and bottleneck widths are scaled and rounded by :func:`make_divisible`; the last 1x1
    layer is ``2 x`` the last hidden width; the head is not scaled)."""

    width: float = 1.0
    stages: tuple[tuple[BottleneckSpec, ...], ...] = GHOSTNET_STAGES
    stem_channels: int = 16
    head_channels: int = 1280

    def channels(self, base: float) -> int:
        return make_divisible(base * self.width)


GHOSTNET_ARCHS: dict[str, GhostArch] = {"0_5x": GhostArch(0.5), "1_0x": GhostArch(1.0)}


@dataclass(frozen=True)
class CheapSpec:
    """Where a cheap operation sits: its ``channels`` and ``position`` ``m`` (see module
    docstring), which sets the Hyper-Search init ``sqrt(2 / (m + 1))`` of ``s``."""

    channels: int
    position: int

    @property
    def hs_init_scale(self) -> float:
        return math.sqrt(2.0 / (self.position + 1))


CheapFactory = Callable[[CheapSpec], nn.Module]


def _depthwise_dirac(conv: nn.Conv2d) -> Tensor:
    return identity_kernel(
        conv.out_channels,
        conv.kernel_size[0],
        conv.groups,
        dtype=conv.weight.dtype,
        device=conv.weight.device,
    )


class RepGhostCheap(ConvBN):
    """RepGhost's cheap operation ``BN(dw(x)) + BN_fusion(x)``; deploy: one depthwise conv with
    ``(W, b) = fold(W_dw, BN) + fold(I, BN_fusion)``."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__(channels, channels, kernel_size, groups=channels)
        self.fusion_bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)) + self.fusion_bn(x)

    def kernel(self) -> Kernel:
        return add_branches(
            [super().kernel(), fold_bn(_depthwise_dirac(self.conv), self.fusion_bn)]
        )


class _CheapScales:
    """A cheap operation with per-channel ``scale_conv`` (``s``) and ``scale_identity``
    (``s_id``), buffers or parameters, read and written by :mod:`reparam.models.scales`."""

    conv: nn.Conv2d
    scale_conv: Tensor
    scale_identity: Tensor

    def scale_tensors(self) -> dict[str, Tensor]:
        return {"scale_conv": self.scale_conv, "scale_identity": self.scale_identity}

    def _csla_spec(self, identity: Scale) -> CSLASpec:
        """``s (.) dw(x) + s_id (.) x``, ``s_id`` trainable from ``identity``."""
        channels, k = self.conv.out_channels, self.conv.kernel_size[0]
        branches = (Branch(self.scale_conv.detach(), k),)
        return CSLASpec(channels, channels, branches, k, groups=channels, identity=identity)


class HSGhostCheap(_CheapScales, ConvBN):
    """Hyper-Search cheap operation ``BN(s (.) dw(x) + s_id (.) x)`` with trainable per-channel
    ``s`` (init ``scale``) and ``s_id`` (init 1); deploy: ``fold(s W + s_id I, BN)``. With ``s``
    frozen it is the target's imaginary CSLA block (the official ``csla`` mode)."""

    def __init__(self, channels: int, scale: float = 1.0, kernel_size: int = 3):
        super().__init__(channels, channels, kernel_size, groups=channels)
        self.scale_conv = nn.Parameter(torch.full((channels,), float(scale)))
        self.scale_identity = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        s, s_id = self.scale_conv.view(1, -1, 1, 1), self.scale_identity.view(1, -1, 1, 1)
        return self.bn(s * self.conv(x) + s_id * x)

    def csla_spec(self) -> CSLASpec:
        """The block as a CSLA spec with its current scales."""
        return self._csla_spec(self.scale_identity.detach())

    def equivalent_weight(self) -> Tensor:
        """``s W + s_id I``: the target conv equal to this block now."""
        return equivalent_weight(self.csla_spec(), [self.conv.weight.detach()])

    def kernel(self) -> Kernel:
        return fold_bn(self.equivalent_weight(), self.bn)


class RepOptGhostCheap(_CheapScales, ConvBN):
    """RepOpt-GhostNet target cheap operation ``BN(dw(x))`` with the constant ``s``, ``s_id`` of
    its imaginary block as buffers (see module docstring); deploy: ``fold(W, BN)``."""

    def __init__(self, channels: int, scale: float = 1.0, kernel_size: int = 3):
        super().__init__(channels, channels, kernel_size, groups=channels)
        self.register_buffer("scale_conv", torch.full((channels,), float(scale)))
        self.register_buffer("scale_identity", torch.ones(channels))
        self.identity_init = "one"

    def csla_spec(self) -> CSLASpec:
        """``s`` depthwise kxk plus a trainable identity whose init is 1 or ``scale_identity``
        (``identity_init``)."""
        return self._csla_spec(1.0 if self.identity_init == "one" else self.scale_identity)

    def csla_specs(self) -> dict[str, CSLASpec]:
        return {"conv.weight": self.csla_spec()}

    @torch.no_grad()
    def reset_csla_init(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise the conv at eq. 14 for the current scales."""
        weight = self.conv.weight
        weight.copy_(
            init_weight(
                self.csla_spec(), dtype=weight.dtype, device=weight.device, generator=generator
            )
        )


class GhostModule(nn.Module):
    """``act(cheap_operation(x1))`` with ``x1 = act(BN(conv1x1(x)))``: RepGhost adds the cheap
    features instead of concatenating them, so both are ``out_channels`` wide; ``act`` is ReLU
    when ``relu`` else the identity."""

    def __init__(self, in_channels: int, out_channels: int, cheap: nn.Module, relu: bool):
        super().__init__()
        self.primary_conv = ConvBN(in_channels, out_channels, 1)
        self.primary_act = nn.ReLU() if relu else nn.Identity()
        self.cheap_operation = cheap
        self.act = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.cheap_operation(self.primary_act(self.primary_conv(x))))


class SqueezeExcite(nn.Module):
    """GhostNet's SE: ``x * hardsigmoid(conv_expand(ReLU(conv_reduce(mean_hw(x)))))`` with
    ``make_divisible(C * se_ratio)`` hidden channels."""

    def __init__(self, channels: int, se_ratio: float):
        super().__init__()
        hidden = make_divisible(channels * se_ratio)
        self.conv_reduce = nn.Conv2d(channels, hidden, 1)
        self.act1 = nn.ReLU()
        self.conv_expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * F.hardsigmoid(gate)


class GhostBottleneck(nn.Module):
    """``ghost2(se(conv_dw(ghost1(x)))) + shortcut(x)`` (see module docstring): ``spec`` gives
    the kernel size, stride and SE ratio, ``hidden_channels`` / ``out_channels`` the widths after
    the width multiplier; ``cheap1`` and ``cheap2`` are the cheap operations of ``ghost1`` and
    ``ghost2``."""

    def __init__(
        self,
        in_channels: int,
        spec: BottleneckSpec,
        hidden_channels: int,
        out_channels: int,
        cheap1: nn.Module,
        cheap2: nn.Module,
    ):
        super().__init__()
        k, stride = spec.kernel_size, spec.stride
        self.ghost1 = GhostModule(in_channels, hidden_channels, cheap1, relu=True)
        self.conv_dw = (
            ConvBN(hidden_channels, hidden_channels, k, stride, groups=hidden_channels)
            if stride > 1
            else nn.Identity()
        )
        self.se = (
            SqueezeExcite(hidden_channels, spec.se_ratio) if spec.se_ratio > 0 else nn.Identity()
        )
        self.ghost2 = GhostModule(hidden_channels, out_channels, cheap2, relu=False)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                ConvBN(in_channels, in_channels, k, stride, groups=in_channels),
                ConvBN(in_channels, out_channels, 1),
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.ghost2(self.se(self.conv_dw(self.ghost1(x)))) + self.shortcut(x)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
    return nn.Sequential(
        OrderedDict(conv=ConvBN(in_channels, out_channels, kernel_size, stride), act=nn.ReLU())
    )


class GhostNet(PooledClassifier):
    """The GhostNet skeleton with a pluggable cheap operation (see module docstring), with the
    timm model API of :class:`~reparam.models.vggnet.PooledClassifier`: feature levels at the
    last of ``stem``, ``blocks.0`` .. ``blocks.9`` at each reduction (2, 4, 8, 16, 32 for the
    official config; the last is ``blocks.9``, ``num_features`` wide), ``head_hidden_size`` the
    ``conv_head`` width."""

    stages_name = "blocks"
    classifier_name = "classifier"

    def __init__(
        self,
        cheap: CheapFactory,
        arch: GhostArch,
        num_classes: int = 1000,
        in_channels: int = 3,
        drop_rate: float = 0.2,
    ):
        super().__init__()
        channels = arch.channels(arch.stem_channels)
        self.stem = _conv_bn_relu(in_channels, channels, 3, stride=2)
        groups, strides, widths, run = [], [2], [channels], 0
        for group in arch.stages:
            bottlenecks = []
            for spec in group:
                hidden, out = arch.channels(spec.hidden_channels), arch.channels(spec.out_channels)
                run = run + 1 if spec.stride == 1 and channels == out else 1
                bottlenecks.append(
                    GhostBottleneck(
                        channels,
                        spec,
                        hidden,
                        out,
                        cheap(CheapSpec(hidden, 2 * run - 1)),
                        cheap(CheapSpec(out, 2 * run)),
                    )
                )
                channels = out
            groups.append(nn.Sequential(*bottlenecks))
            strides.append(math.prod(spec.stride for spec in group))
            widths.append(channels)
        last = arch.channels(2 * arch.stages[-1][-1].hidden_channels)
        groups.append(nn.Sequential(_conv_bn_relu(channels, last, 1)))
        self.blocks = nn.Sequential(*groups)
        self.build_head([*strides, 1], [*widths, last], num_classes, drop_rate, arch.head_channels)


def _arch(arch: str | GhostArch) -> GhostArch:
    return arch if isinstance(arch, GhostArch) else GHOSTNET_ARCHS[arch]


def repghostnet(arch: str | GhostArch, num_classes: int = 1000, **kwargs: Any) -> GhostNet:
    """RepGhostNet (structural re-param) of ``arch``: a key of :data:`GHOSTNET_ARCHS` or any
    :class:`GhostArch`."""
    return GhostNet(lambda s: RepGhostCheap(s.channels), _arch(arch), num_classes, **kwargs)


def repopt_ghostnet_hs(arch: str | GhostArch, num_classes: int = 1000, **kwargs: Any) -> GhostNet:
    """Hyper-Search model for RepOpt-GhostNet-``arch``: trainable scales, HS init."""
    return GhostNet(
        lambda s: HSGhostCheap(s.channels, s.hs_init_scale), _arch(arch), num_classes, **kwargs
    )


def repopt_ghostnet(
    arch: str | GhostArch, num_classes: int = 1000, name: str | None = None, **kwargs: Any
) -> GhostNet:
    """RepOpt-GhostNet target model of ``arch`` (target kwargs as ``repopt_vgg``'s,
    :func:`~reparam.models.scales.build_target`; the rest go to :class:`GhostNet`). ``name`` is
    the model a scale file must have been searched for (default ``repopt_ghostnet_<arch>``)."""
    return build_target(
        partial(GhostNet, lambda s: RepOptGhostCheap(s.channels, s.hs_init_scale), _arch(arch)),
        RepOptGhostCheap,
        name=name or f"repopt_ghostnet_{arch if isinstance(arch, str) else 'custom'}",
        init="s = sqrt(2/(m+1)), s_id = 1",
        num_classes=num_classes,
        **kwargs,
    )


register = register_model(classifier="classifier", interpolation="bicubic")


@register
def repghostnet_0_5x(num_classes: int = 1000, **kwargs: Any) -> GhostNet:
    """RepGhostNet 0.5x (Chen et al. 2022, https://arxiv.org/abs/2211.06088)."""
    return repghostnet("0_5x", num_classes, **kwargs)


@register
def repghostnet_1_0x(num_classes: int = 1000, **kwargs: Any) -> GhostNet:
    """RepGhostNet 1.0x (Chen et al. 2022, https://arxiv.org/abs/2211.06088)."""
    return repghostnet("1_0x", num_classes, **kwargs)


@register
def repopt_ghostnet_0_5x(num_classes: int = 1000, **kwargs: Any) -> GhostNet:
    """RepOpt-GhostNet 0.5x target model (https://arxiv.org/abs/2205.15242)."""
    return repopt_ghostnet("0_5x", num_classes, **kwargs)


@register
def repopt_ghostnet_0_5x_hs(num_classes: int = 1000, **kwargs: Any) -> GhostNet:
    """RepOpt-GhostNet 0.5x Hyper-Search model (https://arxiv.org/abs/2205.15242)."""
    return repopt_ghostnet_hs("0_5x", num_classes, **kwargs)


@register
def repopt_ghostnet_1_0x(num_classes: int = 1000, **kwargs: Any) -> GhostNet:
    """RepOpt-GhostNet 1.0x target model (https://arxiv.org/abs/2205.15242)."""
    return repopt_ghostnet("1_0x", num_classes, **kwargs)


@register
def repopt_ghostnet_1_0x_hs(num_classes: int = 1000, **kwargs: Any) -> GhostNet:
    """RepOpt-GhostNet 1.0x Hyper-Search model (https://arxiv.org/abs/2205.15242)."""
    return repopt_ghostnet_hs("1_0x", num_classes, **kwargs)
