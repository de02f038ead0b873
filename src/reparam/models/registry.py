"""Model registry: ``reparam.create_model(name)`` and timm registration.

Every entrypoint decorated with :func:`register_model` is available two ways:

- ``reparam.create_model("repvgg_a0", num_classes=10)`` under its plain name (**contract**);
- ``timm.create_model("reparam_repvgg_a0", num_classes=10)``: the ``reparam_`` prefix keeps our
  names apart from timm's own ``repvgg_*`` (a different implementation with other state-dict keys).

Both build through timm's ``build_model_with_cfg``, so the model carries a ``pretrained_cfg``
(``default_cfg``: input size, mean/std, crop, interpolation, first conv, classifier; there are no
pretrained weights) and ``features_only=True`` (with ``out_indices``, default: every level of
``model.feature_info``) returns timm's ``FeatureGetterNet`` over ``forward_intermediates``, on
either path. timm's ``in_chans`` is our models' ``in_channels``. The timm entrypoints are
attributes of this module (``registry.reparam_repvgg_a0``; timm lists them in its ``__all__``).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import timm.models
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from reparam.errors import CheckpointError

__all__ = [
    "DEFAULT_PRETRAINED_CFG",
    "TIMM_PREFIX",
    "check_model_config",
    "create_model",
    "create_model_from_config",
    "list_models",
    "register_model",
]

TIMM_PREFIX = "reparam_"
#: the pretrained cfg of every model; ``register_model(**cfg)`` overrides entries
DEFAULT_PRETRAINED_CFG: dict[str, Any] = dict(
    num_classes=1000,
    input_size=(3, 224, 224),
    pool_size=(7, 7),
    crop_pct=0.875,
    interpolation="bilinear",
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
    first_conv="stem.conv.conv",
    classifier="fc",
)
_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(
    fn: Callable[..., nn.Module] | None = None, /, **cfg: Any
) -> Callable[..., nn.Module]:
    """Register ``fn`` under ``fn.__name__`` here and under ``reparam_<name>`` with timm;
    ``fn`` is returned unchanged. ``cfg``: the entries of the model's pretrained cfg that differ
    from :data:`DEFAULT_PRETRAINED_CFG` (``first_conv``, ``classifier``, ``input_size``, ...).
    Use as ``@register_model`` or, for a family, ``register = register_model(**cfg)`` then
    ``@register``."""
    if fn is None:
        return functools.partial(register_model, **cfg)
    name = fn.__name__
    if name in _ENTRYPOINTS:
        raise ValueError(f"model {name!r} is registered twice")
    pretrained_cfg = {**DEFAULT_PRETRAINED_CFG, **cfg}

    def build(in_chans: int = 3, **kwargs: Any) -> nn.Module:
        if in_chans != 3:  # timm's name for it; models that take other inputs say in_channels
            kwargs.setdefault("in_channels", in_chans)
        return fn(**kwargs)

    @functools.wraps(fn)
    def timm_entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise ValueError(
                f"{TIMM_PREFIX}{name}: reparam ships no pretrained weights (no downloads)"
            )
        kwargs.pop("cache_dir", None)
        return timm.models.build_model_with_cfg(
            build,
            TIMM_PREFIX + name,
            pretrained=False,
            pretrained_cfg=kwargs.pop("pretrained_cfg", None) or pretrained_cfg,
            pretrained_cfg_overlay=kwargs.pop("pretrained_cfg_overlay", None),
            feature_cfg=dict(feature_cls="getter", out_indices=None),
            **kwargs,
        )

    # timm adds the entrypoint to the ``__all__`` of its ``__module__``: this module, which owns
    # it, rather than the family's module, where the name would break ``import *``
    timm_entrypoint.__name__ = timm_entrypoint.__qualname__ = TIMM_PREFIX + name
    timm_entrypoint.__module__ = __name__
    globals()[TIMM_PREFIX + name] = timm_entrypoint
    timm.models.register_model(timm_entrypoint)
    _ENTRYPOINTS[name] = timm_entrypoint
    return fn


def create_model_from_config(config: Mapping[str, Any], source: str) -> nn.Module:
    """The model a run or fused folder's ``config.json`` describes (``model``, ``num_classes``,
    ``model_kwargs``), built to receive that folder's checkpoint: a scale file named in
    ``model_kwargs`` is not read (the checkpoint holds the scale buffers), so a run folder needs
    nothing outside itself. Any mistake in the config is a :class:`CheckpointError` naming
    ``source``."""
    check_model_config(config, source)
    kwargs = config.get("model_kwargs") or {}
    if "scales" in kwargs:  # the checkpoint brings the searched scales
        kwargs = {**kwargs, "scales": "hs_init"}
    try:
        return create_model(config["model"], num_classes=config["num_classes"], **kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{source}: cannot build {config['model']!r} with num_classes="
            f"{config['num_classes']!r} and model_kwargs {dict(kwargs)!r} ({err})"
        ) from None


def check_model_config(config: Any, source: str) -> None:
    """Raise :class:`CheckpointError` naming ``source`` and the field when ``config`` is not a
    mapping with ``model`` (a registered name), ``num_classes`` (an integer >= 1) and an optional
    ``model_kwargs`` mapping."""
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(config).__name__}")
    missing = [key for key in ("model", "num_classes") if key not in config]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r} (has {sorted(config)})")
    name, num_classes = config["model"], config["num_classes"]
    if not isinstance(name, str) or _plain_name(name) not in _ENTRYPOINTS:
        raise CheckpointError(
            f"{source}: field 'model' is {name!r}; expected a registered model (reparam models)"
        )
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise CheckpointError(
            f"{source}: field 'num_classes' is {num_classes!r}; expected an integer >= 1"
        )
    kwargs = config.get("model_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise CheckpointError(f"{source}: model_kwargs must be a mapping, got {kwargs!r}")


def _plain_name(name: str) -> str:
    return name[len(TIMM_PREFIX) :] if name.startswith(TIMM_PREFIX) else name


def list_models() -> list[str]:
    """Plain names of every registered model, sorted."""
    return sorted(_ENTRYPOINTS)


def create_model(name: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """Build a registered model by its plain name (``repvgg_a0``, ``vgg_a0``, ...), as
    ``timm.create_model("reparam_<name>", ...)`` does (``features_only=True`` included).
    ``num_classes``: an integer >= 0 (0: no classifier, timm's convention for a feature model)."""
    name = _plain_name(name)
    if (
        not isinstance(num_classes, numbers.Integral)
        or isinstance(num_classes, bool)
        or num_classes < 0
    ):
        raise ValueError(
            f"{name}: num_classes must be an integer >= 0 (0: no classifier), got {num_classes!r}"
        )
    if name not in _ENTRYPOINTS:
        known = ", ".join(list_models())
        raise ValueError(f"unknown model {name!r}; registered models: {known}")
    return _ENTRYPOINTS[name](num_classes=num_classes, **kwargs)
