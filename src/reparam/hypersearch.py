"""Hyper-Search (HS) scales: extraction, scale files, official imports, identity-variance analysis.

A scale file is the whole hand-over from ``reparam hypersearch`` to ``reparam train --scales``:
safetensors, one ``[C]`` float32 tensor per scale, keyed by the RepOpt-VGG buffer names
(``stem.scale_conv``, ``stages.0.1.scale_1x1``, ``stages.0.1.scale_identity``, ...), with
metadata ``format``, ``model`` (the target model, e.g. ``repopt_vgg_a0``), ``data``, ``epochs``,
``seed``, ``top1``. The official RepOptimizers ``.pth`` files (keys ``stage0.scale_conv.weight``,
``stageK.i.scale_{conv,1x1,identity}.weight``) are read with ``weights_only=True`` and renamed.

Any module that owns scales takes part by defining ``scale_tensors() -> {local name: tensor}``
(RepOpt-VGG blocks: buffers; HS blocks: parameters).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import CheckpointError, load_weights, save_weights

__all__ = [
    "ScaleError",
    "ablation_overrides",
    "apply_scales",
    "extract_scales",
    "hyper_search",
    "identity_variance_ratios",
    "model_scales",
    "plot_identity_variance",
    "read_scale_file",
    "read_scales",
    "save_scale_file",
    "target_model_name",
]

log = logging.getLogger(__name__)

FORMAT = "reparam-scales/1"
METADATA_KEYS = ("model", "data", "epochs", "seed", "top1")
_OFFICIAL_STEM = re.compile(r"^stage0\.(scale_\w+)\.weight$")
_OFFICIAL_BLOCK = re.compile(r"^stage(\d+)\.(\d+)\.(scale_\w+)\.weight$")


class ScaleError(CheckpointError):
    """Scales that do not fit the model: wrong keys, shapes, model, or non-finite values."""


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
        if stem:
            key = f"stem.{stem.group(1)}"
        elif block and int(block.group(1)) >= 1:
            key = f"stages.{int(block.group(1)) - 1}.{block.group(2)}.{block.group(3)}"
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
        raise ScaleError(f"{path}: cannot load scales safely ({err})") from None
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ScaleError(f"{path}: expected a dict of tensors, got {type(loaded).__name__}")
    return _from_official(loaded)


def apply_scales(model: nn.Module, scales: Mapping[str, Tensor], source: str = "scales") -> None:
    """Copy ``scales`` into the model's scale tensors; every key must match (no ``strict=False``):
    missing, unexpected, wrongly shaped and non-finite entries are all reported at once."""
    live = model_scales(model)
    missing = sorted(set(live) - set(scales))
    unexpected = sorted(set(scales) - set(live))
    shapes = sorted(
        f"{k} {tuple(scales[k].shape)} != {tuple(live[k].shape)}"
        for k in set(live) & set(scales)
        if scales[k].shape != live[k].shape
    )
    bad = sorted(k for k in set(live) & set(scales) if not torch.isfinite(scales[k]).all())
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


# The official HS recipe (CIFAR-100, 240 epochs): lr 0.1, wd 4e-5, warmup, label smoothing 0.1,
# grad clip 5.0 (clipping is fine: HS is ordinary training of the HS model).
HS_RECIPE: dict[str, Any] = {"weight_decay": 4e-5, "label_smoothing": 0.1, "grad_clip": 5.0}


def hyper_search(
    model: str,
    data: str,
    out: str | os.PathLike,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    lr: float | None = None,
    run_dir: str | os.PathLike | None = None,
    recipe: str = "basic",
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the HS model of ``model`` (``repopt_vgg_a0`` or ``repopt_vgg_a0_hs``) on ``data``
    with ``reparam.train.fit``, then write its final scales to the scale file ``out``.

    ``run_dir`` keeps the HS run folder (default: a temporary one, deleted: the scale file is
    the whole hand-over). Returns a summary: ``scales``, ``model``, ``hs_model``, ``top1``,
    ``epochs``, ``seconds``, ``seed``, ``data``, ``run_dir`` (or ``None``).
    """
    import tempfile

    from .checkpoint import load_model
    from .models import list_models
    from .train import fit, resolve_config

    target = target_model_name(model)
    hs_model = f"{target}_hs"
    if hs_model not in list_models() or target not in list_models():
        known = sorted(m[: -len("_hs")] for m in list_models() if m.endswith("_hs"))
        raise ScaleError(f"no Hyper-Search model for {model!r}; searchable models: {known}")
    values: dict[str, Any] = {**HS_RECIPE, "model": hs_model, "data": data, "seed": seed}
    for key, value in (
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("image_size", image_size),
        ("lr", lr),
    ):
        if value is not None:
            values[key] = value
    values.update(overrides or {})
    with tempfile.TemporaryDirectory(prefix="reparam-hs-") as tmp:
        folder = Path(run_dir) if run_dir is not None else Path(tmp) / "run"
        config = resolve_config(recipe, {**values, "out": str(folder)})
        metrics = fit(config, progress=progress)
        if metrics.get("interrupted"):
            raise ScaleError("hyper-search interrupted; no scale file written")
        trained, _ = load_model(folder, weights="last")
    scales = extract_scales(trained)
    save_scale_file(
        out,
        scales,
        model=target,
        data=data,
        epochs=metrics["epochs"],
        seed=seed,
        top1=metrics["top1"],
    )
    return {
        "scales": str(out),
        "model": target,
        "hs_model": hs_model,
        "data": data,
        "top1": metrics["top1"],
        "epochs": metrics["epochs"],
        "seconds": metrics["seconds"],
        "seed": seed,
        "run_dir": None if run_dir is None else str(run_dir),
    }


