"""RepVGG (Ding et al. 2021, https://arxiv.org/abs/2101.03697) and plain VGG of its deploy form.

``repvgg_*``: multi-branch training blocks (3x3-BN + 1x1-BN + BN identity), fused by
``reparam.reparameterize`` into ``conv3x3 + ReLU``. ``vgg_*``: the same network trained directly
as ``conv3x3-BN-ReLU`` (what RepOpt-VGG also trains), for side-by-side comparisons.

Architectures (paper Table 2): A depths ``(2, 4, 14, 1)``, B depths ``(4, 6, 16, 1)``, widths
``(64a, 128a, 256a, 512b)`` for multipliers ``(a, b)``; ``gN`` puts ``N`` groups on every other
layer. RepVGG-D2se (official code, github.com/DingXiaoH/RepVGG ``create_RepVGG_D2se``, not in the
paper): depths ``(8, 14, 24, 1)``, B2's multipliers ``(2.5, 5)`` and a squeeze-and-excitation
(``channels // 16`` hidden) on the sum of every block's branches, before its ReLU; deploy form
``ReLU(SE(conv3x3(x)))``. Trained at 224 px, evaluated at 320 px (resize 320, centre crop 320).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from .layers import RepVGGBlock, VGGBlock
from .registry import register_model
from .vggnet import VGGArch, VGGNet, repvgg_widths

__all__ = ["REPVGG_ARCHS", "SE_ARCHS", "repvgg", "vgg"]

_A, _B, _D = (2, 4, 14, 1), (4, 6, 16, 1), (8, 14, 24, 1)

REPVGG_ARCHS: dict[str, VGGArch] = {
    "a0": VGGArch(_A, repvgg_widths((0.75, 2.5))),
    "a1": VGGArch(_A, repvgg_widths((1.0, 2.5))),
    "a2": VGGArch(_A, repvgg_widths((1.5, 2.75))),
    "b0": VGGArch(_B, repvgg_widths((1.0, 2.5))),
    "b1": VGGArch(_B, repvgg_widths((2.0, 4.0))),
    "b1g2": VGGArch(_B, repvgg_widths((2.0, 4.0)), groups=2),
    "b1g4": VGGArch(_B, repvgg_widths((2.0, 4.0)), groups=4),
    "b2": VGGArch(_B, repvgg_widths((2.5, 5.0))),
    "b2g2": VGGArch(_B, repvgg_widths((2.5, 5.0)), groups=2),
    "b2g4": VGGArch(_B, repvgg_widths((2.5, 5.0)), groups=4),
    "b3": VGGArch(_B, repvgg_widths((3.0, 5.0))),
    "b3g2": VGGArch(_B, repvgg_widths((3.0, 5.0)), groups=2),
    "b3g4": VGGArch(_B, repvgg_widths((3.0, 5.0)), groups=4),
    "d2se": VGGArch(_D, repvgg_widths((2.5, 5.0))),
}
#: the archs with a squeeze-and-excitation in every block (stem included)
SE_ARCHS = frozenset({"d2se"})


register_repvgg = register_model(first_conv=("stem.conv3x3.conv", "stem.conv1x1.conv"))


def _create(arch: str, block: Callable[..., nn.Module], num_classes: int, **kwargs: Any) -> VGGNet:
    spec = REPVGG_ARCHS[arch]
    return VGGNet(
        lambda s: block(s.in_channels, s.out_channels, s.stride, s.groups),
        spec.depths,
        spec.widths,
        num_classes=num_classes,
        groups_map=spec.groups_map(),
        **kwargs,
    )


def repvgg(arch: str, num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-``arch`` (a key of :data:`REPVGG_ARCHS`) in its multi-branch training form."""
    block = functools.partial(RepVGGBlock, se=arch in SE_ARCHS)
    return _create(arch, block, num_classes, **kwargs)


