"""VanillaNet (Chen et al. 2023, https://arxiv.org/abs/2305.12972): shallow, wide, no shortcuts.

Training form (depth ``L`` = stem + ``L - 2`` blocks + head, each fusing to one layer):

- ``stem``: ``conv4x4/4-BN -> A_lambda -> conv1x1-BN -> series activation``
- ``block``: ``conv1x1-BN -> A_lambda -> conv1x1-BN -> [max pool s] -> series activation``
- ``pool``, ``head_drop``, ``head``: ``GAP -> dropout -> fc-BN -> A_lambda -> fc``
- series activation: ``ReLU -> depthwise (2n+1)x(2n+1) conv -> BN`` (``n = act_num = 3``)

At ``lambda = 1`` each pair of convs around ``A_lambda`` composes exactly (the second is 1x1 with
no padding), giving the deploy form of the paper: ``conv4x4/4``; ``conv1x1 -> [max pool] -> ReLU
-> depthwise conv``; ``GAP -> fc``. Fusing below ``lambda = 1`` is a :class:`FusionError` (the
official ``switch_to_deploy`` silently fuses at any lambda).

Configurations (widths ``dims`` and pool strides) are those of the official models; ImageNet
top-1: VanillaNet-5 72.49 ... VanillaNet-13 82.05, VanillaNet-13 1.5x (``vanillanet_13_x1_5``)
82.53 and, with adaptive pools and a ``conv4x4/3`` stem (``vanillanet_13_x1_5_ada_pool``), 83.11.
``width_multiplier`` scales every width (the official widths are 512-6144: use e.g. ``1/32`` on
small data). Small inputs: max pools use ``ceil_mode=True``, so any input of at least
``stem_stride`` pixels works (identical to the official model when the sizes divide, e.g. 224);
``stem_stride`` (default 4, the official patchify stem) may be lowered for small images. The
adaptive pools give fixed map sizes (38, 19, 10 pixels: the sizes at 224). BN eps is 1e-6 and
weights are truncated-normal (std 0.02) as in the official code."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from reparam.fuse import check_eval_mode
from reparam.kernels import ConvSpec, Kernel, compose, fold_bn
from reparam.models.annealed import AnnealedActivation
from reparam.models.layers import conv_from_kernel
from reparam.models.registry import register_model
from reparam.models.vggnet import PooledClassifier

__all__ = [
    "ADA_POOL_13",
    "VANILLANET_ARCHS",
    "SeriesActivation",
    "VanillaArch",
    "VanillaBlock",
    "VanillaHead",
    "VanillaNet",
    "VanillaStem",
    "vanillanet",
]

BN_EPS = 1e-6


def _conv_bn_kernel(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Kernel:
    return fold_bn(conv.weight, bn, conv.bias)


class SeriesActivation(nn.Module):
    """``BN(depthwise_conv(ReLU(x)))``, kernel ``2 act_num + 1``; deploy: ReLU then a biased
    depthwise conv (BN folded)."""

    def __init__(self, channels: int, act_num: int = 3):
        super().__init__()
        k = 2 * act_num + 1
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(self.act(x)))

    def fuse(self) -> nn.Sequential:
        check_eval_mode(self)
        conv = conv_from_kernel(fold_bn(self.conv.weight, self.bn), self.conv)
        return nn.Sequential(OrderedDict(act=nn.ReLU(), conv=conv))


class _AnnealedPair(nn.Module):
    """``BN2(conv2(A_lambda(BN1(conv1(x)))))`` with ``conv2`` a 1x1: fuses into one ``conv1``-shaped
    conv, exactly (``compose`` with ``p2 = 0``)."""

    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    conv2: nn.Conv2d
    bn2: nn.BatchNorm2d

    def _pair(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))

    def fused_conv(self) -> nn.Conv2d:
        self.act.check_fusable()
        check_eval_mode(self)
        c1 = self.conv1
        composed = compose(
            ConvSpec(_conv_bn_kernel(c1, self.bn1), c1.stride[0], c1.padding[0]),
            ConvSpec(_conv_bn_kernel(self.conv2, self.bn2)),
        )
        conv = nn.Conv2d(
            c1.in_channels,
            self.conv2.out_channels,
            c1.kernel_size,
            c1.stride,
            c1.padding,
            dtype=composed.weight.dtype,
            device=composed.weight.device,
        )
        with torch.no_grad():  # no conv_from_kernel: the 4x4/4 stem has no padding
            conv.weight.copy_(composed.weight)
            conv.bias.copy_(composed.bias)
        return conv


class VanillaStem(_AnnealedPair):
    """``conv k x k / s (padding p) -> BN -> A_lambda -> conv1x1 -> BN -> series activation``."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 4,
        act_num: int = 3,
        kernel_size: int | None = None,
        padding: int = 0,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size or stride, stride, padding)
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.act = AnnealedActivation()
        self.conv2 = nn.Conv2d(channels, channels, 1)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.series = SeriesActivation(channels, act_num)

    def forward(self, x: Tensor) -> Tensor:
        return self.series(self._pair(x))

    def fuse(self) -> nn.Sequential:
        return nn.Sequential(OrderedDict(conv=self.fused_conv(), series=self.series.fuse()))


