"""Hyper-Search (HS): train a RepOpt-VGG model's HS model, write its searched scales to a file.

The HS model (``<model>_hs``: ``BN(s conv3x3 + t conv1x1 + s_id x) -> ReLU`` with trainable
per-channel scales) is trained by :func:`reparam.train.fit` like any model; its final scales are
the hand-over to the target model (:mod:`reparam.models.scales`). :func:`ablation_overrides` gives
the paper's ablation as training overrides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checkpoint import check_writable, exclusive_lock
from ..errors import CheckpointError, RunInterrupted
from ..models import list_models
from ..models.scales import (
    ScaleError,
    extract_scales,
    read_scale_file,
    save_scale_file,
    target_model_name,
)
from .checkpointing import load_model
from .engine import fit
from .recipe import resolve_config, resume_config

__all__ = ["ablation_overrides", "default_run_dir", "hyper_search"]


def default_run_dir(model: str, data: str) -> Path:
    """``runs/hs-<target model>-<data kind>``, where a search keeps its run folder."""
    return Path("runs") / f"hs-{target_model_name(model)}-{data.split(':')[0]}"


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
    recipe: str = "repopt-hs",
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the HS model of ``model`` (``repopt_vgg_a0`` or ``repopt_vgg_a0_hs``) on ``data``
    with ``reparam.train.fit`` in ``run_dir`` (default :func:`default_run_dir`), then write its
    final scales to the scale file ``out``.

    ``out`` is checked before training: an existing file is replaced only with ``force`` and
    only when it is a scale file, and its folder must be writable. ``resume`` continues an
    interrupted search from ``run_dir`` (the training settings come from the run's own
    ``config.json``). Returns a summary:
    ``scales``, ``model``, ``hs_model``, ``top1``, ``epochs``, ``seconds``, ``seed``, ``data``,
    ``run_dir``.
    """
    target = target_model_name(model)
    hs_model = f"{target}_hs"
    if hs_model not in list_models() or target not in list_models():
        known = sorted(m[: -len("_hs")] for m in list_models() if m.endswith("_hs"))
        raise ScaleError(f"no Hyper-Search model for {model!r}; searchable models: {known}")
    out = Path(out)
    folder = Path(run_dir) if run_dir is not None else default_run_dir(target, data)
    if out.exists() and not force:
        raise ScaleError(f"{out}: already exists; pass --force to replace it")
    if out.is_file():
        try:
            read_scale_file(out)
        except CheckpointError:  # ScaleError too
            raise ScaleError(
                f"{out}: not a reparam scale file; --force replaces only a scale file: choose "
                "another --out"
            ) from None
    check_writable(out)
    with exclusive_lock(out):
        if resume:
            config = resume_config(folder)
        else:
            values: dict[str, Any] = {"model": hs_model, "data": data, "seed": seed}
            for key, value in (
                ("epochs", epochs),
                ("batch_size", batch_size),
                ("image_size", image_size),
                ("lr", lr),
            ):
                if value is not None:
                    values[key] = value
            values.update(overrides or {})
            config = resolve_config(recipe, {**values, "out": str(folder), "force": force})
        metrics = fit(config, progress=progress)
        if metrics.get("interrupted"):
            raise RunInterrupted(
                f"hyper-search interrupted; no scale file written. Continue it with: reparam "
                f"hypersearch --model {target} --data {config.data} --run-dir {folder} --out {out} "
                "--resume",
                metrics.get("signal"),
            )
        trained, _ = load_model(folder, weights="last")
        save_scale_file(
            out,
            extract_scales(trained),
            model=target,
            data=config.data,
            epochs=metrics["epochs"],
            seed=config.seed,
            top1=metrics["top1"],
        )
    return {
        "scales": str(out),
        "model": target,
        "hs_model": hs_model,
        "data": config.data,
        "top1": metrics["top1"],
        "epochs": metrics["epochs"],
        "seconds": metrics["seconds"],
        "seed": config.seed,
        "run_dir": str(folder),
    }


def ablation_overrides(scales: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The RepOpt-VGG ablation of the RepOptimizer paper (B1 ImageNet top-1 in brackets) as
    ``TrainConfig`` overrides for a ``repopt_vgg_*`` model, given a searched scale file. ``plain`` is the same
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