def ablation_overrides(scales: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The RepOpt-VGG ablation (BRIEF section 3; B1 ImageNet top-1 in brackets) as ``TrainConfig``
    overrides for a ``repopt_vgg_*`` model, given a searched scale file. ``plain`` is the same
    network trained as an ordinary VGG (default init, torch SGD)."""
    f = os.fspath(scales)
    return {
        "hs_scales": {"model_kwargs": {"scales": f}},  # HS + new init + grad mult (78.48)
        "no_reinit": {"model_kwargs": {"scales": f, "reinit": False}},  # (77.42)
        "no_grad_mult": {"model_kwargs": {"scales": f}, "grad_mult": False},  # (77.07)
        "plain": {
            "model_kwargs": {"scales": "hs_init", "reinit": False},
            "grad_mult": False,
        },  # (76.91)
        "all_ones": {"model_kwargs": {"scales": "ones"}},  # (77.59)
        "hs_init_constants": {"model_kwargs": {"scales": "hs_init"}},  # (77.71)
        "channel_averaged": {"model_kwargs": {"scales": f, "channel_average": True}},  # (77.40)
    }


@torch.no_grad()
def identity_variance_ratios(model: nn.Module, images: Tensor) -> dict[str, float]:
    """Per block with an identity branch: ``Var(identity path) / Var(block output)``.

    RepOpt paper fig. 4. Blocks take part through ``identity_variance_parts(x) -> (identity,
    output)`` (HS block: ``s_id x`` over the pre-BN sum; RepOpt-VGG block: ``x`` over the pre-BN
    conv output, i.e. the share of an unscaled identity); RepVGG blocks: ``BN_id(x)`` over the
    pre-ReLU sum. Runs in eval mode (running statistics); the model's mode is restored.
    """
    from .models.layers import RepVGGBlock

    def parts(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor] | None:
        if isinstance(module, RepVGGBlock):
            if module.identity is None:
                return None
            identity = module.identity(x)
            return identity, module.conv3x3(x) + module.conv1x1(x) + identity
        method = getattr(module, "identity_variance_parts", None)
        return method(x) if callable(method) else None

    ratios: dict[str, float] = {}
    hooks = []
    for name, module in model.named_modules():

        def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
            result = parts(mod, args[0])
            if result is not None:
                ratios[name] = (result[0].var() / result[1].var()).item()

        if isinstance(module, RepVGGBlock) or hasattr(module, "identity_variance_parts"):
            hooks.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()(images)
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    return ratios


def plot_identity_variance(
    results: Mapping[str, Mapping[str, float]], path: str | os.PathLike
) -> Path:
    """PNG: identity variance ratio per block (x: block order), one line per model label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for label, ratios in results.items():
        ax.plot(range(1, len(ratios) + 1), list(ratios.values()), marker="o", ms=3, label=label)
    ax.set_xlabel("block with identity (network order)")
    ax.set_ylabel("Var(identity) / Var(block output)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
