"""The VGG-style skeleton shared by RepVGG, plain VGG and RepOpt-VGG.

``stem`` (one stride-2 block, width ``min(64, widths[0])``) -> four ``stages`` (first block of
each stride 2) -> global average pool -> dropout -> ``fc``. The families differ only in the block
they plug in, so their deploy forms have the same structure and state-dict keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "BlockSpec",
    "PooledClassifier",
    "VGGArch",
    "VGGNet",
    "groups_every_other",
    "repvgg_widths",
]


@dataclass(frozen=True)
class BlockSpec:
    """Where a block sits: ``stage`` 0 is the stem, 1..4 the stages; ``index`` counts from 0 in
    each stage."""

    in_channels: int
    out_channels: int
    stride: int
    groups: int
    stage: int
    index: int


BlockFactory = Callable[[BlockSpec], nn.Module]


def repvgg_widths(width_multipliers: tuple[float, float]) -> tuple[int, ...]:
    """RepVGG widths ``(64a, 128a, 256a, 512b)`` for multipliers ``(a, b)``."""
    a, b = width_multipliers
    return int(64 * a), int(128 * a), int(256 * a), int(512 * b)


def groups_every_other(groups: int, depths: Sequence[int]) -> dict[int, int]:
    """RepVGG's ``g2``/``g4`` map: ``groups`` on every even layer index (layers after the stem
    count from 1)."""
    return {layer: groups for layer in range(2, sum(depths) + 1, 2)}


@dataclass(frozen=True)
class VGGArch:
    """A VGG-style architecture: blocks per stage, stage widths (the stem is ``min(64, widths[0])``
    wide) and the groups of every other layer (1: dense everywhere)."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    groups: int = 1

    def groups_map(self) -> dict[int, int] | None:
        """``{layer: groups}`` for :class:`VGGNet`, ``None`` when dense."""
        return groups_every_other(self.groups, self.depths) if self.groups > 1 else None


class PooledClassifier(nn.Module):
    """Base of the backbones here: ``stem -> stages -> global average pool -> dropout -> fc``.

    Subclasses set ``stem`` and ``stages`` and call :meth:`build_head`; timm-style
    ``forward_features`` / ``forward_head`` split.
    """

    stem: nn.Module
    stages: nn.Module

    def build_head(self, channels: int, num_classes: int, drop_rate: float = 0.0) -> None:
        self.num_features = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(self.head_drop(torch.flatten(self.pool(x), 1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class VGGNet(PooledClassifier):
    """A VGG-style backbone with a pluggable block (see module docstring)."""

    def __init__(
        self,
        block: BlockFactory,
        depths: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        groups_map: dict[int, int] | None = None,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if len(depths) != len(widths):
            raise ValueError(f"depths {tuple(depths)} and widths {tuple(widths)} differ in length")
        groups_map = groups_map or {}
        stem_width = min(64, widths[0])
        self.stem = block(BlockSpec(in_channels, stem_width, 2, 1, 0, 0))
        stages, channels, layer = [], stem_width, 1
        for stage, (depth, width) in enumerate(zip(depths, widths), start=1):
            blocks = []
            for index in range(depth):
                groups = groups_map.get(layer, 1)
                blocks.append(
                    block(BlockSpec(channels, width, 2 if index == 0 else 1, groups, stage, index))
                )
                channels, layer = width, layer + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.build_head(channels, num_classes, drop_rate)
