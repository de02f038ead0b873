"""Training recipes: one typed :class:`TrainConfig`, named presets, files and overrides.

Resolution order (later wins): ``TrainConfig`` defaults (= the ``basic`` preset) -> the named
preset or recipe file (``.yaml``/``.yml``/``.json``, a flat mapping of field names, which may
name a preset it extends under ``recipe`` and say where its numbers come from under ``source``)
-> explicit overrides (``--lr 0.2``, ``--set key=value``). The fully resolved config (including
the absolute ``lr`` and ``num_classes`` from the data) is what the run folder's ``config.json``
holds.

The presets are such files too, ``presets/<name>.yaml`` beside this module, each with its
``source``. :class:`TrainConfig` is a pydantic model: it types and checks every value (command-
line text included) and raises :class:`RecipeError` naming the field, e.g. ``config field
'betas.1' is 1.5; expected a value < 1``; :meth:`TrainConfig.model_json_schema` describes it.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import logging
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from timm.data import rand_augment_transform

from reparam.app.train.execution import execution_defaults, execution_warnings
from reparam.data import Preprocessing, data_defaults
from reparam.errors import DataError, RecipeError, ReparamError
from reparam.files import first_line, read_json

log = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "RUN_INFO_KEYS",
    "RecipeError",
    "TrainConfig",
    "load_recipe",
    "parse_overrides",
    "parse_value",
    "recipes",
    "resolve_config",
    "resume_config",
]

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
Fraction = Annotated[float, Field(ge=0, lt=1)]  # [0, 1)


class TrainConfig(BaseModel):
    """Everything that decides a training run. Defaults are the ``basic`` recipe (small data, CPU).

    ``lr`` is absolute; when ``None`` it resolves to ``lr_per_256 * batch_size / 256`` (linear
    scaling rule). ``batch_size`` is the global batch (all processes, all accumulation steps).
    Fields left ``None`` that the data spec or the execution policy decide are resolved on
    construction, so ``config.json`` records what the run used. A value that does not fit raises
    :class:`RecipeError` naming the field (and the element of a tuple).
    """

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        protected_namespaces=(),
        use_attribute_docstrings=True,
    )

    # what to train
    model: str = "repvgg_a0"
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    data: str = "digits"
    num_classes: Annotated[int, Field(ge=1)] | None = None
    """from the data set when None"""
    image_size: int = Field(32, ge=8)
    recipe: str = "basic"
    # schedule
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: Annotated[float, Field(gt=0)] | None = None
    """absolute; None: lr_per_256 * batch_size / 256"""
    lr_per_256: float = Field(0.1, gt=0)
    min_lr: float = Field(0.0, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    """capped at the run length"""
    warmup_lr_init: float = Field(0.0, ge=0)
    # optimizer
    optimizer: Literal["sgd", "adamw", "lamb"] = "sgd"
    """lamb: timm's Lamb (no grad mults)"""
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    wd_exempt: Literal["bn", "1d", "1d_but_identity", "none"] = "1d"
    """params without decay"""
    grad_mult: bool = True
    """use RepOpt gradient multipliers when the model has them"""
    grad_clip: Annotated[float, Field(gt=0)] | None = None
    """max global grad norm"""
    force_grad_clip: bool = False
    """clip even with RepOpt grad mults (breaks their equivalence)"""
    accum_steps: int = Field(1, ge=1)
    """must divide batch_size"""
    # objective and regularisation
    loss: Literal["ce", "bce"] = "ce"
    """softmax cross-entropy, or timm's BinaryCrossEntropy"""
    label_smoothing: Fraction = 0.1
    """with mixup / cutmix: applied to their mixed targets"""
    mixup: float = Field(0.0, ge=0)
    """timm Mixup: Beta(alpha, alpha) of mixup (0: off)"""
    cutmix: float = Field(0.0, ge=0)
    """... and of CutMix (0: off); both on: one of them per batch, 50/50"""
    drop_rate: Fraction | None = None
    """dropout before the classifier (model default when None)"""
    drop_path_rate: Fraction | None = None
    """stochastic depth (residual models only)"""
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    ema_warmup: bool = False
    """EMA decay warm-up, by ema_warmup_rule"""
    ema_warmup_rule: Literal["timm", "resnet-rs"] = "timm"
    """"timm": ModelEmaV3's decay = 1 - (1 + step) ** -2/3; "resnet-rs": the official TF code's
    decay = min(ema_decay, (1 + step) / (10 + step))"""
    # augmentation and normalisation: None takes the data spec's standard (data_defaults)
    randaugment: str | None = None
    """timm string, e.g. "rand-m15-n2-mmax15\""""
    hflip: bool | None = None
    crop_padding: Annotated[int, Field(ge=0)] | None = None
    train_crop: Literal["pad", "random_resized"] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    crop_pct: Annotated[float, Field(gt=0, le=1)] | None = None
    """eval: None = resize to the size; else resize + centre crop"""
    random_erasing: float = Field(0.0, ge=0, le=1)
    """probability of timm RandomErasing (per-pixel noise, 1 box)"""
    # depth re-param (annealed activations)
    anneal_kind: Literal["linear", "cosine"] = "linear"
    anneal_fraction: float = Field(1.0, gt=0, le=1)
    anneal_per: Literal["iteration", "epoch"] = "iteration"
    # execution
    amp: bool | None = None
    """bf16 autocast (cpu and cuda); None = execution_defaults(...)"""
    channels_last: bool | None = None
    """NHWC memory format; None = as an explicit amp, else execution_defaults(...)"""
    compile: bool = False
    sync_bn: bool = False
    """SyncBatchNorm under DDP (cuda only)"""
    device: str = "auto"
    """auto (cuda when available, else cpu), cpu, cuda or cuda:N"""
    seed: int = Field(0, ge=0, lt=2**32)
    workers: int = Field(0, ge=0)
    threads: Annotated[int, Field(ge=1)] | None = None
    """torch CPU threads per process (torch's default when None)"""
    out: str = "runs/train"
    resume: bool = False
    force: bool = False
    """start afresh in a run folder ``out`` (its run files are replaced)"""
    log_every: int = 10
    """TensorBoard scalars every N steps"""
    stop_after_steps: int | None = None
    """stop (resumably) after N optimizer steps of this session"""

    # fields that may differ between a run and its resumption
    RESUME_FREE: typing.ClassVar[frozenset[str]] = frozenset(
        {
            "resume",
            "force",
            "workers",
            "threads",
            "out",
            "log_every",
            "stop_after_steps",
            "compile",
            "device",
        }
    )

    def __init__(self, **values: Any) -> None:
        """Validate ``values`` (also what ``model_validate`` gets); a value that does not fit
        raises :class:`RecipeError`, one line naming the field, not pydantic's report."""
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise _recipe_error(err) from None

    @field_validator("*", mode="before")
    @classmethod
    def _from_text(cls, value: Any, info: ValidationInfo) -> Any:
        """Command-line text (``--set KEY=VALUE``): ``none``/``null`` for an optional field,
        ``a,b,c`` for a tuple, YAML for a mapping."""
        if not isinstance(value, str):
            return value
        hint = cls.model_fields[info.field_name].annotation
        kinds = {typing.get_origin(a) or a for a in (hint, *typing.get_args(hint))}
        if type(None) in kinds and value.lower() in ("none", "null"):
            return None
        if tuple in kinds:
            return value.split(",")
        if dict in kinds:
            return parse_value(value)
        return value

    @field_validator("device")
    @classmethod
    def _device_present(cls, device: str) -> str:
        """A device name torch knows, and for CUDA one this machine has."""
        if DEVICE.fullmatch(device) is None:
            raise ValueError("auto, cpu, cuda or cuda:N")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.startswith("cuda") and int(device.partition(":")[2] or 0) >= count:
            raise RecipeError(
                f"config field 'device' is {device!r}, but this machine has {count} CUDA "
                "device(s); use --set device=cpu (or auto)"
            )
        return device

    @field_validator("randaugment")
    @classmethod
    def _randaugment_parses(cls, config: str | None) -> str | None:
        """A string timm parses as RandAugment (checked now, not when the data loads)."""
        if config:
            try:
                rand_augment_transform(config, {})  # parsing only: the image hparams do not matter
            except Exception as err:  # timm asserts, or fails to parse a number, when malformed
                raise ValueError(
                    f"a timm RandAugment string such as 'rand-m9-n2-mstd0.5' ({first_line(err)})"
                ) from None
        return config

    @model_validator(mode="after")
    def _resolve(self) -> TrainConfig:
        """Fill what is left ``None`` from the data spec and the execution policy, then check
        what spans fields: ``accum_steps`` divides ``batch_size``, the preprocessing works."""
        defaults = data_defaults(self.data)
        for name in ("hflip", "crop_padding", "train_crop", "mean", "std"):
            if getattr(self, name) is None:
                setattr(self, name, defaults[name])
        if self.crop_pct is None and self.train_crop == "random_resized":
            self.crop_pct = defaults["crop_pct"] or 0.875
        if self.channels_last is None and self.amp is not None:
            self.channels_last = self.amp  # an explicit precision picks its measured layout
        for name, value in execution_defaults(self.device, self.image_size).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.batch_size % self.accum_steps:
            raise RecipeError(
                f"config field 'accum_steps' is {self.accum_steps}; expected a value that "
                f"divides batch_size ({self.batch_size})"
            )
        try:
            self.preprocessing  # noqa: B018 (Preprocessing checks itself)
        except DataError as err:  # "preprocessing <field>: <what was expected>"
            name, _, expected = str(err).removeprefix("preprocessing ").partition(": ")
            raise RecipeError(f"config field {name!r}: {expected}") from None
        return self

    def execution_warnings(self) -> list[str]:
        """What is known to go wrong on this config's execution path (logged once by ``fit``)."""
        return execution_warnings(self.device, self.image_size, self.amp, self.channels_last)

    @property
    def preprocessing(self) -> Preprocessing:
        """How the trained model's inputs are prepared (recorded with the run)."""
        return Preprocessing(self.image_size, self.mean, self.std, self.crop_pct)

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else self.lr_per_256 * self.batch_size / 256

    def changes_from(self, saved: dict[str, Any]) -> str:
        """``"lr: 0.1 -> 0.2, ..."`` for fields (other than :attr:`RESUME_FREE`) that differ from a
        saved config; empty when this config may resume that run."""
        current = self.to_dict()
        changed = sorted(
            k for k in current if k not in self.RESUME_FREE and saved.get(k) != current[k]
        )
        return ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)

    def to_dict(self) -> dict[str, Any]:
        """The fields as ``config.json`` records them (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_dump().items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> TrainConfig:
        """Build from a mapping; unknown keys and values that do not fit raise
        :class:`RecipeError` naming the field, after ``"{source}: "`` when given."""
        try:
            return cls(**{str(k): v for k, v in data.items()})
        except RecipeError as err:
            if source is None:
                raise
            raise RecipeError(f"{source}: {err}") from None


# pydantic error type -> what the field expects
_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "finite": "a finite number",
    "bool": "true or false",
    "string": "a string",
    "dict": "a mapping such as {depth: 50}",
}
_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def _recipe_error(err: ValidationError) -> ReparamError:
    """One line for the first problem pydantic found: ``config field '<path>' is <value>;
    expected <what>`` (the path names a tuple's element), all unknown keys, or the
    :class:`ReparamError` a validator raised."""
    errors = err.errors()
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        known = sorted(TrainConfig.model_fields)
        return RecipeError(f"unknown config keys {unknown}; known keys: {known}")
    error = errors[0]
    kind, ctx, loc, value = error["type"], error.get("ctx", {}), error["loc"], error["input"]
    if isinstance(ctx.get("error"), ReparamError):
        return ctx["error"]
    if kind == "missing" or kind.startswith(("too_", "tuple")):  # a tuple of the wrong length
        loc = loc[:1]
        expected = f"{_tuple_length(loc[0])} comma-separated numbers"
    elif kind == "value_error":
        expected = str(ctx["error"])
    elif kind == "literal_error":
        expected = f"one of {ctx['expected']}"
    elif kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        expected = f"a value {_BOUNDS[kind]} {int(bound) if bound == int(bound) else bound}"
    else:
        expected = _EXPECTED.get(kind.partition("_")[0], error["msg"])
    path = ".".join(map(str, loc))
    return RecipeError(f"config field {path!r} is {value!r}; expected {expected}")


def _tuple_length(name: str) -> int:
    hint = TrainConfig.model_fields[name].annotation
    return next(
        len(typing.get_args(a))
        for a in (hint, *typing.get_args(hint))
        if typing.get_origin(a) is tuple
    )


def parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# ---------------------------------------------------------------------------------------------
# presets: recipe files shipped with the package, one per name

PRESETS = importlib.resources.files(__package__) / "presets"


def _presets() -> dict[str, dict[str, Any]]:
    """Preset name -> its file's mapping, in natural name order (``resnet-rs50`` before 101)."""
    return _read_presets(PRESETS)


@functools.cache
def _read_presets(folder: Any) -> dict[str, dict[str, Any]]:
    files = {f.name.removesuffix(".yaml"): f for f in folder.iterdir() if f.name.endswith(".yaml")}
    presets = {}
    for name in sorted(
        files, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]
    ):
        presets[name] = _read_mapping(files[name])
        if not isinstance(presets[name].get("source"), str):
            raise RecipeError(
                f"{files[name]}: a preset needs a 'source' (where its numbers come from)"
            )
    return presets


