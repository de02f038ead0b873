"""RepVGG (https://arxiv.org/abs/2101.03697) and the plain VGG baseline with the same deploy form.

``repvgg_*``: multi-branch training blocks (3x3-BN + 1x1-BN + BN identity), fused by
``reparam.reparameterize`` into ``conv3x3 + ReLU``. ``vgg_*``: the same network trained directly
as ``conv3x3-BN-ReLU`` (what RepOpt-VGG also trains), for side-by-side comparisons.
"""

from __future__ import annotations

from typing import Any

from .layers import RepVGGBlock, VGGBlock
from .registry import register_model
from .vggnet import VGGNet, groups_every_other, repvgg_widths

__all__ = ["REPVGG_ARCHS", "repvgg", "vgg"]

_A_DEPTHS, _B_DEPTHS = (2, 4, 14, 1), (4, 6, 16, 1)

# name -> (depths, width multipliers (a, b), groups on every other layer)
REPVGG_ARCHS: dict[str, tuple[tuple[int, ...], tuple[float, float], int]] = {
    "a0": (_A_DEPTHS, (0.75, 2.5), 1),
    "a1": (_A_DEPTHS, (1.0, 2.5), 1),
    "a2": (_A_DEPTHS, (1.5, 2.75), 1),
    "b0": (_B_DEPTHS, (1.0, 2.5), 1),
    "b1": (_B_DEPTHS, (2.0, 4.0), 1),
    "b1g2": (_B_DEPTHS, (2.0, 4.0), 2),
    "b1g4": (_B_DEPTHS, (2.0, 4.0), 4),
    "b2": (_B_DEPTHS, (2.5, 5.0), 1),
    "b2g4": (_B_DEPTHS, (2.5, 5.0), 4),
    "b3": (_B_DEPTHS, (3.0, 5.0), 1),
    "b3g4": (_B_DEPTHS, (3.0, 5.0), 4),
}


def _build(arch: str, block: type, num_classes: int, **kwargs: Any) -> VGGNet:
    depths, multipliers, groups = REPVGG_ARCHS[arch]
    return VGGNet(
        lambda s: block(s.in_channels, s.out_channels, s.stride, s.groups),
        depths,
        repvgg_widths(multipliers),
        num_classes=num_classes,
        groups_map=groups_every_other(groups, depths) if groups > 1 else None,
        **kwargs,
    )


def repvgg(arch: str, num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepVGG-``arch`` (``a0`` ... ``b3g4``) in its multi-branch training form."""
    return _build(arch, RepVGGBlock, num_classes, **kwargs)


def vgg(arch: str, num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Plain VGG with RepVGG-``arch``'s deploy structure, trained as ``conv3x3-BN-ReLU``."""
    return _build(arch, VGGBlock, num_classes, **kwargs)


def _entrypoint(family: str, arch: str):
    build = repvgg if family == "repvgg" else vgg

    def entrypoint(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
        return build(arch, num_classes, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = f"{family}_{arch}"
    entrypoint.__module__ = __name__
    depths, (a, b), groups = REPVGG_ARCHS[arch]
    kind = "RepVGG (multi-branch training form)" if family == "repvgg" else "plain VGG baseline"
    entrypoint.__doc__ = (
        f"{kind}, {arch.upper()}: depths {depths}, multipliers a={a} b={b}, groups {groups}."
    )
    return entrypoint


for _family in ("repvgg", "vgg"):
    for _arch in REPVGG_ARCHS:
        register_model(_entrypoint(_family, _arch))