def vgg(arch: str, num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG with RepVGG-``arch``'s deploy structure, trained as ``conv3x3-BN-ReLU``."""
    if arch in SE_ARCHS:
        raise ValueError(f"RepVGG-{arch}'s deploy form keeps its SE blocks; fuse repvgg_{arch}")
    return _create(arch, VGGBlock, num_classes, **kwargs)


@register_repvgg
def repvgg_a0(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-A0 (Ding et al. 2021, https://arxiv.org/abs/2101.03697), training form."""
    return repvgg("a0", num_classes, **kwargs)


@register_repvgg
def repvgg_a1(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-A1 (Ding et al. 2021, https://arxiv.org/abs/2101.03697), training form."""
    return repvgg("a1", num_classes, **kwargs)


@register_repvgg
def repvgg_a2(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-A2 (Ding et al. 2021, https://arxiv.org/abs/2101.03697), training form."""
    return repvgg("a2", num_classes, **kwargs)


@register_repvgg
def repvgg_b0(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-B0 (Ding et al. 2021, https://arxiv.org/abs/2101.03697), training form."""
    return repvgg("b0", num_classes, **kwargs)


@register_repvgg
def repvgg_b1(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-B1 (Ding et al. 2021, https://arxiv.org/abs/2101.03697), training form."""
    return repvgg("b1", num_classes, **kwargs)


@register_repvgg
def repvgg_b1g2(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-B1g2 (Ding et al. 2021, https://arxiv.org/abs/2101.03697), training form."""
    return repvgg("b1g2", num_classes, **kwargs)


@register_repvgg
def repvgg_b1g4(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-B1g4 (Ding et al. 2021, https://arxiv.org/abs/2101.03697), training form."""
    return repvgg("b1g4", num_classes, **kwargs)


@register_repvgg
def repvgg_b2(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-B2 (Ding et al. 2021, https://arxiv.org/abs/2101.03697), training form."""
    return repvgg("b2", num_classes, **kwargs)


@register_repvgg
def repvgg_b2g2(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-B2g2 (Ding et al. 2021, https://arxiv.org/abs/2101.03697), training form."""
    return repvgg("b2g2", num_classes, **kwargs)


@register_repvgg
def repvgg_b2g4(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-B2g4 (Ding et al. 2021, https://arxiv.org/abs/2101.03697), training form."""
    return repvgg("b2g4", num_classes, **kwargs)


@register_repvgg
def repvgg_b3(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-B3 (Ding et al. 2021, https://arxiv.org/abs/2101.03697), training form."""
    return repvgg("b3", num_classes, **kwargs)


@register_repvgg
def repvgg_b3g2(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-B3g2 (Ding et al. 2021, https://arxiv.org/abs/2101.03697), training form."""
    return repvgg("b3g2", num_classes, **kwargs)


@register_repvgg
def repvgg_b3g4(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-B3g4 (Ding et al. 2021, https://arxiv.org/abs/2101.03697), training form."""
    return repvgg("b3g4", num_classes, **kwargs)


@register_model(
    first_conv=("stem.conv3x3.conv", "stem.conv1x1.conv"),
    test_input_size=(3, 320, 320),
    test_crop_pct=1.0,
)
def repvgg_d2se(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-D2se (Ding et al. 2021, https://arxiv.org/abs/2101.03697; the official code's
    deeper B2 with SE blocks), training form; deploy form ``ReLU(SE(conv3x3(x)))`` per block."""
    return repvgg("d2se", num_classes, **kwargs)


@register_model
def vgg_a0(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG, RepVGG-A0's deploy form (Ding et al. 2021, https://arxiv.org/abs/2101.03697)."""
    return vgg("a0", num_classes, **kwargs)


@register_model
def vgg_a1(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG, RepVGG-A1's deploy form (Ding et al. 2021, https://arxiv.org/abs/2101.03697)."""
    return vgg("a1", num_classes, **kwargs)


@register_model
def vgg_a2(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG, RepVGG-A2's deploy form (Ding et al. 2021, https://arxiv.org/abs/2101.03697)."""
    return vgg("a2", num_classes, **kwargs)


@register_model
def vgg_b0(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG, RepVGG-B0's deploy form (Ding et al. 2021, https://arxiv.org/abs/2101.03697)."""
    return vgg("b0", num_classes, **kwargs)


@register_model
def vgg_b1(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG, RepVGG-B1's deploy form (Ding et al. 2021, https://arxiv.org/abs/2101.03697)."""
    return vgg("b1", num_classes, **kwargs)


@register_model
def vgg_b1g2(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG, RepVGG-B1g2's deploy form (Ding et al. 2021, https://arxiv.org/abs/2101.03697)."""
    return vgg("b1g2", num_classes, **kwargs)


@register_model
def vgg_b1g4(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG, RepVGG-B1g4's deploy form (Ding et al. 2021, https://arxiv.org/abs/2101.03697)."""
    return vgg("b1g4", num_classes, **kwargs)


@register_model
def vgg_b2(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG, RepVGG-B2's deploy form (Ding et al. 2021, https://arxiv.org/abs/2101.03697)."""
    return vgg("b2", num_classes, **kwargs)


@register_model
def vgg_b2g2(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG, RepVGG-B2g2's deploy form (Ding et al. 2021, https://arxiv.org/abs/2101.03697)."""
    return vgg("b2g2", num_classes, **kwargs)


@register_model
def vgg_b2g4(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG, RepVGG-B2g4's deploy form (Ding et al. 2021, https://arxiv.org/abs/2101.03697)."""
    return vgg("b2g4", num_classes, **kwargs)


@register_model
def vgg_b3(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG, RepVGG-B3's deploy form (Ding et al. 2021, https://arxiv.org/abs/2101.03697)."""
    return vgg("b3", num_classes, **kwargs)


@register_model
def vgg_b3g2(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG, RepVGG-B3g2's deploy form (Ding et al. 2021, https://arxiv.org/abs/2101.03697)."""
    return vgg("b3g2", num_classes, **kwargs)


@register_model
def vgg_b3g4(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG, RepVGG-B3g4's deploy form (Ding et al. 2021, https://arxiv.org/abs/2101.03697)."""
    return vgg("b3g4", num_classes, **kwargs)
