"""Training recipes: one typed :class:`TrainConfig`, named presets, files and overrides.

Resolution order (later wins): ``TrainConfig`` defaults (= the ``basic`` preset) -> the named
preset or recipe file (``.yaml``/``.yml``/``.json``, a flat mapping of field names, which may
name a base preset under ``recipe``) -> explicit overrides (``--lr 0.2``, ``--set key=value``).
The fully resolved config (including the absolute ``lr`` and ``num_classes`` from the data) is
what the run folder's ``config.json`` holds.

ResNet-RS numbers: Bello et al. 2021, "Revisiting ResNets" (https://arxiv.org/abs/2103.07579),
section 4 + appendix, and the reference configs in tensorflow/tpu
``models/official/resnet/resnet_rs/configs``; per-size dropout / stochastic depth as in
``keras.applications.resnet_rs``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from timm.data import rand_augment_transform

from reparam.compat import cpu_has_native_bf16
from reparam.data import Preprocessing, data_defaults
from reparam.errors import DataError, RecipeError
from reparam.files import first_line, read_json
from reparam.models.resnet_rs import RESNET_RS_IMAGE_SIZES

log = logging.getLogger(__name__)

__all__ = [
    "RUN_INFO_KEYS",
    "RecipeError",
    "TrainConfig",
    "execution_defaults",
    "load_recipe",
    "parse_overrides",
    "parse_value",
    "recipes",
    "resolve_config",
    "resume_config",
]


@dataclass
class TrainConfig:
    """Everything that decides a training run. Defaults are the ``basic`` recipe (small data, CPU).

    ``lr`` is absolute; when ``None`` it resolves to ``lr_per_256 * batch_size / 256`` (linear
    scaling rule). ``batch_size`` is the global batch (all processes, all accumulation steps).
    """

    # what to train
    model: str = "repvgg_a0"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    num_classes: int | None = None  # from the data set when None
    image_size: int = 32
    recipe: str = "basic"
    # schedule
    epochs: int = 8
    batch_size: int = 64
    lr: float | None = None
    lr_per_256: float = 0.1
    min_lr: float = 0.0
    warmup_epochs: float = 1.0
    warmup_lr_init: float = 0.0
    # optimizer
    optimizer: Literal["sgd", "adamw", "lamb"] = "sgd"  # lamb: timm's Lamb (no grad mults)
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-4
    wd_exempt: Literal["bn", "1d", "1d_but_identity", "none"] = "1d"  # params without decay
    grad_mult: bool = True  # use RepOpt gradient multipliers when the model has them
    grad_clip: float | None = None  # max global grad norm
    force_grad_clip: bool = False  # clip even with RepOpt grad mults (breaks their equivalence)
    accum_steps: int = 1
    # objective and regularisation
    loss: Literal["ce", "bce"] = "ce"  # softmax cross-entropy, or timm's BinaryCrossEntropy
    label_smoothing: float = 0.1  # with mixup / cutmix: applied to their mixed targets
    mixup: float = 0.0  # timm Mixup: Beta(alpha, alpha) of mixup (0: off) ...
    cutmix: float = 0.0  # ... and of CutMix (0: off); both on: one of them per batch, 50/50
    drop_rate: float | None = None  # dropout before the classifier (model default when None)
    drop_path_rate: float | None = None  # stochastic depth (residual models only)
    ema: bool = False
    ema_decay: float = 0.999
    ema_warmup: bool = False  # EMA decay warm-up, by ema_warmup_rule:
    # "timm": ModelEmaV3's decay = 1 - (1 + step) ** -2/3; "resnet-rs": the official TF code's
    # decay = min(ema_decay, (1 + step) / (10 + step))
    ema_warmup_rule: Literal["timm", "resnet-rs"] = "timm"
    # augmentation and normalisation: None takes the data spec's standard (data_defaults)
    randaugment: str | None = None  # timm string, e.g. "rand-m15-n2-mmax15"
    hflip: bool | None = None
    crop_padding: int | None = None
    train_crop: Literal["pad", "random_resized"] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    crop_pct: float | None = None  # eval: None = resize to the size; else resize + centre crop
    random_erasing: float = 0.0  # probability of timm RandomErasing (per-pixel noise, 1 box)
    # depth re-param (annealed activations)
    anneal_kind: Literal["linear", "cosine"] = "linear"
    anneal_fraction: float = 1.0
    anneal_per: Literal["iteration", "epoch"] = "iteration"
    # execution
    # bf16 autocast (cpu and cuda) and NHWC memory format; None = execution_defaults(...)
    amp: bool | None = None
    channels_last: bool | None = None
    compile: bool = False
    sync_bn: bool = False  # SyncBatchNorm under DDP (cuda only)
    device: str = "auto"  # "auto" = cuda when available, else cpu
    seed: int = 0
    workers: int = 0
    threads: int | None = None  # torch CPU threads per process (torch's default when None)
    out: str = "runs/train"
    resume: bool = False
    force: bool = False  # start afresh in a run folder ``out`` (its run files are replaced)
    log_every: int = 10  # TensorBoard scalars every N steps
    stop_after_steps: int | None = None  # stop (resumably) after N optimizer steps of this session

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

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON/YAML give lists
        defaults = data_defaults(self.data)
        for name in ("hflip", "crop_padding", "train_crop", "mean", "std"):
            if getattr(self, name) is None:
                setattr(self, name, defaults[name])
        if self.crop_pct is None and self.train_crop == "random_resized":
            self.crop_pct = defaults["crop_pct"] or 0.875
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.channels_last is None and self.amp is not None:
            self.channels_last = self.amp  # an explicit precision picks its measured layout
        for name, value in execution_defaults(self.device, self.image_size).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.validate()

    def execution_warnings(self) -> list[str]:
        """What is known to go wrong on this config's execution path (logged once by ``fit``)."""
        if "cuda" in self.device:
            return []
        warnings = []
        if self.amp and self.image_size < BF16_MIN_IMAGE_SIZE:
            warnings.append(
                f"amp at {self.image_size} px: below {BF16_MIN_IMAGE_SIZE} px, oneDNN's bf16 "
                "weight gradients of stride-2 convolutions on 1x1 inputs hold garbage and runs "
                "can diverge (see reparam.app.train.execution_defaults); --no-amp trains in FP32"
            )
        if self.channels_last and not self.amp and self.image_size >= FP32_NHWC_CRASH_SIZE:
            warnings.append(
                f"FP32 channels-last at {self.image_size} px: oneDNN's FP32 NHWC weight gradient "
                "of a 1x1 stride-2 convolution on 3 input channels corrupts the heap and kills "
                f"RepVGG runs from {FP32_NHWC_CRASH_SIZE} px (uxlfoundation/oneDNN#6035); "
                "--no-channels-last trains in FP32 NCHW"
            )
        return warnings

    @property
    def preprocessing(self) -> Preprocessing:
        """How the trained model's inputs are prepared (recorded with the run)."""
        return Preprocessing(self.image_size, self.mean, self.std, self.crop_pct)

    def validate(self) -> None:
        """Raise :class:`RecipeError` naming the first field with an impossible value."""
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "image_size": self.image_size >= 8,
            "accum_steps": self.accum_steps >= 1 and self.batch_size % self.accum_steps == 0,
            "lr": self.lr is None or self.lr > 0,
            "lr_per_256": self.lr_per_256 > 0,
            "warmup_epochs": self.warmup_epochs >= 0,  # capped at the run length
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "weight_decay": self.weight_decay >= 0,
            "ema_decay": 0 < self.ema_decay < 1,
            "optimizer": self.optimizer in ("sgd", "adamw", "lamb"),
            "loss": self.loss in ("ce", "bce"),
            "mixup": self.mixup >= 0,
            "cutmix": self.cutmix >= 0,
            "random_erasing": 0 <= self.random_erasing <= 1,
            "wd_exempt": self.wd_exempt in ("bn", "1d", "1d_but_identity", "none"),
            "anneal_kind": self.anneal_kind in ("linear", "cosine"),
            "anneal_per": self.anneal_per in ("iteration", "epoch"),
            "anneal_fraction": 0 < self.anneal_fraction <= 1,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "crop_padding": self.crop_padding >= 0,
            "crop_pct": self.crop_pct is None or 0 < self.crop_pct <= 1,
            "workers": self.workers >= 0,
            "threads": self.threads is None or self.threads >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                extra = " (must divide batch_size)" if name == "accum_steps" else ""
                raise RecipeError(
                    f"config field {name!r} has an invalid value {getattr(self, name)!r}{extra}"
                )
        self._validate_ranges()

    def _validate_ranges(self) -> None:
        """Numbers finite and in range, the device known and present, RandAugment parseable:
        :class:`RecipeError` naming the field, what was expected and an example."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise RecipeError(f"config field {f.name!r} is {value!r}; expected a finite number")
        ranges = {
            "min_lr": (self.min_lr >= 0, "a number >= 0"),
            "warmup_lr_init": (self.warmup_lr_init >= 0, "a number >= 0"),
            "momentum": (0 <= self.momentum < 1, "a number in [0, 1), e.g. 0.9"),
            "betas": (all(0 <= b < 1 for b in self.betas), "2 numbers in [0, 1), e.g. 0.9,0.999"),
            "eps": (self.eps > 0, "a number > 0, e.g. 1e-8"),
            "drop_rate": (self.drop_rate is None or 0 <= self.drop_rate < 1, "a number in [0, 1)"),
            "drop_path_rate": (
                self.drop_path_rate is None or 0 <= self.drop_path_rate < 1,
                "a number in [0, 1)",
            ),
            "seed": (0 <= self.seed < 2**32, f"an integer in [0, {2**32 - 1}]"),
            "num_classes": (self.num_classes is None or self.num_classes >= 1, "an integer >= 1"),
            "device": (DEVICE.fullmatch(self.device) is not None, "auto, cpu, cuda or cuda:N"),
        }
        for name, (ok, expected) in ranges.items():
            if not ok:
                raise RecipeError(
                    f"config field {name!r} is {getattr(self, name)!r}; expected {expected}"
                )
        try:
            Preprocessing(self.image_size, self.mean, self.std, self.crop_pct)
        except DataError as err:  # "preprocessing <field>: <what was expected>"
            name, _, expected = str(err).removeprefix("preprocessing ").partition(": ")
            raise RecipeError(f"config field {name!r}: {expected}") from None
        _check_device_present(self.device)
        if self.randaugment:
            _check_randaugment(self.randaugment)

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
        data = dataclasses.asdict(self)
        for name in ("betas", "mean", "std"):
            data[name] = list(getattr(self, name))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys and wrongly typed values raise :class:`RecipeError`."""
        fields = _field_types()
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise RecipeError(f"unknown config keys {unknown}; known keys: {sorted(fields)}")
        return cls(**{k: _coerce(k, v, fields[k]) for k, v in data.items()})


DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _check_device_present(device: str) -> None:
    """:class:`RecipeError` when ``device`` names a CUDA device this machine does not have."""
    if not device.startswith("cuda"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise RecipeError(
            f"config field 'device' is {device!r}, but this machine has {count} CUDA device(s); "
            "use --set device=cpu (or auto)"
        )


def _check_randaugment(config: str) -> None:
    """:class:`RecipeError` unless timm parses ``config`` as a RandAugment string."""
    try:
        rand_augment_transform(config, {})  # parsing only: the image hparams do not matter
    except Exception as err:  # timm asserts, or fails to parse a number, on a malformed string
        raise RecipeError(
            f"config field 'randaugment' is {config!r}; expected a timm RandAugment string such "
            f"as 'rand-m9-n2-mstd0.5' ({first_line(err)})"
        ) from None


# below this input size a /32 network's last stride-2 convolution sees a 1x1 input, where
# oneDNN's bf16 weight gradient of a strided k > 1 convolution returns garbage (see below)
BF16_MIN_IMAGE_SIZE = 32
# from this input size FP32 channels-last training of RepVGG crashes in oneDNN (see the warning)
FP32_NHWC_CRASH_SIZE = 128


def execution_defaults(device: str, image_size: int) -> dict[str, bool]:
    """``amp`` and ``channels_last`` for a recipe that leaves both unset (an explicit ``amp``
    sets ``channels_last`` with it, so FP32 never defaults to channels-last): both on for a CPU with
    native bf16 (AVX512-BF16 or AMX) and images of at least :data:`BF16_MIN_IMAGE_SIZE` pixels,
    off elsewhere (FP32, NCHW).

    On such a CPU, bf16 autocast with channels-last tensors is the fastest training path measured
    for RepOpt-VGG-A0, RepVGG-A0 and VGG-A0 (``benchmarks/cpu_paths.py``, FP32's images/s:
    2.8-3.2x at 224 px, 1.4x at 64 px, a tie at 32 px but for RepVGG's 1.07-1.10x), with
    CIFAR-10 top-1 within the seed noise of FP32 for all three (3 seeds, Welch's t-test). CPUs
    without native bf16 emulate it, and CUDA is not measured here, so those keep FP32. Smaller
    images keep FP32 because in torch 2.14's oneDNN the bf16 weight gradient of a stride-2
    convolution with a kernel larger than 1 and a 1x1 input holds garbage (up to 1e38, different
    on every call; ``Conv2d(64, 64, 3, 2, 1)`` on a ``[8, 64, 1, 1]`` input shows it), which made
    16 px runs diverge."""
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    native_bf16 = cpu_has_native_bf16()
    fast = on_cpu and native_bf16 and image_size >= BF16_MIN_IMAGE_SIZE
    return {"amp": fast, "channels_last": fast}


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check (and gently convert: int->float, str from the CLI) ``value`` against ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"config field {name!r}: {value!r} is not one of {list(args)}")
        return value
    if hint is bool:
        if isinstance(value, str) and value.lower() in (
            "true",
            "1",
            "yes",
            "on",
            "false",
            "0",
            "no",
            "off",
        ):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is dict:
        if isinstance(value, str):
            value = parse_value(value)
        if isinstance(value, dict):
            return dict(value)
    elif origin is tuple:
        if isinstance(value, str):
            value = [float(v) for v in value.split(",")]
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(name, v, a) for v, a in zip(value, args))
    else:
        return value
    raise RecipeError(f"config field {name!r}: expected {_hint_name(hint)}, got {value!r}")


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# ---------------------------------------------------------------------------------------------
# presets: field overrides on top of the TrainConfig defaults