class VanillaBlock(_AnnealedPair):
    """``conv1x1-BN -> A_lambda -> conv1x1-BN -> [pool] -> series activation``; the pool (when
    ``stride > 1``) is a ``stride`` max pool, or an adaptive max pool to ``pool_size`` pixels
    when ``pool_size > 0`` (the official ``ada_pool`` models)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 2,
        act_num: int = 3,
        pool_size: int = 0,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 1)
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.act = AnnealedActivation()
        self.conv2 = nn.Conv2d(in_channels, out_channels, 1)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        if stride == 1:
            self.pool = nn.Identity()
        elif pool_size:
            self.pool = nn.AdaptiveMaxPool2d(pool_size)
        else:
            self.pool = nn.MaxPool2d(stride, ceil_mode=True)
        self.series = SeriesActivation(out_channels, act_num)

    def forward(self, x: Tensor) -> Tensor:
        return self.series(self.pool(self._pair(x)))

    def fuse(self) -> nn.Sequential:
        return nn.Sequential(
            OrderedDict(conv=self.fused_conv(), pool=self.pool, series=self.series.fuse())
        )


class VanillaHead(nn.Module):
    """The classifier ``fc1 -> BN -> A_lambda -> fc2`` (after the model's pool and dropout);
    deploy ``Sequential(fc=Linear)`` (one layer, the keys of earlier fused folders)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, num_classes)
        self.bn = nn.BatchNorm1d(num_classes, eps=BN_EPS)
        self.act = AnnealedActivation()
        self.fc2 = nn.Linear(num_classes, num_classes)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.bn(self.fc1(x))))

    def fuse(self) -> nn.Sequential:
        self.act.check_fusable()
        check_eval_mode(self)
        first = fold_bn(self.fc1.weight, self.bn, self.fc1.bias)
        composed = compose(
            ConvSpec(Kernel(first.weight[..., None, None], first.bias)),
            ConvSpec(Kernel(self.fc2.weight[..., None, None].detach(), self.fc2.bias.detach())),
        )
        fc = nn.Linear(
            self.fc1.in_features,
            self.fc2.out_features,
            dtype=composed.weight.dtype,
            device=composed.weight.device,
        )
        fc.weight.data.copy_(composed.weight[..., 0, 0])
        fc.bias.data.copy_(composed.bias)
        return nn.Sequential(OrderedDict(fc=fc))


