"""The VGG-style skeleton shared by RepVGG, plain VGG and RepOpt-VGG.

``stem`` (one stride-2 block, width ``min(64, widths[0])``) -> four ``stages`` (first block of
each stride 2) -> global average pool -> dropout -> ``fc``; feature levels (timm's
``features_only``) at reductions 2 (the stem), 4, 8, 16, 32. The families differ only in the block
they plug in, so their deploy forms have the same structure and state-dict keys.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from timm.layers import SelectAdaptivePool2d, get_device_dtype
from timm.models import checkpoint
from timm.models._features import feature_take_indices
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
    """Base of the backbones here: ``stem -> stages -> pool -> [conv_head -> act2] -> head_drop
    -> classifier``, with timm's model API (what timm's ``tests/test_models.py`` checks).

    Subclasses set ``stem`` and the stages (an ``nn.Sequential`` run in order, of stages of
    blocks or of blocks, at the attribute named ``stages_name``) and call :meth:`build_head`
    with the stride and width of the stem and of each entry of the stages. The classifier is the
    attribute named ``classifier_name`` (a linear layer ``fc`` unless :meth:`make_classifier` is
    overridden). Fusing replaces blocks in place, so a fused model keeps this API and
    ``feature_info``.

    Feature levels (``feature_info``, :meth:`forward_intermediates`, timm's ``features_only``):
    the output of the last of the stem and the stages entries at each reduction, e.g.
    reductions 2, 4, 8, 16, 32 for the VGG skeleton.
    """

    stem: nn.Module
    stages: nn.Sequential
    stages_name = "stages"  # GhostNet: "blocks" (its state-dict keys)
    classifier_name = "fc"
    stages_hold_blocks = True  # stages[i][j] is a block; False: stages[i] is

    def build_head(
        self,
        strides: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        drop_rate: float = 0.0,
        head_width: int | None = None,
    ) -> None:
        """Record the feature levels and build the head; ``strides`` and ``widths`` are those of
        the stem, then of each entry of the stages. ``head_width``: a pre-logits ``conv_head``
        (1x1 with bias, ``head_width`` wide) and ``act2`` (ReLU) on the pooled map, as in timm's
        GhostNet; without it the pooled features go straight to the classifier."""
        reductions = list(itertools.accumulate(strides, operator.mul))
        last = len(reductions) - 1
        self.feature_info = [
            dict(num_chs=widths[i], reduction=reductions[i], module=self._unit_name(i))
            for i in range(last + 1)
            if i == last or reductions[i + 1] != reductions[i]
        ]
        self.grad_checkpointing = False
        self.num_features = widths[-1]
        self.pool = SelectAdaptivePool2d(pool_type="avg")
        self.conv_head = nn.Conv2d(widths[-1], head_width, 1) if head_width else None
        self.act2 = nn.ReLU() if head_width else None
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)

    def make_classifier(self, in_features: int, num_classes: int) -> nn.Module:
        """The classifier of ``num_classes > 0`` classes."""
        return nn.Linear(in_features, num_classes)

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier of ``num_classes`` (0: none, ``forward`` gives the pre-logits);
        ``global_pool``: a timm pool type (``''``: no pooling, ``forward`` gives feature maps;
        with a ``conv_head``, only pools that keep the width), ``None`` keeps the pool."""
        if global_pool is not None:
            pool = SelectAdaptivePool2d(pool_type=global_pool)
            if self.conv_head is not None and pool.feat_mult() != 1:
                raise ValueError(f"pool {global_pool!r} changes the width conv_head takes")
            self.pool = pool
        self.head_hidden_size = (
            self.num_features * self.pool.feat_mult()
            if self.conv_head is None
            else self.conv_head.out_channels
        )
        self.num_classes = num_classes
        classifier = nn.Identity()
        if num_classes > 0:
            classifier = self.make_classifier(self.head_hidden_size, num_classes)
        classifier = classifier.to(**get_device_dtype(self))
        setattr(self, self.classifier_name, classifier.train(self.training))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each entry of the stages in the backward pass instead of storing its
        activations (training with gradients only; the outputs are the same)."""
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups (timm's layer-wise learning-rate decay): the stem, then stages
        (``coarse``) or blocks; the head falls in the last group."""
        stage = rf"^{self.stages_name}\.(\d+)"
        fine = rf"{stage}\.(\d+)" if self.stages_hold_blocks else stage
        return dict(stem=r"^stem", blocks=stage if coarse else fine)

    @property
    def _stages(self) -> nn.Sequential:
        return getattr(self, self.stages_name)

    def _run(self, unit: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(unit, x)
        return unit(x)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for unit in self._stages:
            x = self._run(unit, x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.pool(x)
        if self.conv_head is not None:
            x = self.act2(self.conv_head(x))
        x = self.head_drop(x if self.pool.is_identity() else x.flatten(1))
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def _unit_name(self, position: int) -> str:
        """The module name of position ``position`` in ``[stem, *stages]``."""
        return "stem" if position == 0 else f"{self.stages_name}.{position - 1}"

    def _unit_of(self, level: int) -> int:
        """Position of feature level ``level`` in ``[stem, *stages]``."""
        name = self.feature_info[level]["module"]
        return 0 if name == "stem" else int(name.rpartition(".")[2]) + 1

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """The feature maps of levels ``indices`` (timm's convention: ``None`` all, ``n`` the
        last ``n``, or a sequence) and, unless ``intermediates_only``, the final features.
        ``norm`` has nothing to apply (no final norm layer); the format is ``NCHW`` only."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.feature_info), indices)
        wanted = {self._unit_of(level) for level in take}
        stages = list(self._stages)
        if stop_early or intermediates_only:
            stages = stages[: self._unit_of(last)]
        x = self.stem(x)
        intermediates = [x] if 0 in wanted else []
        for position, unit in enumerate(stages, start=1):
            x = self._run(unit, x)
            if position in wanted:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages entries after the last level of ``indices`` and, if ``prune_head``
        or anything was dropped, the whole head (pool, conv head, classifier); returns the
        absolute indices. ``prune_norm`` has nothing to prune."""
        take, last = feature_take_indices(len(self.feature_info), indices)
        keep = self._unit_of(last)
        if keep < len(self._stages):
            setattr(self, self.stages_name, self._stages[:keep])
            self.num_features = self.feature_info[last]["num_chs"]
            prune_head = True
        if prune_head:
            self.conv_head = self.act2 = None
            self.reset_classifier(0, "")
        return take


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
        self.build_head([2] * (len(depths) + 1), [stem_width, *widths], num_classes, drop_rate)
