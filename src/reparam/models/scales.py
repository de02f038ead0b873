"""RepOpt-VGG scales: scale files, official imports, reading scales out of a model and into it.

A scale file is the whole hand-over from ``reparam hypersearch`` to ``reparam train --scales``:
safetensors, one ``[C]`` float32 tensor per scale, keyed by the RepOpt-VGG buffer names
(``stem.scale_conv``, ``stages.0.1.scale_1x1``, ``stages.0.1.scale_identity``, ...), with
metadata ``format``, ``model`` (the target model, e.g. ``repopt_vgg_a0``), ``data``, ``epochs``,
``seed``, ``top1``. The official RepOptimizers ``.pth`` files (keys ``stage0.scale_conv.weight``,
``stageK.i.scale_{conv,1x1,identity}.weight``; RepOpt-GhostNet
``blocks.I.J.ghostK.{fusion_scale,cheap_operation.1}.weight``) are read with ``weights_only=True``
and renamed (GhostNet: to ``blocks.I.J.ghostK.cheap_operation.scale_{identity,conv}``).

Any module that owns scales takes part by defining ``scale_tensors() -> {local name: tensor}``
(RepOpt-VGG blocks: buffers; HS blocks: parameters). The Hyper-Search run that produces a
scale file is :func:`reparam.app.train.hypersearch.hyper_search`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reparam.errors import ScaleError
from reparam.files import first_line, load_weights, save_weights

log = logging.getLogger(__name__)

__all__ = [
    "ScaleError",
    "apply_scales",
    "build_target",
    "extract_scales",
    "model_scales",
    "read_scale_file",
    "read_scales",
    "save_scale_file",
    "set_scales",
    "target_model_name",
]


FORMAT = "reparam-scales/1"
METADATA_KEYS = ("model", "data", "epochs", "seed", "top1")
_OFFICIAL_STEM = re.compile(r"^stage0\.(scale_\w+)\.weight$")
_OFFICIAL_BLOCK = re.compile(r"^stage(\d+)\.(\d+)\.(scale_\w+)\.weight$")
_OFFICIAL_GHOST = re.compile(
    r"^(blocks\.\d+\.\d+\.ghost[12])\.(fusion_scale|cheap_operation\.1)\.weight$"
)
_GHOST_SCALE = {"fusion_scale": "scale_identity", "cheap_operation.1": "scale_conv"}


def target_model_name(name: str) -> str:
    """The RepOpt-VGG model a scale file is for: ``repopt_vgg_a0_hs`` -> ``repopt_vgg_a0``."""
    return name[: -len("_hs")] if name.endswith("_hs") else name


def model_scales(model: nn.Module) -> dict[str, Tensor]:
    """``{name: live tensor}`` of every scale in ``model`` (modules with ``scale_tensors()``)."""
    scales: dict[str, Tensor] = {}
    for module_name, module in model.named_modules():
        method = getattr(module, "scale_tensors", None)
        if callable(method):
            for local, tensor in method().items():
                scales[f"{module_name}.{local}" if module_name else local] = tensor
    return scales


def extract_scales(model: nn.Module) -> dict[str, Tensor]:
    """Detached float32 CPU copies of the model's scales (e.g. the searched ones of an HS model)."""
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in model_scales(model).items()}


