"""Parameter and MAC counts of a model at a given input size (convs and linear layers)."""

from __future__ import annotations

import torch
from torch import nn

from reparam.kernels import conv_macs

__all__ = ["count_macs", "count_params"]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int, in_channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass on one ``image_size`` image (Conv2d + Linear)."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += conv_macs(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            tuple(output.shape[-2:]),
            module.groups,
        )

    def linear_hook(module: nn.Linear, _inputs, _output) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total