_RESNET_RS = {
    # Bello et al. 2021, section 4 / appendix: 350 epochs, batch 4096, SGD momentum 0.9,
    # lr 0.1 x batch/256, cosine with 5 warmup epochs, wd 4e-5 (BN exempt), label smoothing 0.1,
    # EMA 0.9999 with the official warm-up, RandAugment N=2, dropout before the FC, zero-init
    # last BN gamma. Crop and flip come from the data spec (folder: random-resized crop + flip).
    "epochs": 350,
    "batch_size": 4096,
    "lr_per_256": 0.1,
    "warmup_epochs": 5.0,
    "optimizer": "sgd",
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 4e-5,
    "wd_exempt": "bn",
    "label_smoothing": 0.1,
    "ema": True,
    "ema_decay": 0.9999,
    "ema_warmup": True,
    "ema_warmup_rule": "resnet-rs",
    "hflip": True,
    "drop_path_rate": 0.0,
    "amp": True,
}

# depth -> (RandAugment magnitude, dropout, stochastic depth rate) of the reference configs;
# the resolution is the model file's (RESNET_RS_IMAGE_SIZES)
RESNET_RS_SIZES: dict[int, tuple[int, float, float]] = {
    50: (10, 0.25, 0.0),
    101: (15, 0.25, 0.0),
    152: (15, 0.25, 0.0),
    200: (15, 0.25, 0.1),
    270: (15, 0.25, 0.1),
    350: (15, 0.4, 0.1),
    420: (15, 0.4, 0.1),
}