class VanillaNet(PooledClassifier):
    """``stem`` -> ``stages`` (one :class:`VanillaBlock` each) -> GAP -> dropout -> ``head``;
    ``dims[i] -> dims[i+1]`` in block ``i`` with pool stride ``strides[i]``.

    ``ada_pool`` (the official ``*_ada_pool`` models): per block, the output size of an adaptive
    max pool in place of its max pool (0: keep it), and the stem becomes ``conv4x4 / 3``, padding
    1. Feature levels: the last block at each reduction (stem stride times pool strides).
    """

    classifier_name = "head"
    stages_hold_blocks = False

    def __init__(
        self,
        dims: Sequence[int],
        strides: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        act_num: int = 3,
        stem_stride: int = 4,
        drop_rate: float = 0.0,
        ada_pool: Sequence[int] | None = None,
    ):
        super().__init__()
        if len(dims) != len(strides) + 1:
            raise ValueError(f"VanillaNet needs len(dims) == len(strides) + 1: {dims}, {strides}")
        if ada_pool is None:
            self.stem = VanillaStem(in_channels, dims[0], stem_stride, act_num)
            pool_sizes = [0] * len(strides)
        elif len(ada_pool) != len(strides) or stem_stride != 4:
            raise ValueError(
                f"ada_pool needs one size per block ({len(strides)}: {ada_pool}) and the "
                f"official stem (stem_stride 4, got {stem_stride})"
            )
        else:
            stem_stride = 3
            self.stem = VanillaStem(in_channels, dims[0], stem_stride, act_num, 4, padding=1)
            pool_sizes = list(ada_pool)
        self.stages = nn.Sequential(
            *(
                VanillaBlock(dims[i], dims[i + 1], s, act_num, pool_sizes[i])
                for i, s in enumerate(strides)
            )
        )
        self.apply(_init_weights)
        self.build_head([stem_stride, *strides], dims, num_classes, drop_rate)

    def make_classifier(self, in_features: int, num_classes: int) -> VanillaHead:
        return VanillaHead(in_features, num_classes)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class VanillaArch:
    """A VanillaNet configuration: ``dims`` (stem width, then each block's output width) and the
    max-pool stride of each block; depth ``len(dims) + 1`` (stem + blocks + head)."""

    dims: tuple[int, ...]
    strides: tuple[int, ...]


_S, _M, _L, _XL = 128 * 4, 256 * 4, 512 * 4, 1024 * 4
# depth -> the official configuration
VANILLANET_ARCHS: dict[int, VanillaArch] = {
    5: VanillaArch((_S, _M, _L, _XL), (2, 2, 2)),
    6: VanillaArch((_S, _M, _L, _XL, _XL), (2, 2, 2, 1)),
    7: VanillaArch((_S, _S, _M, _L, _XL, _XL), (1, 2, 2, 2, 1)),
    8: VanillaArch((_S, _S, _M, _L, _L, _XL, _XL), (1, 2, 2, 1, 2, 1)),
    9: VanillaArch((_S, _S, _M) + (_L,) * 3 + (_XL, _XL), (1, 2, 2, 1, 1, 2, 1)),
    10: VanillaArch((_S, _S, _M) + (_L,) * 4 + (_XL, _XL), (1, 2, 2, 1, 1, 1, 2, 1)),
    11: VanillaArch((_S, _S, _M) + (_L,) * 5 + (_XL, _XL), (1, 2, 2, 1, 1, 1, 1, 2, 1)),
    12: VanillaArch((_S, _S, _M) + (_L,) * 6 + (_XL, _XL), (1, 2, 2, 1, 1, 1, 1, 1, 2, 1)),
    13: VanillaArch((_S, _S, _M) + (_L,) * 7 + (_XL, _XL), (1, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1)),
}
#: the official ``vanillanet_13_x1_5_ada_pool`` pools: at 224 pixels the stem gives 75, and the
#: stride-2 blocks pool to 38, 19, 10 pixels
ADA_POOL_13 = (0, 38, 19, 0, 0, 0, 0, 0, 0, 10, 0)


