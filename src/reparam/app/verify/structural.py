"""``reparam verify`` checks for the structural re-parameterizations: RepVGG (with and without
RepVGG-D2se's SE blocks), and the GhostNet family (RepGhost's cheap operation with its BN fusion
branch, and the Hyper-Search and RepOpt forms, which fold their scales)."""

from __future__ import annotations

import torch

from reparam.fuse import reparameterize
from reparam.models.layers import RepVGGBlock
from reparam.models.repopt_ghostnet import (
    BottleneckSpec,
    GhostArch,
    repghostnet,
    repopt_ghostnet,
    repopt_ghostnet_hs,
)
from reparam.models.scales import model_scales
from reparam.models.vggnet import VGGNet
from reparam.testing import CheckResult, compare, fused_output_pairs, randomize_batchnorm_

__all__ = [
    "SMALL_GHOST_ARCH",
    "random_scales_",
    "verify_ghostnet_deploy",
    "verify_repvgg_deploy",
    "verify_repvgg_se_deploy",
]

# every bottleneck kind: identity shortcut; stride 2 with a 5x5 depthwise, SE and a projection;
# a run of two stride-1 bottlenecks across groups; a stride-1 projection (width change) with SE
SMALL_GHOST_ARCH = GhostArch(
    width=1.0,
    stages=(
        (BottleneckSpec(3, 8, 8, 0, 1),),
        (BottleneckSpec(5, 16, 12, 0.25, 2),),
        (BottleneckSpec(3, 16, 12, 0, 1), BottleneckSpec(3, 24, 16, 0.25, 1)),
    ),
    stem_channels=8,
    head_channels=32,
)


def _verify_small_repvgg(se: bool, tolerance: float) -> CheckResult:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = VGGNet(
        lambda s: RepVGGBlock(s.in_channels, s.out_channels, s.stride, s.groups, se=se),
        depths=(2, 3, 2, 1),
        widths=(16, 24, 32, 48),
        num_classes=7,
        groups_map={2: 2, 4: 4},
    ).double()
    randomize_batchnorm_(model, generator).eval()
    pairs = fused_output_pairs(model, reparameterize(model), ((1, 32), (3, 33), (2, 17)), generator)
    return compare(pairs, tolerance)


def verify_repvgg_deploy(tolerance: float = 1e-10) -> CheckResult:
    """Fused vs multi-branch RepVGG in float64: random BN statistics and affine parameters,
    grouped layers, odd and even input sizes, batch 1 and 3."""
    return _verify_small_repvgg(False, tolerance)


def verify_repvgg_se_deploy(tolerance: float = 1e-10) -> CheckResult:
    """:func:`verify_repvgg_deploy` with RepVGG-D2se's SE in every block: the fused
    ``ReLU(SE(conv3x3'(x)))`` vs ``ReLU(SE(sum of the branches))``."""
    return _verify_small_repvgg(True, tolerance)


@torch.no_grad()
def random_scales_(model: torch.nn.Module, generator: torch.Generator | None = None):
    """Give every scale of ``model`` random per-channel values ``+-U(0.3, 1.3)`` (mixed signs),
    in place; returns ``model``."""
    for tensor in model_scales(model).values():
        sign = torch.randint(0, 2, tensor.shape, generator=generator) * 2 - 1
        magnitude = 0.3 + torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
        tensor.copy_(sign * magnitude)
    return model


def verify_ghostnet_deploy(tolerance: float = 1e-10) -> CheckResult:
    """Fused vs training-form RepGhostNet, RepOpt-GhostNet and its Hyper-Search model in float64
    (:data:`SMALL_GHOST_ARCH`): random BN statistics and affine parameters, random signed scales,
    odd and even input sizes, batch 1 to 3."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    pairs = []
    for model in (
        repghostnet(SMALL_GHOST_ARCH, 7),
        repopt_ghostnet_hs(SMALL_GHOST_ARCH, 7),
        repopt_ghostnet(SMALL_GHOST_ARCH, 7, scales="hs_init"),
    ):
        model = random_scales_(randomize_batchnorm_(model.double(), generator), generator).eval()
        pairs += fused_output_pairs(
            model, reparameterize(model), ((1, 32), (3, 33), (2, 17)), generator
        )
    return compare(pairs, tolerance)
