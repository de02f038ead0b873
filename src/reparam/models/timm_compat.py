"""Load timm's ``repvgg_*`` state dicts into reparam's RepVGG (same math, other key names).

timm: ``stem.conv_kxk`` / ``conv_1x1`` / ``identity``, ``head.fc``;
reparam: ``stem.conv3x3`` / ``conv1x1`` / ``identity``, ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["load_timm_repvgg_state", "timm_repvgg_state_to_reparam"]

_RENAMES = ((".conv_kxk.", ".conv3x3."), (".conv_1x1.", ".conv1x1."), ("head.fc.", "fc."))


def timm_repvgg_state_to_reparam(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of a timm RepVGG (training form) state dict to reparam's."""
    renamed = {}
    for key, value in state_dict.items():
        for old, new in _RENAMES:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def load_timm_repvgg_state(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Load a timm ``repvgg_*`` state dict into the matching reparam ``repvgg_*`` (strict)."""
    model.load_state_dict(timm_repvgg_state_to_reparam(state_dict), strict=True)
    return model
