"""Converted checkpoints written as files: refuse to overwrite what is not ours, write atomically."""

from __future__ import annotations

import os
from pathlib import Path

from reparam.app.folders import RUN_SIGNS, find_data, read_marker
from reparam.errors import CheckpointError, UserError
from reparam.files import (
    atomic_path,
    check_writable,
    json_text,
    read_json,
    save_weights,
)
from reparam.models.convert import Converted
from reparam.saved import FUSED_WEIGHTS


def check_convert_target(out: str | os.PathLike, force: bool = False) -> None:
    """Refuse, before converting, an ``out`` that would overwrite or join something: a name that
    is not ``.safetensors``; a folder that is a run, a fused or deploy folder, another reparam
    output or data (convert writes ``config.json`` beside ``out``); an existing ``out`` or
    ``config.json`` unless ``force``."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: the converted weights are written as .safetensors")
    check_writable(out)
    folder = out.parent
    if folder.is_dir():
        found = _not_ours(folder)
        if found:
            raise CheckpointError(
                f"{folder}: {found}; convert writes its weights and a config.json there, so "
                "nothing was written: choose an --out in another folder"
            )
    taken = [p for p in (out, folder / "config.json") if p.exists()]
    if taken and not force:
        raise UserError(f"{taken[0]} exists; pass --force to replace it")


def _not_ours(folder: Path) -> str | None:
    """What makes ``folder`` no place for converted weights (None when it is fine)."""
    marker = read_marker(folder)
    if marker is not None:
        return f"is a reparam {marker['kind']} folder"
    if any((folder / name).is_file() for name in RUN_SIGNS):
        return "is a training run folder"
    if (folder / "config.json").exists():
        try:
            config = read_json(folder / "config.json")
        except CheckpointError:
            config = None
        if not isinstance(config, dict) or "converted_from" not in config:
            what = "a fused model" if isinstance(config, dict) and config.get("fused") else "a run"
            return f"holds the config.json of {what}, not of converted weights"
    if (folder / FUSED_WEIGHTS).is_file() and not (folder / "config.json").exists():
        return f"holds a fused model ({FUSED_WEIGHTS})"
    return find_data(folder)


def save_converted(converted: Converted, out: str | os.PathLike, force: bool = False) -> Path:
    """Write ``out`` (safetensors) and ``config.json`` beside it, both or neither; a deploy-form
    checkpoint must be written as ``fused.safetensors`` (a fused folder). ``out`` is checked by
    :func:`check_convert_target`. Returns the config path."""
    out = Path(out)
    check_convert_target(out, force)
    if converted.layout.fused and out.name != FUSED_WEIGHTS:
        raise UserError(
            f"{converted.source} is a deploy-form ({converted.layout.name}) checkpoint: write it "
            f"as a fused folder, --out {out.parent / FUSED_WEIGHTS}"
        )
    config_path = out.parent / "config.json"
    with atomic_path(config_path) as config_tmp:  # renamed in after the weights
        config_tmp.write_text(json_text(converted.config(), indent=2, sort_keys=True) + "\n")
        save_weights(converted.state_dict, out, metadata={"model": converted.model})
    return config_path
