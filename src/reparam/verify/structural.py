"""``reparam verify`` check for the structural (RepVGG) re-parameterization."""

from __future__ import annotations

import torch

from ..fuse import reparameterize
from ..models.layers import RepVGGBlock
from ..models.vggnet import VGGNet
from .core import CheckResult, compare, fused_output_pairs, randomize_batchnorm_

__all__ = ["verify_repvgg_deploy"]


def verify_repvgg_deploy(tolerance: float = 1e-10) -> CheckResult:
    """Fused vs multi-branch RepVGG in float64: random BN statistics and affine parameters,
    grouped layers, odd and even input sizes, batch 1 and 3."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = VGGNet(
        lambda s: RepVGGBlock(s.in_channels, s.out_channels, s.stride, s.groups),
        depths=(2, 3, 2, 1),
        widths=(16, 24, 32, 48),
        num_classes=7,
        groups_map={2: 2, 4: 4},
    ).double()
    randomize_batchnorm_(model, generator).eval()
    pairs = fused_output_pairs(model, reparameterize(model), ((1, 32), (3, 33), (2, 17)), generator)
    return compare(pairs, tolerance)
