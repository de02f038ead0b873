"""Hyper-Search (HS): train a RepOpt-VGG model's HS model, write its searched scales to a file.

The HS model (``<model>_hs``: ``BN(s conv3x3 + t conv1x1 + s_id x) -> ReLU`` with trainable
per-channel scales) is trained by :func:`reparam.app.train.fit` like any model; its final scales are
the hand-over to the target model (:mod:`reparam.models.scales`). :func:`ablation_overrides` gives
the paper's ablation as training overrides.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reparam.app.folders import exclusive_lock
from reparam.app.train.engine import check_new_run_folder, fit
from reparam.app.train.recipe import resolve_config, resume_config
from reparam.errors import CheckpointError, RunInterrupted
from reparam.files import check_writable
from reparam.models import list_models
from reparam.models.scales import (
    ScaleError,
    extract_scales,
    read_scale_file,
    save_scale_file,
    target_model_name,
)
from reparam.saved import load_model

__all__ = [
    "ablation_overrides",
    "data_name",
    "default_run_dir",
    "default_scale_file",
    "hyper_search",
]


def default_run_dir(model: str, data: str) -> Path:
    """``runs/hs-<target model>-<data name>`` (:func:`data_name`), where a search keeps its run
    folder."""
    return Path("runs") / f"hs-{target_model_name(model)}-{data_name(data)}"


def default_scale_file(model: str, data: str) -> Path:
    """``scales/<target model>-<data name>.safetensors`` (:func:`data_name`)."""
    return Path("scales") / f"{target_model_name(model)}-{data_name(data)}.safetensors"


def data_name(data: str) -> str:
    """A file-name-safe name that tells data specs apart: ``digits``, ``synthetic-64``, or for a
    spec with a path its kind, the folder's name and a short hash of its absolute path
    (``folder-pets-1a2b3c4d``), so two folders of the same name never share a default output."""
    kind, _, arg = data.partition(":")
    if not arg:
        return kind
    if kind == "synthetic":
        return f"{kind}-{arg}"
    path = Path(arg).expanduser().resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name) or "root"
    return f"{kind}-{name}-{digest}"


def hyper_search(
    model: str,
    data: str | None,
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
    with ``reparam.app.train.fit`` in ``run_dir`` (default :func:`default_run_dir`), then write its
    final scales to the scale file ``out``.

    ``out`` is checked before training: an existing file is replaced only with ``force`` and
    only when it is a scale file, and its folder must be writable. ``resume`` continues an
    interrupted search from ``run_dir`` (the training settings come from the run's own
    ``config.json``; a search of another model, or on other ``data`` when given, is refused).
    ``data=None``: the run's when resuming, else ``"digits"``. Returns a summary:
    ``scales``, ``model``, ``hs_model``, ``top1``, ``epochs``, ``seconds``, ``seed``, ``data``,
    ``run_dir``.
    """
    target = target_model_name(model)
    hs_model = f"{target}_hs"
    if hs_model not in list_models() or target not in list_models():
        known = sorted(m[: -len("_hs")] for m in list_models() if m.endswith("_hs"))
        raise ScaleError(f"no Hyper-Search model for {model!r}; searchable models: {known}")
    out = Path(out)
    folder = Path(run_dir) if run_dir is not None else default_run_dir(target, data or "digits")
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
    if not resume:
        check_new_run_folder(folder, force, flag="--run-dir")
    elif not (folder / "config.json").is_file():
        raise ScaleError(
            f"{folder}: no Hyper-Search run to resume there; pass the search's --run-dir (its "
            "default depends on --model and --data), or start it without --resume"
        )
    with exclusive_lock(out):
        if resume:
            config = resume_config(folder)
            _check_same_search(folder, config.model, config.data, hs_model, data)
        else:
            values: dict[str, Any] = {"model": hs_model, "data": data or "digits", "seed": seed}
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
            command = ["reparam", "hypersearch", "--model", target, "--data", config.data]
            command = shlex.join([*command, "--run-dir", str(folder), "--out", str(out)])
            if metrics["resumable"]:
                hint = f"continue it with: {command} --resume"
            else:
                hint = "nothing to resume: run the same command again"
            raise RunInterrupted(
                f"hyper-search {metrics['stopped']}; no scale file written; {hint}",
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


def _check_same_search(
    folder: Path, model: str, data: str, hs_model: str, asked: str | None
) -> None:
    """Refuse to resume the search in ``folder`` (of ``model`` on ``data``) as another one."""
    if model != hs_model:
        raise ScaleError(
            f"{folder}: is a search of {target_model_name(model)!r}, not "
            f"{target_model_name(hs_model)!r}; resume it with --model "
            f"{target_model_name(model)}, or give another --run-dir"
        )
    if asked is not None and not _same_data(data, asked):
        raise ScaleError(
            f"{folder}: searched on --data {data}, not {asked}; resume it with --data {data}, or "
            "give another --run-dir"
        )


def _same_data(recorded: str, asked: str) -> bool:
    """Whether two data specs name the same data (paths compared resolved)."""
    (kind, _, where), (kind2, _, where2) = recorded.partition(":"), asked.partition(":")
    if kind != kind2 or bool(where) != bool(where2):
        return False
    if kind == "synthetic" or not where:
        return where == where2
    return Path(where).expanduser().resolve() == Path(where2).expanduser().resolve()


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