def vanillanet(
    depth: int, num_classes: int = 1000, width_multiplier: float = 1.0, **kwargs: Any
) -> VanillaNet:
    """VanillaNet-``depth`` (5 ... 13) with every width ``round(d * width_multiplier)`` (at least
    1); other kwargs (``stem_stride``, ``act_num``, ``drop_rate``, ``in_channels``,
    ``ada_pool``) go to :class:`VanillaNet`."""
    if depth not in VANILLANET_ARCHS:
        raise ValueError(f"VanillaNet depth must be one of {sorted(VANILLANET_ARCHS)}, got {depth}")
    arch = VANILLANET_ARCHS[depth]
    dims = tuple(max(1, round(d * width_multiplier)) for d in arch.dims)
    return VanillaNet(dims, arch.strides, num_classes=num_classes, **kwargs)


register = register_model(
    first_conv="stem.conv1", classifier=("head.fc1", "head.fc2"), interpolation="bicubic"
)


@register
def vanillanet_5(num_classes: int = 1000, **kwargs: Any) -> VanillaNet:
    """VanillaNet-5 (Chen et al. 2023, https://arxiv.org/abs/2305.12972)."""
    return vanillanet(5, num_classes, **kwargs)


@register
def vanillanet_6(num_classes: int = 1000, **kwargs: Any) -> VanillaNet:
    """VanillaNet-6 (Chen et al. 2023, https://arxiv.org/abs/2305.12972)."""
    return vanillanet(6, num_classes, **kwargs)


@register
def vanillanet_7(num_classes: int = 1000, **kwargs: Any) -> VanillaNet:
    """VanillaNet-7 (Chen et al. 2023, https://arxiv.org/abs/2305.12972)."""
    return vanillanet(7, num_classes, **kwargs)


@register
def vanillanet_8(num_classes: int = 1000, **kwargs: Any) -> VanillaNet:
    """VanillaNet-8 (Chen et al. 2023, https://arxiv.org/abs/2305.12972)."""
    return vanillanet(8, num_classes, **kwargs)


@register
def vanillanet_9(num_classes: int = 1000, **kwargs: Any) -> VanillaNet:
    """VanillaNet-9 (Chen et al. 2023, https://arxiv.org/abs/2305.12972)."""
    return vanillanet(9, num_classes, **kwargs)


@register
def vanillanet_10(num_classes: int = 1000, **kwargs: Any) -> VanillaNet:
    """VanillaNet-10 (Chen et al. 2023, https://arxiv.org/abs/2305.12972)."""
    return vanillanet(10, num_classes, **kwargs)


@register
def vanillanet_11(num_classes: int = 1000, **kwargs: Any) -> VanillaNet:
    """VanillaNet-11 (Chen et al. 2023, https://arxiv.org/abs/2305.12972)."""
    return vanillanet(11, num_classes, **kwargs)


@register
def vanillanet_12(num_classes: int = 1000, **kwargs: Any) -> VanillaNet:
    """VanillaNet-12 (Chen et al. 2023, https://arxiv.org/abs/2305.12972)."""
    return vanillanet(12, num_classes, **kwargs)


@register
def vanillanet_13(num_classes: int = 1000, **kwargs: Any) -> VanillaNet:
    """VanillaNet-13 (Chen et al. 2023, https://arxiv.org/abs/2305.12972)."""
    return vanillanet(13, num_classes, **kwargs)


@register
def vanillanet_13_x1_5(
    num_classes: int = 1000, width_multiplier: float = 1.0, **kwargs: Any
) -> VanillaNet:
    """VanillaNet-13, 1.5x wide (Chen et al. 2023, https://arxiv.org/abs/2305.12972)."""
    return vanillanet(13, num_classes, 1.5 * width_multiplier, **kwargs)


@register
def vanillanet_13_x1_5_ada_pool(
    num_classes: int = 1000, width_multiplier: float = 1.0, **kwargs: Any
) -> VanillaNet:
    """VanillaNet-13 1.5x, adaptive pools (Chen et al. 2023, https://arxiv.org/abs/2305.12972)."""
    return vanillanet(13, num_classes, 1.5 * width_multiplier, ada_pool=ADA_POOL_13, **kwargs)
