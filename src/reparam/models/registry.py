"""Model registry: ``reparam.create_model(name)`` and timm registration.

Every entrypoint decorated with :func:`register_model` is available two ways:

- ``reparam.create_model("repvgg_a0", num_classes=10)`` under its plain name (**contract**);
- ``timm.create_model("reparam_repvgg_a0", num_classes=10)``: the ``reparam_`` prefix keeps our
  names apart from timm's own ``repvgg_*`` (a different implementation with other state-dict keys).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import timm.models
from torch import nn

__all__ = ["TIMM_PREFIX", "create_model", "list_models", "register_model"]

TIMM_PREFIX = "reparam_"
_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under ``fn.__name__`` here and under ``reparam_<name>`` with timm."""
    name = fn.__name__
    if name in _ENTRYPOINTS:
        raise ValueError(f"model {name!r} is registered twice")
    _ENTRYPOINTS[name] = fn

    @functools.wraps(fn)
    def timm_entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise ValueError(
                f"{TIMM_PREFIX}{name}: reparam ships no pretrained weights (no downloads)"
            )
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        kwargs.pop("cache_dir", None)
        return fn(**kwargs)

    timm_entrypoint.__name__ = TIMM_PREFIX + name
    timm_entrypoint.__qualname__ = TIMM_PREFIX + name
    timm.models.register_model(timm_entrypoint)
    return fn


def list_models() -> list[str]:
    """Plain names of every registered model, sorted."""
    return sorted(_ENTRYPOINTS)


def create_model(name: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """Build a registered model by its plain name (``repvgg_a0``, ``vgg_a0``, ...)."""
    if name.startswith(TIMM_PREFIX):
        name = name[len(TIMM_PREFIX) :]
    if name not in _ENTRYPOINTS:
        known = ", ".join(list_models())
        raise ValueError(f"unknown model {name!r}; registered models: {known}")
    return _ENTRYPOINTS[name](num_classes=num_classes, **kwargs)
