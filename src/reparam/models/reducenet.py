"""ReduceNet: depth re-parameterized residual nets that deploy as one 3x3 conv per block.

After the ReduceNet repository (https://github.com/ohmydroid/reducenet), whose block keeps a 3x3
conv after its branches; here the nonlinear bottleneck is annealed to linear instead, so the
whole training block fuses::

    y = BN2(conv1x1(A_lambda(BN1(conv3x3(x))))) + shortcut(x);  out = ReLU(y)  (the kept ReLU)

``conv3x3`` (stride ``s``) widens to ``expansion * C_out`` channels, ``A_lambda`` anneals from ReLU
to the identity, ``shortcut`` is the identity when ``s = 1`` and ``C_in = C_out``, a 1x1-BN
projection otherwise (``projection=True``, default, as in the repository) or absent
(``projection=False``). At ``lambda = 1`` the block is one exact 3x3 conv: ``compose(3x3, 1x1)``
(``p2 = 0``: exact everywhere) plus the Dirac kernel or the projection kernel padded to 3x3.
Deploy: ``Sequential(conv=Conv2d(3x3, bias), act=ReLU)``, the plain VGG block.

``keep_relu=False`` drops the kept ReLU and anneals the stem's activation too: the deployed
network is then one affine map (see ``benchmarks/depth_reparam.py``). ``plain=True`` builds the
deploy-shaped network trained directly (``conv3x3-BN + shortcut -> ReLU``), the baseline.

Layouts (``stem`` -> ``stages`` -> global average pool -> ``fc``; no max pool, stride-2 3x3 convs
downsample; train depth counts convs + fc, deploy depth after fusion):

- ``reducenet20`` (ResNet-20 shaped): CIFAR, stem 3x3/1 16, stages 16/32/64 x 3 blocks
  (strides 1, 2, 2): 20 -> 11. ``reducenet56``: the same with 9 blocks per stage: 56 -> 29.
- ``reducenet18_imagenet`` (ResNet-18 shaped, stride-2 3x3 convs instead of the 7x7 stem and max
  pool): stem 3x3/2 64, stages 64/128/256/512 x 2 blocks, all first blocks stride 2 (total stride
  32): 18 -> 10. ``reducenet34_imagenet``: 3/4/6/3 blocks: 34 -> 18.

Entrypoint kwargs: ``expansion`` (2.0), ``keep_relu`` (True), ``projection`` (True), ``plain``
(False), ``drop_rate``, ``in_channels``, and any :class:`ReduceNetLayout` field.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reparam.errors import FusionError
from reparam.fuse import check_eval_mode
from reparam.kernels import ConvSpec, Kernel, add_branches, compose, identity_kernel
from reparam.models.annealed import AnnealedActivation
from reparam.models.layers import ConvBN, conv_from_kernel
from reparam.models.registry import register_model
from reparam.models.vggnet import PooledClassifier

__all__ = [
    "ReduceBlock",
    "ReduceNet",
    "ReduceNetLayout",
    "reducenet18_imagenet",
    "reducenet20",
    "reducenet34_imagenet",
    "reducenet56",
]

log = logging.getLogger(__name__)


class ReduceBlock(nn.Module):
    """One ReduceNet block (see module docstring); ``plain=True`` drops the 1x1 and ``A_lambda``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        expansion: float = 2.0,
        keep_relu: bool = True,
        projection: bool = True,
        plain: bool = False,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.plain = plain
        middle = out_channels if plain else max(1, round(expansion * out_channels))
        self.conv3x3 = ConvBN(in_channels, middle, 3, stride)
        if not plain:
            self.act = AnnealedActivation()
            self.conv1x1 = ConvBN(middle, out_channels, 1)
        self.identity = stride == 1 and in_channels == out_channels
        self.shortcut = (
            ConvBN(in_channels, out_channels, 1, stride)
            if (projection and not self.identity)
            else None
        )
        self.out_act = nn.ReLU() if keep_relu else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv3x3(x)
        if not self.plain:
            y = self.conv1x1(self.act(y))
        if self.identity:
            y = y + x
        elif self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.out_act(y) if self.out_act is not None else y

    def macs_per_pixel(self) -> tuple[int, int]:
        """MACs per output pixel ``(before, after)`` fusion; the fused block is one 3x3 conv."""
        before = 9 * self.in_channels * self.conv3x3.conv.out_channels
        if not self.plain:
            before += self.conv1x1.conv.in_channels * self.out_channels
        if self.shortcut is not None:
            before += self.in_channels * self.out_channels
        return before, 9 * self.in_channels * self.out_channels

    def kernel(self) -> Kernel:
        """The block as one 3x3 conv (stride ``s``, padding 1): ``compose(3x3, 1x1)`` + shortcut."""
        main = self.conv3x3.kernel()
        if not self.plain:
            composed = compose(ConvSpec(main, self.stride, 1), ConvSpec(self.conv1x1.kernel()))
            if not composed.exact_region.everywhere:  # cannot happen for 3x3 then 1x1
                raise FusionError(f"3x3 then 1x1 composition is not exact: {composed.exact_region}")
            main = Kernel(composed.weight, composed.bias)
        branches = [main]
        if self.identity:
            weight = main.weight
            dirac = identity_kernel(self.out_channels, 3, dtype=weight.dtype, device=weight.device)
            branches.append(Kernel(dirac, torch.zeros_like(main.bias)))
        elif self.shortcut is not None:
            branches.append(self.shortcut.kernel())
        return add_branches(branches)

    def fuse(self) -> nn.Sequential:
        if not self.plain:
            self.act.check_fusable()
        check_eval_mode(self)
        before, after = self.macs_per_pixel()
        if after > before:
            log.warning(
                "fusing a ReduceNet block %d->%d (narrow middle) increases MACs/pixel %d -> %d",
                self.in_channels,
                self.out_channels,
                before,
                after,
            )
        # geometry template only (channels, stride): the middle width is gone after fusion
        template = nn.Conv2d(self.in_channels, self.out_channels, 1, self.stride, device="meta")
        layers = OrderedDict(conv=conv_from_kernel(self.kernel(), template))
        if self.out_act is not None:
            layers["act"] = nn.ReLU()
        return nn.Sequential(layers)