_PRESETS: dict[str, dict[str, Any]] = {"basic": {}}
_SOURCES: dict[str, str] = {
    "basic": "reparam's own, tuned on digits (CPU-sized)",
}
for _depth, (_magnitude, _dropout, _sd) in RESNET_RS_SIZES.items():
    _PRESETS[f"resnet-rs{_depth}"] = dict(
        _RESNET_RS,
        model="resnet_rs",
        model_kwargs={"depth": _depth},
        image_size=RESNET_RS_IMAGE_SIZES[_depth],
        randaugment=f"rand-m{_magnitude}-n2-mmax{max(10, _magnitude)}",
        drop_rate=_dropout,
        drop_path_rate=_sd,
    )
    _SOURCES[f"resnet-rs{_depth}"] = (
        "Bello et al. 2021, https://arxiv.org/abs/2103.07579 (section 4, appendix) and "
        f"tensorflow/tpu models/official/resnet/resnet_rs/configs (resnetrs{_depth})"
    )
_PRESETS["resnet-rs"] = dict(_PRESETS["resnet-rs50"])
_SOURCES["resnet-rs"] = "the same as resnet-rs50 (ResNet-RS-50 at 160 px)"

# RepOptimizers (https://github.com/DingXiaoH/RepOptimizers, readme_reproduce_experiments.txt,
# optimizer.py): SGD with Nesterov momentum (hard-coded), lr 0.1 x batch/256, wd 4e-5 off 1-D
# params and biases, cosine with 5 warmup epochs.
_REPOPT = {
    "optimizer": "sgd",
    "momentum": 0.9,
    "nesterov": True,
    "lr_per_256": 0.1,
    "batch_size": 256,
    "warmup_epochs": 5.0,
    "weight_decay": 4e-5,
    "wd_exempt": "1d",
}
_PRESETS["repopt-vgg"] = dict(
    _REPOPT,
    model="repopt_vgg_b1",
    epochs=120,
    label_smoothing=0.1,
    randaugment="rand-m15-n2-mmax15",
    image_size=224,
)
_SOURCES["repopt-vgg"] = (
    "RepOptimizers' ImageNet target run (readme_reproduce_experiments.txt step 5: 120 epochs, "
    "lr 0.1, wd 4e-5, 5 warmup epochs, label smoothing 0.1, AUG.PRESET raug15 = random-resized "
    "crop + flip + RandAugment m15), https://github.com/DingXiaoH/RepOptimizers"
)
_PRESETS["repopt-hs"] = dict(
    _REPOPT,
    model="repopt_vgg_b1_hs",
    epochs=240,
    label_smoothing=0.0,
    wd_exempt="1d_but_identity",
    image_size=32,
)
_SOURCES["repopt-hs"] = (
    "RepOptimizers' Hyper-Search run on CIFAR-100 (readme_reproduce_experiments.txt step 3: 240 "
    "epochs, lr 0.1, wd 4e-5 also on the identity scales, 5 warmup epochs, label smoothing 0.0, "
    "no gradient clipping; random crop with 4-pixel padding + flip), "
    "https://github.com/DingXiaoH/RepOptimizers"
)
_PRESETS["repvgg"] = {
    "model": "repvgg_a0",
    "epochs": 120,
    "batch_size": 256,
    "lr_per_256": 0.1,
    "warmup_epochs": 0.0,
    "optimizer": "sgd",
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-4,
    "wd_exempt": "1d",
    "label_smoothing": 0.0,
    "image_size": 224,
}
_SOURCES["repvgg"] = (
    "the RepVGG paper, https://arxiv.org/abs/2101.03697 section 4.1: 120 epochs, cosine from "
    "0.1 at batch 256, wd 1e-4 (biases and BN exempt, as the repository's set_weight_decay), "
    "momentum 0.9, random-resized crop + flip only"
)