def _from_official(scales: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename official RepOptimizers keys; other keys are kept (and reported if unknown)."""
    renamed = {}
    for key, value in scales.items():
        stem, block = _OFFICIAL_STEM.match(key), _OFFICIAL_BLOCK.match(key)
        ghost = _OFFICIAL_GHOST.match(key)
        if stem:
            key = f"stem.{stem.group(1)}"
        elif block and int(block.group(1)) >= 1:
            key = f"stages.{int(block.group(1)) - 1}.{block.group(2)}.{block.group(3)}"
        elif ghost:
            key = f"{ghost.group(1)}.cheap_operation.{_GHOST_SCALE[ghost.group(2)]}"
        renamed[key] = value
    return renamed


def save_scale_file(
    path: str | os.PathLike,
    scales: Mapping[str, Tensor],
    *,
    model: str,
    data: str = "",
    epochs: int | None = None,
    seed: int | None = None,
    top1: float | None = None,
) -> None:
    """Write a scale file (atomic) with metadata ``model`` (target name), ``data``, ``epochs``,
    ``seed``, ``top1`` (empty string when unknown)."""
    bad = sorted(k for k, v in scales.items() if not torch.isfinite(v).all())
    if bad:
        raise ScaleError(f"refusing to save non-finite scales: {bad[:5]}")
    metadata = {
        "format": FORMAT,
        "model": target_model_name(model),
        "data": data,
        "epochs": "" if epochs is None else str(epochs),
        "seed": "" if seed is None else str(seed),
        "top1": "" if top1 is None else repr(float(top1)),
    }
    save_weights({k: v.to(torch.float32) for k, v in scales.items()}, path, metadata=metadata)


def read_scale_file(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(scales, metadata)`` of one of our safetensors scale files."""
    from safetensors import safe_open

    scales = load_weights(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    if metadata.get("format") != FORMAT:
        raise ScaleError(
            f"{path}: not a reparam scale file (metadata format "
            f"{metadata.get('format')!r}, expected {FORMAT!r})"
        )
    return scales, metadata


def read_scales(
    source: str | os.PathLike | Mapping[str, Tensor], model: str | None = None
) -> dict[str, Tensor]:
    """Scales from our ``.safetensors`` file, an official ``.pth`` file or a dict, renamed to our
    keys. With ``model`` given, a scale file made for another model is refused."""
    if isinstance(source, Mapping):
        return _from_official(dict(source))
    path = Path(source)
    if not path.is_file():
        raise ScaleError(f"{path}: scale file not found")
    if path.suffix == ".safetensors":
        scales, metadata = read_scale_file(path)
        made_for = metadata.get("model", "")
        if model is not None and made_for and made_for != target_model_name(model):
            raise ScaleError(
                f"{path}: scales were searched for {made_for!r}, not {target_model_name(model)!r}"
            )
        return scales
    try:
        loaded: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise ScaleError(f"{path}: cannot load scales safely ({first_line(err)})") from None
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ScaleError(f"{path}: expected a dict of tensors, got {type(loaded).__name__}")
    return _from_official(loaded)


def apply_scales(model: nn.Module, scales: Mapping[str, Tensor], source: str = "scales") -> None:
    """Copy ``scales`` into the model's scale tensors; every key must match (no ``strict=False``):
    missing, unexpected, wrongly shaped and non-finite entries are all reported at once; scales
    that are all zero are refused."""
    live = model_scales(model)
    missing = sorted(set(live) - set(scales))
    unexpected = sorted(set(scales) - set(live))
    shapes = sorted(
        f"{k} {tuple(scales[k].shape)} != {tuple(live[k].shape)}"
        for k in set(live) & set(scales)
        if scales[k].shape != live[k].shape
    )
    bad = sorted(k for k in set(live) & set(scales) if not torch.isfinite(scales[k]).all())
    if scales and not any(bool(v.any()) for v in scales.values()):
        raise ScaleError(
            f"{source}: every scale is zero (a blank file); it would zero every branch's gradient "
            "mask. Use the scale file reparam hypersearch writes"
        )
    if missing or unexpected or shapes or bad:
        parts = [
            f"{label} ({len(keys)}): {keys[:6]}{' ...' if len(keys) > 6 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", shapes),
                ("NaN/inf", bad),
            )
            if keys
        ]
        hint = ""
        if any(k.startswith("module.") for k in unexpected):
            hint = " (keys start with 'module.': saved from a DDP wrapper; strip the prefix)"
        raise ScaleError(f"{source} do not fit {type(model).__name__}: " + "; ".join(parts) + hint)
    with torch.no_grad():
        for key, tensor in live.items():
            tensor.copy_(scales[key])


def set_scales(model: nn.Module, scales: Any, *, name: str, channel_average: bool = False) -> None:
    """Set a RepOpt target's constant scales from ``scales``: ``None`` or ``"hs_init"`` (keep the
    Hyper-Search init constants it was built with), ``"ones"``, a scale file or a dict (every key
    must match, :func:`apply_scales`); then ``channel_average`` replaces each per-channel vector
    by its mean. ``name`` is the model a scale file must have been searched for."""
    if isinstance(scales, str) and scales in ("hs_init", "ones"):
        if scales == "ones":
            with torch.no_grad():
                for tensor in model_scales(model).values():
                    tensor.fill_(1.0)
    elif isinstance(scales, (str, os.PathLike, Mapping)):
        source = "scales" if isinstance(scales, Mapping) else f"scales {os.fspath(scales)}"
        apply_scales(model, read_scales(scales, model=name), source=source)
    elif scales is not None:
        raise ValueError(
            f"{name}: scales must be None, 'hs_init', 'ones', a scale file or a dict "
            f"of tensors, got {type(scales).__name__}"
        )
    if channel_average:
        with torch.no_grad():
            for tensor in model_scales(model).values():
                tensor.fill_(tensor.mean().item())


def build_target(
    build: Callable[..., nn.Module],
    block_type: type[nn.Module],
    *,
    name: str,
    init: str,
    scales: Any = None,
    channel_average: bool = False,
    reinit: bool = True,
    identity_init: str = "one",
    **model_kwargs: Any,
) -> nn.Module:
    """A RepOpt target model: ``build(**model_kwargs)``, then its target kwargs (**contract**, see
    :mod:`reparam.models.repopt_vgg`): ``scales`` (:func:`set_scales`; ``None`` keeps the
    Hyper-Search init constants that ``init`` describes, with a logged notice),
    ``channel_average``, every ``block_type`` block's ``identity_init`` (``"one"`` or
    ``"scale"``) and, with ``reinit``, its CSLA initial weight from those scales. ``name`` is the
    model a scale file must have been searched for."""
    model = build(**model_kwargs)
    if scales is None:
        log.info(
            "%s: no scales given; using the Hyper-Search init constants (%s). Pass scales=FILE "
            "for searched scales.",
            name,
            init,
        )
    if identity_init not in ("one", "scale"):
        raise ValueError(f"identity_init must be 'one' or 'scale', got {identity_init!r}")
    set_scales(model, scales, name=name, channel_average=channel_average)
    for module in model.modules():
        if isinstance(module, block_type):
            module.identity_init = identity_init
            if reinit:
                module.reset_csla_init()
    return model
