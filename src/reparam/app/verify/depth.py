"""``reparam verify`` checks for depth re-parameterization: ReduceNet and VanillaNet fused at
``lambda = 1`` against their training form, in float64."""

from __future__ import annotations

import torch
from torch import nn

from reparam.fuse import prepare_for_deploy, reparameterize
from reparam.models.reducenet import reducenet18_imagenet, reducenet20
from reparam.models.vanillanet import vanillanet
from reparam.testing import CheckResult, compare, fused_output_pairs, randomize_batchnorm_

__all__ = ["verify_reducenet_deploy", "verify_vanillanet_deploy"]


def verify_reducenet_deploy(tolerance: float = 1e-10) -> CheckResult:
    """Fused vs training-form ReduceNet in float64 at ``lambda = 1``: random BN statistics and
    affine parameters; kept ReLU or all-linear; projection or no shortcut at stride 2;
    expansion 2 and 1.5; CIFAR (strides 1, 2) and ImageNet layouts; odd and even input sizes."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    variants = [
        (reducenet20, {"expansion": 2.0}),
        (reducenet20, {"expansion": 1.5, "keep_relu": False, "projection": False}),
        (reducenet18_imagenet, {"widths": (8, 16, 24, 32), "stem_width": 8}),
    ]
    pairs = []
    for build, kwargs in variants:
        model = build(num_classes=7, **kwargs).double()
        prepare_for_deploy(randomize_batchnorm_(model, generator))
        pairs += fused_output_pairs(
            model, reparameterize(model), ((2, 16), (1, 17), (3, 33)), generator
        )
    return compare(pairs, tolerance)


def verify_vanillanet_deploy(tolerance: float = 1e-10) -> CheckResult:
    """Fused vs training-form VanillaNet in float64 at ``lambda = 1``: random BN statistics and
    affine parameters, VanillaNet-5 and -7 (pool strides 1 and 2) at width 1/32, stem strides
    4 and 2, odd and even input sizes (ceil-mode pools on odd maps)."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    pairs = []
    for depth, stem_stride in ((5, 4), (7, 2)):
        model = vanillanet(depth, 7, 1 / 32, stem_stride=stem_stride).double()
        for module in model.modules():  # biases and weights away from the tiny official init
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, std=0.3, generator=generator)
                if module.bias is not None:
                    nn.init.normal_(module.bias, std=0.3, generator=generator)
        prepare_for_deploy(randomize_batchnorm_(model, generator))
        pairs += fused_output_pairs(
            model, reparameterize(model), ((2, 32), (1, 36), (3, 23)), generator
        )
    return compare(pairs, tolerance)