def _read_mapping(path: Any) -> dict[str, Any]:
    """The mapping a YAML or JSON recipe file holds; :class:`RecipeError` otherwise."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.name.lower().endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise RecipeError(f"{path}: not a valid recipe file ({err})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    return data


def _extend(
    data: dict[str, Any], where: str, base: str | None, chain: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The fields of a recipe mapping on top of those of the preset it extends (its ``recipe``,
    else ``base``); ``source`` is documentation, not a field. ``chain``: the presets being
    extended, so that a preset extending itself is one error, not endless recursion."""
    base = data.get("recipe", base)
    fields = {k: v for k, v in data.items() if k not in ("recipe", "source")}
    if base is None:
        return fields
    if base not in _presets():
        raise RecipeError(
            f"{where}: 'recipe' must name a preset ({', '.join(_presets())}), got {base!r}"
        )
    if base in chain:
        raise RecipeError(f"{where}: 'recipe' extends itself ({' -> '.join((*chain, base))})")
    return {**_preset(base, chain), **fields}


def _preset(name: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields preset ``name`` sets on top of the :class:`TrainConfig` defaults."""
    return copy.deepcopy(_extend(_presets()[name], f"preset {name!r}", None, (*chain, name)))


def recipes() -> dict[str, dict[str, Any]]:
    """Named presets: name -> ``{"source": where its numbers come from, "fields": what it sets on
    top of the :class:`TrainConfig` defaults and the data spec's}``."""
    return {
        name: {"source": v["source"], "fields": _preset(name)} for name, v in _presets().items()
    }


def load_recipe(name_or_file: str) -> dict[str, Any]:
    """The field values of a preset name or a YAML/JSON recipe file (which may set ``recipe`` to
    a preset it extends). Raises :class:`RecipeError` for unknown names and unreadable files."""
    presets = _presets()
    if name_or_file in presets:
        return {**_preset(name_or_file), "recipe": name_or_file}
    path = Path(name_or_file)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise RecipeError(
            f"unknown recipe {name_or_file!r}: expected a preset ({', '.join(presets)}) "
            "or a .yaml/.yml/.json file"
        )
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    return {**_extend(_read_mapping(path), str(path), "basic"), "recipe": str(path)}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=0.2", "ema=true", "model_kwargs={width: 2}"]`` -> ``{"lr": "0.2", ...}`` (typed
    later by :class:`TrainConfig`)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_")] = value
    return out


def resolve_config(recipe: str = "basic", overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- recipe (preset or file) <- overrides, validated; a value that does not fit
    raises :class:`RecipeError` ``recipe '<recipe>': config field '<path>' ...``."""
    values = load_recipe(recipe)
    overrides = dict(overrides or {})
    if (
        "model" in overrides
        and overrides["model"] != values.get("model")
        and "model_kwargs" not in overrides
    ):
        values.pop("model_kwargs", None)  # a preset's model_kwargs belong to the preset's model
    values.update(overrides)
    config = TrainConfig.from_dict(values, source=f"recipe {recipe!r}")
    preset = _preset(recipe) if recipe in _presets() else {}
    if preset.get("model") == "resnet_rs" and config.image_size != preset["image_size"]:
        log.warning(
            "%s: its RandAugment (%s) and dropout (%s) follow the ResNet-RS table for %d px, not "
            "the %d px asked for; set --randaugment / --drop-rate to the table's values for "
            "that resolution (https://arxiv.org/abs/2103.07579, appendix)",
            recipe,
            config.randaugment,
            config.drop_rate,
            preset["image_size"],
            config.image_size,
        )
    return config


# what a run folder's config.json records beside the TrainConfig fields
RUN_INFO_KEYS = frozenset({"class_names", "data_info", "preprocessing", "scales_file"})


def resume_config(out: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config that continues the run in ``out``: its saved ``config.json`` with
    ``resume=True``, the session step budget cleared, and ``overrides`` (fields that may change
    on resume, see :attr:`TrainConfig.RESUME_FREE`; others are refused when training starts)."""
    saved = Path(out) / "config.json"
    if not saved.is_file():
        raise RecipeError(f"{saved}: not found; nothing to resume")
    recorded = {k: v for k, v in read_json(saved).items() if k not in RUN_INFO_KEYS}
    values = {**recorded, "stop_after_steps": None, **(overrides or {}), "resume": True}
    return TrainConfig.from_dict(values, source=str(saved))