# VanillaNet (https://github.com/huawei-noah/VanillaNet, README "Training" for VanillaNet-5 and
# main.py defaults): 300 epochs, lambda (act_learn) linear per epoch over the first 100
# (--decay_epochs 100), LAMB lr 3.5e-3 at an effective batch of 1024 (here: 8.75e-4 per 256
# images, scaled linearly), wd 0.35 off 1-D params, 5 warmup epochs, min lr 1e-6, dropout 0.05,
# RandAugment rand-m7-mstd0.5-inc1, mixup 0.1 + CutMix 1.0 with label smoothing 0.1 in the mixed
# targets, BCE loss, random erasing 0.25, EMA 0.99996, AMP. timm turns its 0.4 colour jitter off
# when RandAugment is on, so the official run has none, and neither does this preset.
_PRESETS["vanillanet"] = {
    "model": "vanillanet_5",
    "image_size": 224,
    "epochs": 300,
    "batch_size": 1024,
    "optimizer": "lamb",
    "lr_per_256": 3.5e-3 * 256 / 1024,
    "min_lr": 1e-6,
    "warmup_epochs": 5.0,
    "weight_decay": 0.35,
    "wd_exempt": "1d",
    "drop_rate": 0.05,
    "loss": "bce",
    "label_smoothing": 0.1,
    "mixup": 0.1,
    "cutmix": 1.0,
    "random_erasing": 0.25,
    "randaugment": "rand-m7-mstd0.5-inc1",
    "ema": True,
    "ema_decay": 0.99996,
    "amp": True,
    "anneal_kind": "linear",
    "anneal_per": "epoch",
    "anneal_fraction": 100 / 300,
}
_SOURCES["vanillanet"] = (
    "the VanillaNet repository's VanillaNet-5 command and main.py defaults "
    "(https://github.com/huawei-noah/VanillaNet): 300 epochs, lambda linear per epoch over the "
    "first 100, LAMB lr 3.5e-3 at batch 1024, wd 0.35, dropout 0.05, RandAugment "
    "rand-m7-mstd0.5-inc1, mixup 0.1, CutMix 1.0, BCE loss, random erasing 0.25, EMA 0.99996, AMP"
)


