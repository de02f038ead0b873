"""ResNet-RS (Bello et al. 2021, "Revisiting ResNets", https://arxiv.org/abs/2103.07579).

Built on timm's ``ResNet`` (the same structure as timm's ``resnetrs*``): bottleneck blocks with
squeeze-excitation (ratio 0.25), ResNet-D (deep stem of three 3x3 convs 32-32-64, the max pool
replaced by a stride-2 3x3 conv, average-pool-then-1x1 projection shortcuts), zero-initialised
last BN gamma in every residual branch, dropout before the classifier (``drop_rate``) and
stochastic depth with the paper's per-stage schedule (``drop_path_rate`` r: stage s of 4 drops
its residual branch with probability ``r * (s + 1) / 5``, i.e. 0.04/0.06/0.08/0.10 for r = 0.1).

``resnet_rs``: kwargs ``depth`` (50, 101, 152, 200, 270, 350, 420; default 50) and ``width``
(multiplies every stage's channels and the stem's), e.g. ``create_model("resnet_rs", depth=200)``;
:func:`scale_resnet_rs` applies the paper's scaling rules to them. Depth 50 has the structure and
state-dict keys of timm's ``resnetrs50``. ``resnet_rs_tiny`` (one block per stage, width 0.25)
trains on 32x32 images in seconds, for tests. timm's ``ResNet`` brings the timm model API
(``features_only``: the stem at reduction 2, then the four stages); ``in_channels`` is its
``in_chans``, as in the other families.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from timm.layers import DropPath, get_attn
from timm.models.resnet import Bottleneck, ResNet

from reparam.models.registry import register_model

__all__ = [
    "RESNET_RS_DEPTHS",
    "RESNET_RS_IMAGE_SIZES",
    "ResNetRSScale",
    "build_resnet_rs",
    "scale_resnet_rs",
    "stage_drop_path_rates",
]

RESNET_RS_DEPTHS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
    270: (4, 29, 53, 4),
    350: (4, 36, 72, 4),
    420: (4, 44, 87, 4),
}
# training resolution the paper pairs with each depth (Table 7 / the reference configs)
RESNET_RS_IMAGE_SIZES: dict[int, int] = {
    50: 160,
    101: 192,
    152: 256,
    200: 256,
    270: 256,
    350: 320,
    420: 320,
}


def stage_drop_path_rates(rate: float, num_stages: int = 4) -> list[float]:
    """Per-stage stochastic depth of ResNet-RS: stage ``s`` (1-based) of ``n`` gets
    ``rate * (s + 1) / (n + 1)``."""
    return [rate * (stage + 1) / (num_stages + 1) for stage in range(1, num_stages + 1)]


def build_resnet_rs(
    depth: int | None = 50,
    num_classes: int = 1000,
    width: float = 1.0,
    layers: tuple[int, ...] | None = None,
    stem_width: int = 32,
    se_ratio: float = 0.25,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    zero_init_last: bool = True,
    in_channels: int = 3,
    **kwargs: Any,
) -> ResNet:
    """A ResNet-RS of ``depth`` (50 ... 420) or explicit bottleneck ``layers``, every width scaled
    by ``width`` (at least 8 channels); other kwargs go to timm's ``ResNet``."""
    if layers is None:
        if depth not in RESNET_RS_DEPTHS:
            raise ValueError(
                f"ResNet-RS depth must be one of {sorted(RESNET_RS_DEPTHS)} (or pass "
                f"layers=...), got {depth!r}"
            )
        layers = RESNET_RS_DEPTHS[depth]
    if width <= 0:
        raise ValueError(f"ResNet-RS width multiplier must be > 0, got {width}")
    channels = tuple(max(8, round(c * width)) for c in (64, 128, 256, 512))
    model = ResNet(
        block=Bottleneck,
        layers=tuple(layers),
        channels=channels,
        num_classes=num_classes,
        in_chans=in_channels,
        stem_width=max(8, round(stem_width * width)),
        stem_type="deep",
        replace_stem_pool=True,
        avg_down=True,
        block_args=dict(attn_layer=partial(get_attn("se"), rd_ratio=se_ratio)),
        drop_rate=drop_rate,
        zero_init_last=zero_init_last,
        **kwargs,
    )
    for stage_rate, stage in zip(
        stage_drop_path_rates(drop_path_rate, len(layers)),
        (model.layer1, model.layer2, model.layer3, model.layer4),
    ):
        for block in stage:
            block.drop_path = DropPath(stage_rate) if stage_rate > 0 else None
    return model


@dataclass(frozen=True)
class ResNetRSScale:
    """A ResNet-RS variant: depth, width multiplier, training resolution."""

    depth: int
    width: float
    image_size: int

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``create_model("resnet_rs", ...)``."""
        return {"depth": self.depth, "width": self.width}


def scale_resnet_rs(scale: ResNetRSScale, epochs: int) -> ResNetRSScale:
    """The next larger variant under the paper's scaling rules (section 7).

    Long schedules (``epochs >= 200``, where larger models overfit) scale depth to the next
    ResNet-RS depth and take the resolution the paper pairs with it, never shrinking it (resolution
    grows slowly); short schedules scale width by 1.5x at the same resolution.
    """
    if epochs >= 200:
        deeper = [d for d in sorted(RESNET_RS_DEPTHS) if d > scale.depth]
        if deeper:
            depth = deeper[0]
            return ResNetRSScale(
                depth, scale.width, max(scale.image_size, RESNET_RS_IMAGE_SIZES[depth])
            )
    return ResNetRSScale(scale.depth, scale.width * 1.5, scale.image_size)


@register_model(
    first_conv="conv1.0",
    interpolation="bicubic",
    input_size=(3, 160, 160),
    pool_size=(5, 5),
    crop_pct=0.91,
    test_input_size=(3, 224, 224),
)
def resnet_rs(
    num_classes: int = 1000, depth: int = 50, width: float = 1.0, **kwargs: Any
) -> ResNet:
    """ResNet-RS, any depth and width (Bello et al. 2021, https://arxiv.org/abs/2103.07579)."""
    return build_resnet_rs(depth, num_classes=num_classes, width=width, **kwargs)


@register_model(
    first_conv="conv1.0",
    interpolation="bicubic",
    input_size=(3, 32, 32),
    pool_size=(1, 1),
    crop_pct=1.0,
)
def resnet_rs_tiny(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """Tiny ResNet-RS for tests (Bello et al. 2021, https://arxiv.org/abs/2103.07579)."""
    kwargs.setdefault("width", 0.25)
    return build_resnet_rs(None, num_classes=num_classes, layers=(1, 1, 1, 1), **kwargs)
