"""RepVGG (Ding et al. 2021, https://arxiv.org/abs/2101.03697) and plain VGG of its deploy form.

``repvgg_*``: multi-branch training blocks (3x3-BN + 1x1-BN + BN identity), fused by
``reparam.reparameterize`` into ``conv3x3 + ReLU``. ``vgg_*``: the same network trained directly
as ``conv3x3-BN-ReLU`` (what RepOpt-VGG also trains), for side-by-side comparisons.

Plain VGG's conv init (model kwarg ``init``, **contract**): ``"repvgg"`` (default) starts each
conv at the kernel a freshly built RepVGG block fuses to, ``W3 + pad(W1) + I`` (``W3``, ``W1``
drawn as their ``nn.Conv2d`` would be, BNs at their init, the Dirac identity ``I`` where the block
has one: stride 1, ``in == out``), so the plain network starts as the RepVGG network does;
``"kaiming"``: Kaiming-normal, fan-out (timm's RepVGG, torchvision's VGG); ``"torch"``: torch's
default (Kaiming-uniform, ``a = sqrt 5``). Why ``"repvgg"`` (``benchmarks/plain_vgg.py``, VGG-A0,
the ``basic`` recipe, CIFAR-10): with ``"torch"`` the relative SGD step ``lr |g| / |W|`` at init
is 0.09-0.23 in the seven lowest convs and 0.012 at the top of stage 3 (the gradients of a plain
BN-ReLU stack grow towards the input), and 15 epochs reach 22% top-1 (chance: 10%); with
``"repvgg"`` it is at most 0.033 (stride-2 convs) and 0.002-0.006 in the identity blocks, and they
reach 44%, as RepVGG-A0 does.

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

import torch
from torch import nn

from reparam.csla import Branch, CSLASpec, init_weight
from reparam.models.layers import RepVGGBlock, VGGBlock
from reparam.models.registry import register_model
from reparam.models.vggnet import VGGArch, VGGNet, repvgg_widths

__all__ = ["PLAIN_INITS", "REPVGG_ARCHS", "SE_ARCHS", "init_plain_conv", "repvgg", "vgg"]

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


PLAIN_INITS = ("repvgg", "kaiming", "torch")


@torch.no_grad()
def init_plain_conv(conv: nn.Conv2d, init: str) -> None:
    """Initialise a plain VGG block's 3x3 ``conv`` by ``init`` (one of :data:`PLAIN_INITS`, see
    module docstring)."""
    if init == "repvgg":
        identity = 1.0 if conv.stride == (1, 1) and conv.in_channels == conv.out_channels else None
        spec = CSLASpec(
            conv.in_channels,
            conv.out_channels,
            (Branch(1.0, 3), Branch(1.0, 1)),
            groups=conv.groups,
            identity=identity,
        )
        conv.weight.copy_(init_weight(spec, dtype=conv.weight.dtype, device=conv.weight.device))
    elif init == "kaiming":
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    elif init != "torch":
        raise ValueError(f"init must be one of {list(PLAIN_INITS)}, got {init!r}")


def vgg(arch: str, num_classes: int = 1000, init: str = "repvgg", **kwargs: Any) -> VGGNet:
    """Plain VGG with RepVGG-``arch``'s deploy structure, trained as ``conv3x3-BN-ReLU``;
    ``init``: its conv init (see module docstring)."""
    if arch in SE_ARCHS:
        raise ValueError(f"RepVGG-{arch}'s deploy form keeps its SE blocks; fuse repvgg_{arch}")
    if init not in PLAIN_INITS:
        raise ValueError(f"init must be one of {list(PLAIN_INITS)}, got {init!r}")
    model = _create(arch, VGGBlock, num_classes, **kwargs)
    for block in model.modules():
        if isinstance(block, VGGBlock):
            init_plain_conv(block.conv.conv, init)
    return model


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