def recipes() -> dict[str, dict[str, Any]]:
    """Named presets: name -> ``{"source": where its numbers come from, "fields": what it sets on
    top of the :class:`TrainConfig` defaults and the data spec's}``."""
    return {name: {"source": _SOURCES[name], "fields": dict(v)} for name, v in _PRESETS.items()}


def load_recipe(name_or_file: str) -> dict[str, Any]:
    """The field values of a preset name or a YAML/JSON recipe file (which may set ``recipe`` to
    a preset it extends). Raises :class:`RecipeError` for unknown names and unreadable files."""
    if name_or_file in _PRESETS:
        return dict(_PRESETS[name_or_file], recipe=name_or_file)
    path = Path(name_or_file)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise RecipeError(
            f"unknown recipe {name_or_file!r}: expected a preset ({', '.join(_PRESETS)}) "
            "or a .yaml/.yml/.json file"
        )
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise RecipeError(f"{path}: not a valid recipe file ({err})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    base = data.get("recipe", "basic")
    if base not in _PRESETS:
        raise RecipeError(
            f"{path}: 'recipe' must name a preset ({', '.join(_PRESETS)}), got {base!r}"
        )
    return {**_PRESETS[base], **data, "recipe": str(path)}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=0.2", "ema=true", "model_kwargs={width: 2}"]`` -> ``{"lr": "0.2", ...}`` (typed
    later by :meth:`TrainConfig.from_dict`)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_")] = value
    return out


def resolve_config(recipe: str = "basic", overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- recipe (preset or file) <- overrides, validated."""
    values = load_recipe(recipe)
    overrides = dict(overrides or {})
    if (
        "model" in overrides
        and overrides["model"] != values.get("model")
        and "model_kwargs" not in overrides
    ):
        values.pop("model_kwargs", None)  # a preset's model_kwargs belong to the preset's model
    values.update(overrides)
    config = TrainConfig.from_dict(values)
    preset = _PRESETS.get(recipe, {})
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
    return TrainConfig.from_dict(values)