class ReduceNet(PooledClassifier):
    """``stem`` (conv3x3-BN-act) -> ``stages`` of :class:`ReduceBlock` -> GAP -> dropout -> ``fc``.

    The first block of stage ``i`` has stride ``strides[i]``. The stem activation is ReLU, or an
    annealed activation when ``keep_relu=False`` (then nothing nonlinear is left after fusion;
    with ``plain=True`` as well, a deep linear network trained directly).
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        strides: Sequence[int],
        stem_width: int,
        stem_stride: int = 1,
        num_classes: int = 1000,
        in_channels: int = 3,
        expansion: float = 2.0,
        keep_relu: bool = True,
        projection: bool = True,
        plain: bool = False,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if not len(depths) == len(widths) == len(strides):
            raise ValueError(f"depths {depths}, widths {widths}, strides {strides}: lengths differ")
        stem_act = nn.ReLU() if keep_relu else nn.Identity() if plain else AnnealedActivation()
        self.stem = nn.Sequential(
            OrderedDict(conv=ConvBN(in_channels, stem_width, 3, stem_stride), act=stem_act)
        )
        stages, channels = [], stem_width
        for depth, width, stride in zip(depths, widths, strides):
            blocks = []
            for index in range(depth):
                blocks.append(
                    ReduceBlock(
                        channels,
                        width,
                        stride if index == 0 else 1,
                        expansion,
                        keep_relu,
                        projection,
                        plain,
                    )
                )
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.build_head([stem_stride, *strides], [stem_width, *widths], num_classes, drop_rate)


@dataclass(frozen=True)
class ReduceNetLayout:
    """Stage widths, first-block strides and the stem (width, stride) of a :class:`ReduceNet`."""

    widths: tuple[int, ...]
    strides: tuple[int, ...]
    stem_width: int
    stem_stride: int


_CIFAR = ReduceNetLayout((16, 32, 64), (1, 2, 2), stem_width=16, stem_stride=1)
_IMAGENET = ReduceNetLayout((64, 128, 256, 512), (2, 2, 2, 2), stem_width=64, stem_stride=2)


def _create(
    depths: tuple[int, ...], layout: ReduceNetLayout, num_classes: int, **kwargs: Any
) -> ReduceNet:
    """``ReduceNet(depths, **layout)``; ``kwargs`` may override any layout field."""
    return ReduceNet(depths, num_classes=num_classes, **{**asdict(layout), **kwargs})


register_cifar = register_model(input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0)


@register_cifar
def reducenet20(num_classes: int = 1000, **kwargs: Any) -> ReduceNet:
    """ReduceNet-20, CIFAR layout, 20 -> 11 layers (https://github.com/ohmydroid/reducenet)."""
    return _create((3, 3, 3), _CIFAR, num_classes, **kwargs)


@register_cifar
def reducenet56(num_classes: int = 1000, **kwargs: Any) -> ReduceNet:
    """ReduceNet-56, CIFAR layout, 56 -> 29 layers (https://github.com/ohmydroid/reducenet)."""
    return _create((9, 9, 9), _CIFAR, num_classes, **kwargs)


@register_model
def reducenet18_imagenet(num_classes: int = 1000, **kwargs: Any) -> ReduceNet:
    """ReduceNet-18, ImageNet layout, 18 -> 10 layers (https://github.com/ohmydroid/reducenet)."""
    return _create((2, 2, 2, 2), _IMAGENET, num_classes, **kwargs)


@register_model
def reducenet34_imagenet(num_classes: int = 1000, **kwargs: Any) -> ReduceNet:
    """ReduceNet-34, ImageNet layout, 34 -> 18 layers (https://github.com/ohmydroid/reducenet)."""
    return _create((3, 4, 6, 3), _IMAGENET, num_classes, **kwargs)
