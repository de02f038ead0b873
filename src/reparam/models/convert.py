"""Official checkpoints -> reparam state dicts: RepVGG, RepOpt-VGG, VanillaNet and timm's RepVGG.

Each source layout is one row of :data:`LAYOUTS`: the reparam models it converts to, a key
pattern that identifies it, whether it is the deploy (fused) form, and an ordered table of key
renames (``re.sub`` rules, each applied once, in order). A converted state dict holds exactly the
target model's keys with its shapes (an official 1x1 conv ``[n, c, 1, 1]`` becomes a Linear
``[n, c]``); any source key that maps to no model key, any model key left without a value and
any wrong shape is one :class:`CheckpointError` naming them all. Keys a source may lack are
taken from the prepared target model: BN ``num_batches_tracked`` (never used in eval), a
VanillaNet's annealing lambda (the official ``act_learn``: 1.0 unless given) and a RepOpt-VGG
target's scale buffers (a scale file, or the Hyper-Search init constants, which only matter for
further RepOptimizer training).

Layouts (official code: github.com/DingXiaoH/RepVGG ``repvgg.py``,
github.com/DingXiaoH/RepOptimizers ``repoptvgg_model.py``, github.com/huawei-noah/VanillaNet
``models/vanillanet.py``; timm ``byobnet.py``):

- ``repvgg`` / ``repvgg-deploy``: ``stage0``, ``stageK.i`` with ``rbr_dense`` / ``rbr_1x1`` /
  ``rbr_identity`` (deploy: ``rbr_reparam``), ``linear`` -> ``repvgg_*`` (deploy: the fused
  ``repvgg_*`` / ``vgg_*``);
- ``repopt-vgg`` / ``repopt-vgg-hs``: target ``stageK.i.conv`` / ``bn`` -> ``repopt_vgg_*``;
  Hyper-Search ``conv`` / ``conv_1x1`` / ``scale_*`` / ``bn`` -> ``repopt_vgg_*_hs`` (the scale
  keys are renamed by :func:`reparam.models.scales.read_scales`);
- ``vanillanet`` / ``vanillanet-deploy``: ``stem1`` / ``stem2`` / ``stages.i.conv1`` /
  ``conv2`` / ``act`` / ``cls1`` / ``cls2`` (deploy: ``stem`` / ``stages.i.conv`` / ``act`` /
  ``cls``) -> ``vanillanet_*`` (deploy: fused);
- ``timm-repvgg`` / ``timm-repvgg-deploy``: ``conv_kxk`` / ``conv_1x1`` / ``identity`` /
  ``head.fc`` (deploy: ``reparam_conv``) -> ``repvgg_*``.

RepVGG-D2se's SE blocks (official ``stageK.i.se.down`` / ``se.up``, timm ``attn.fc1`` /
``attn.fc2``) map to ``se.down`` / ``se.up`` in both forms of both layouts; a converted D2se
records the official evaluation preprocessing (320 px, resize 320, centre crop 320).

:func:`save_converted` writes the weights and a ``config.json`` beside them, so ``reparam
eval`` and ``reparam.load`` open the result: a training-form file as a run checkpoint, a deploy-
form file (which must be named ``fused.safetensors``) as a fused folder.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reparam.data import Preprocessing
from reparam.data.transforms import CIFAR_MEAN_STD
from reparam.errors import CheckpointError, DataError, UserError
from reparam.files import (
    first_line,
    load_weights,
)
from reparam.fuse import prepare_for_deploy, reparameterize
from reparam.models.annealed import has_annealing, set_lambda
from reparam.models.registry import create_model
from reparam.models.scales import read_scales

__all__ = [
    "LAYOUTS",
    "Converted",
    "Layout",
    "convert_checkpoint",
    "convert_state_dict",
    "detect_layout",
    "load_timm_repvgg_state",
    "read_checkpoint",
    "read_class_names",
    "target_model",
]

Rename = tuple[str, str | Callable[[re.Match[str]], str]]

#: the weights official training scripts save under these keys; EMA ones are used on request
WRAPPERS = ("state_dict", "model")
EMA_WRAPPERS = ("state_dict_ema", "model_ema", "ema")
IMAGENET = Preprocessing(224, crop_pct=0.875)  # resize 256, centre crop 224
CIFAR100 = Preprocessing(32, *CIFAR_MEAN_STD["cifar100"])
#: models the official code evaluates otherwise than their layout's default
MODEL_PREPROCESSING = {"repvgg_d2se": Preprocessing(320, crop_pct=1.0)}


@dataclass(frozen=True)
class Layout:
    """One source key layout: ``models`` (a regex that a whole reparam model name matches),
    ``signature`` (a regex that some key of such a checkpoint matches), ``classifier`` (the source
    key whose first dimension is the class count), the ordered ``renames`` and the
    ``fillable`` target keys (regex) the source may lack. ``fused``: converts to the deploy form.
    ``before``: a renamer applied to the whole state dict first; ``example``: one source key."""

    name: str
    models: str
    signature: str
    classifier: str
    renames: tuple[Rename, ...]
    example: str = ""  # a key of such a checkpoint (shown by ``reparam convert --help``)
    origin: str = ""  # where such checkpoints come from
    fused: bool = False
    fillable: str = r"\.num_batches_tracked$"
    before: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None
    preprocessing: Preprocessing = field(default=IMAGENET)

    def rename(self, key: str) -> str:
        """Our name for the source key ``key``."""
        for pattern, replacement in self.renames:
            key = re.sub(pattern, replacement, key, count=1)
        return key


def _official_stage(match: re.Match[str]) -> str:
    return f"stages.{int(match[1]) - 1}.{match[2]}."


# RepVGG and RepOpt-VGG: stage0 is our stem, stageK.i our stages.(K-1).i, linear our fc
_OFFICIAL_VGG: tuple[Rename, ...] = (
    (r"^stage0\.", "stem."),
    (r"^stage([1-9])\.(\d+)\.", _official_stage),
    (r"^linear\.", "fc."),
)

# timm's SEModule on RepVGG-D2se's blocks: fc1 / fc2 are our SEBlock's down / up
_TIMM_SE: tuple[Rename, ...] = ((r"\.attn\.fc1\.", ".se.down."), (r"\.attn\.fc2\.", ".se.up."))

LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "repvgg",
            origin="official RepVGG",
            example="stage1.0.rbr_dense.conv.weight",
            models=r"repvgg_\w+",
            signature=r"\.rbr_dense\.",
            classifier="linear.weight",
            renames=(
                *_OFFICIAL_VGG,
                (r"\.rbr_dense\.", ".conv3x3."),
                (r"\.rbr_1x1\.", ".conv1x1."),
                (r"\.rbr_identity\.", ".identity."),
            ),
        ),
        Layout(
            "repvgg-deploy",
            origin="official RepVGG, deploy form",
            example="stage1.0.rbr_reparam.weight",
            models=r"(rep)?vgg_\w+",
            signature=r"\.rbr_reparam\.",
            classifier="linear.weight",
            renames=(*_OFFICIAL_VGG, (r"\.rbr_reparam\.", ".conv.")),
            fused=True,
        ),
        Layout(
            "repopt-vgg",
            origin="official RepOpt-VGG target",
            example="stage0.conv.weight",
            models=r"repopt_vgg_\w+(?<!_hs)",
            signature=r"^stage0\.conv\.weight$",
            classifier="linear.weight",
            renames=(
                *_OFFICIAL_VGG,
                (r"\.conv\.weight$", ".conv.conv.weight"),
                (r"\.bn\.", ".conv.bn."),
            ),
            fillable=r"\.(num_batches_tracked|scale_conv|scale_1x1|scale_identity)$",
        ),
        Layout(
            "repopt-vgg-hs",
            origin="official RepOpt-VGG Hyper-Search",
            example="stage0.scale_conv.weight",
            models=r"repopt_vgg_\w+_hs",
            signature=r"^stage0\.scale_conv\.weight$",
            classifier="linear.weight",
            renames=(
                *_OFFICIAL_VGG,
                (r"\.conv\.weight$", ".conv3x3.weight"),
                (r"\.conv_1x1\.weight$", ".conv1x1.weight"),
            ),
            before=read_scales,
            preprocessing=CIFAR100,
        ),
        Layout(
            "vanillanet",
            origin="official VanillaNet",
            example="stem1.0.weight",
            models=r"vanillanet_\w+",
            signature=r"^stem1\.",
            classifier="cls2.0.weight",
            renames=(
                (r"^stem1\.0\.", "stem.conv1."),
                (r"^stem1\.1\.", "stem.bn1."),
                (r"^stem2\.0\.", "stem.conv2."),
                (r"^stem2\.1\.", "stem.bn2."),
                (r"^stem2\.2\.", "stem.act."),
                (r"\.conv1\.0\.", ".conv1."),
                (r"\.conv1\.1\.", ".bn1."),
                (r"\.conv2\.0\.", ".conv2."),
                (r"\.conv2\.1\.", ".bn2."),
                (r"\.act\.weight$", ".series.conv.weight"),
                (r"\.act\.bn\.", ".series.bn."),
                (r"^cls1\.2\.", "head.fc1."),
                (r"^cls1\.3\.", "head.bn."),
                (r"^cls2\.0\.", "head.fc2."),
            ),
            fillable=r"\.(num_batches_tracked|lam)$",
        ),
        Layout(
            "vanillanet-deploy",
            origin="official VanillaNet, deploy form",
            example="stem.0.weight",
            models=r"vanillanet_\w+",
            signature=r"^stem\.0\.",
            classifier="cls.2.weight",
            renames=(
                (r"^stem\.0\.", "stem.conv."),
                (r"^stem\.1\.", "stem.series.conv."),
                (r"\.act\.", ".series.conv."),
                (r"^cls\.2\.", "head.fc."),
            ),
            fused=True,
        ),
        Layout(
            "timm-repvgg",
            origin="timm repvgg_*",
            example="stages.0.0.conv_kxk.conv.weight",
            models=r"repvgg_\w+",
            signature=r"\.conv_kxk\.",
            classifier="head.fc.weight",
            renames=(
                (r"\.conv_kxk\.", ".conv3x3."),
                (r"\.conv_1x1\.", ".conv1x1."),
                *_TIMM_SE,
                (r"^head\.fc\.", "fc."),
            ),
        ),
        Layout(
            "timm-repvgg-deploy",
            origin="timm repvgg_*, deploy form",
            example="stages.0.0.reparam_conv.weight",
            models=r"(rep)?vgg_\w+",
            signature=r"\.reparam_conv\.",
            classifier="head.fc.weight",
            renames=((r"\.reparam_conv\.", ".conv."), *_TIMM_SE, (r"^head\.fc\.", "fc.")),
            fused=True,
        ),
    )
}


def _listed(label: str, items: list[str]) -> str:
    return f"{label} ({len(items)}): {items[:6]}{' ...' if len(items) > 6 else ''}"


def _unwrap(loaded: Any, ema: bool, source: str) -> dict[str, Tensor]:
    if isinstance(loaded, Mapping):
        wrappers = EMA_WRAPPERS if ema else WRAPPERS + EMA_WRAPPERS
        found = next((loaded[k] for k in wrappers if isinstance(loaded.get(k), Mapping)), None)
        if found is None and ema:
            raise CheckpointError(f"{source}: no EMA weights (looked for {list(EMA_WRAPPERS)})")
        loaded = loaded if found is None else found
    if isinstance(loaded, Mapping):
        bad = next(((k, v) for k, v in loaded.items() if not isinstance(v, Tensor)), None)
        found = f"its key {bad[0]!r} holds {type(bad[1]).__name__}, not a tensor" if bad else None
    else:
        found = f"got a {type(loaded).__name__}"
    if found:
        raise CheckpointError(
            f"{source}: expected a state dict of tensors, or one under "
            f"{list(WRAPPERS + EMA_WRAPPERS)}; {found}"
        )
    state = {str(k): v for k, v in loaded.items()}
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_checkpoint(path: str | os.PathLike, ema: bool = False) -> dict[str, Tensor]:
    """The state dict in a ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors`` file,
    unwrapped from ``state_dict`` / ``model`` (or, with ``ema`` or when they are the only weights,
    ``state_dict_ema`` / ``model_ema`` / ``ema``), without a DDP ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        return _unwrap(load_weights(path), ema, str(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = next((s for s in str(err).splitlines() if "Unsupported global" in s), "")
        raise CheckpointError(
            f"{path}: holds pickled Python objects that safe loading refuses "
            f"({refused.strip() or first_line(err)}); in the official code, save its weights "
            "alone (torch.save(checkpoint['model'], 'weights.pth')) and convert that"
        ) from None
    except Exception as err:  # torch raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(err)})") from None
    return _unwrap(loaded, ema, str(path))


def detect_layout(
    state: Mapping[str, Tensor], model_name: str, source: str = "checkpoint"
) -> Layout:
    """The one layout for ``model_name`` whose signature some key of ``state`` matches."""
    candidates = [lay for lay in LAYOUTS.values() if re.fullmatch(lay.models, model_name)]
    if not candidates:
        families = sorted({lay.models for lay in LAYOUTS.values()})
        raise UserError(f"no converter for {model_name!r}; models converted: {families}")
    found = [lay for lay in candidates if any(re.search(lay.signature, k) for k in state)]
    if len(found) != 1:
        names = [lay.name for lay in (found or candidates)]
        what = "several layouts" if found else "none of the layouts"
        raise CheckpointError(
            f"{source}: its keys ({list(state)[:3]} ...) fit {what} {names} for {model_name!r}; "
            "pass the layout (--layout)"
        )
    return found[0]


def _fit(value: Tensor, shape: torch.Size) -> Tensor | None:
    """``value`` in ``shape``, allowing trailing 1x1 dimensions to drop (1x1 conv -> Linear)."""
    if value.shape == shape:
        return value
    rest = value.shape[len(shape) :]
    if value.shape[: len(shape)] == shape and all(d == 1 for d in rest):
        return value.reshape(shape)
    return None


def convert_state_dict(
    state: Mapping[str, Tensor],
    model: nn.Module,
    layout: Layout | str,
    source: str = "checkpoint",
) -> dict[str, Tensor]:
    """``state`` (in ``layout``) as a state dict of ``model`` (strict: exactly its keys and
    shapes; keys the layout may lack come from ``model``); else one :class:`CheckpointError`
    listing the unmapped, missing and wrongly shaped keys."""
    layout = LAYOUTS[layout] if isinstance(layout, str) else layout
    state = dict(state)
    if layout.before is not None:
        state = layout.before(state)
    target = model.state_dict()
    converted, unmapped, shapes = {}, [], []
    for key, value in state.items():
        ours = layout.rename(key)
        if ours not in target:
            unmapped.append(key)
            continue
        fitted = _fit(value, target[ours].shape)
        if fitted is None:
            shapes.append(f"{key} {tuple(value.shape)} != {ours} {tuple(target[ours].shape)}")
        else:
            converted[ours] = fitted
    missing = sorted(
        k
        for k in set(target) - set(converted) - set(map(layout.rename, state))
        if not re.search(layout.fillable, k)
    )
    if unmapped or missing or shapes:
        parts = [
            _listed(label, keys)
            for label, keys in (
                ("unmapped", unmapped),
                ("missing", missing),
                ("wrong shape", shapes),
            )
            if keys
        ]
        raise CheckpointError(
            f"{source} ({layout.name} layout) does not fit {type(model).__name__}: "
            + "; ".join(parts)
        )
    return {k: converted[k] if k in converted else v for k, v in target.items()}


@dataclass(frozen=True)
class Converted:
    """A converted checkpoint and what rebuilds its model (:func:`save_converted` writes it)."""

    state_dict: dict[str, Tensor]
    model: str
    num_classes: int
    layout: Layout
    model_kwargs: dict[str, Any]
    source: str
    class_names: list[str] | None = None

    def config(self) -> dict[str, Any]:
        """The ``config.json`` that lets ``reparam.load`` rebuild the model (class names
        ``"0"`` .. when none were given)."""
        preprocessing = MODEL_PREPROCESSING.get(self.model, self.layout.preprocessing)
        config = {
            "model": self.model,
            "num_classes": self.num_classes,
            "model_kwargs": self.model_kwargs,
            "image_size": preprocessing.image_size,
            "preprocessing": preprocessing.to_dict(),
            "fused": self.layout.fused,
            "converted_from": {"source": self.source, "layout": self.layout.name},
        }
        if self.class_names is not None:
            config["class_names"] = list(self.class_names)
        return config


def target_model(
    model_name: str,
    layout: Layout,
    num_classes: int,
    act_learn: float | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """The model a ``layout`` checkpoint loads into: ``model_name`` in its training form with
    annealing lambda ``act_learn`` (default 1.0), or its deploy form when ``layout.fused``."""
    try:
        model = create_model(model_name, num_classes=num_classes, **model_kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"cannot build {model_name} with {model_kwargs} ({err})") from None
    if act_learn is not None and (layout.fused or not has_annealing(model)):
        raise UserError(f"act_learn applies to a training-form VanillaNet, not {layout.name}")
    if act_learn is not None and not 0.0 <= act_learn <= 1.0:
        raise UserError(f"act_learn must be in [0, 1], got {act_learn}")
    if layout.fused:
        return reparameterize(prepare_for_deploy(model))
    set_lambda(model, 1.0 if act_learn is None else act_learn)
    return model.eval()


def convert_checkpoint(
    path: str | os.PathLike,
    model_name: str,
    layout: str | None = None,
    *,
    ema: bool = False,
    act_learn: float | None = None,
    scales: str | os.PathLike | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
) -> Converted:
    """An official checkpoint file as ``model_name``'s state dict (layout detected unless
    given). ``act_learn``: a VanillaNet's lambda (default 1.0, the end of training);
    ``scales``: a RepOpt-VGG target's scale file; ``model_kwargs`` go to ``create_model``;
    ``class_names``: one per class of the checkpoint (e.g. :func:`read_class_names`)."""
    state = read_checkpoint(path, ema)
    if layout is None:
        chosen = detect_layout(state, model_name, str(path))
    elif layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose from {sorted(LAYOUTS)}")
    else:
        chosen = LAYOUTS[layout]
        if not re.fullmatch(chosen.models, model_name):
            raise UserError(
                f"layout {layout!r} converts to models {chosen.models!r}, not {model_name!r}"
            )
    kwargs = dict(model_kwargs or {})
    if scales is not None:
        kwargs["scales"] = os.fspath(scales)
    classifier = state.get(chosen.classifier)  # absent: the conversion reports it missing
    num_classes = 1000 if classifier is None else int(classifier.shape[0])
    if class_names is not None and len(class_names) != num_classes:
        raise UserError(
            f"{len(class_names)} class names given (--class-names), but {path} has "
            f"{num_classes} classes"
        )
    model = target_model(model_name, chosen, num_classes, act_learn, **kwargs)
    converted = convert_state_dict(state, model, chosen, str(path))
    names = None if class_names is None else list(class_names)
    return Converted(converted, model_name, num_classes, chosen, kwargs, os.fspath(path), names)


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line in class-index order (e.g. ImageNet's 1000);
    a final newline is allowed, an empty line is refused (:class:`DataError`)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read class names ({err})") from None
    names = [line.strip() for line in lines]
    empty = [i + 1 for i, name in enumerate(names) if not name]
    if not names or empty:
        where = f"line {empty[0]} is empty" if empty else "it is empty"
        raise DataError(f"{path}: expected one class name per line; {where}")
    return names


def load_timm_repvgg_state(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load a timm ``repvgg_*`` state dict (training form) into the matching reparam
    ``repvgg_*``, strictly."""
    model.load_state_dict(convert_state_dict(state_dict, model, "timm-repvgg", "timm state"))
    return model
