"""Builders that turn a :class:`TrainConfig` into the loop's parts: data, model, schedule, EMA,
lambda schedule."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from reparam.app.dataspec import load_data
from reparam.app.train.recipe import TrainConfig
from reparam.data import train_transform
from reparam.errors import RecipeError, ReparamError
from reparam.models import create_model
from reparam.models.annealed import LambdaSchedule, has_annealing

__all__ = [
    "ResNetRSEma",
    "TrainingLoss",
    "build_data",
    "build_ema",
    "build_mixup",
    "build_model",
    "build_scheduler",
    "lambda_schedule",
]


def build_data(config: TrainConfig) -> Any:
    """``reparam.data.load_data`` with the recipe's train transform (crop, flip, RandAugment,
    normalisation) and its :class:`~reparam.data.Preprocessing` for evaluation."""
    train_tf = train_transform(
        config.image_size,
        hflip=config.hflip,
        crop_padding=config.crop_padding,
        randaugment=config.randaugment,
        train_crop=config.train_crop,
        mean=config.mean,
        std=config.std,
        random_erasing=config.random_erasing,
    )
    return load_data(
        config.data,
        config.image_size,
        train_transform=train_tf,
        eval_transform=config.preprocessing.transform(),
    )


def build_model(config: TrainConfig, device: torch.device, distributed: bool = False) -> nn.Module:
    """``create_model(model, num_classes, **model_kwargs, drop_rate=, drop_path_rate=)`` on
    ``device`` (dropout and stochastic depth passed only when the recipe sets them)."""
    kwargs = dict(config.model_kwargs)
    if config.drop_rate is not None:
        kwargs["drop_rate"] = config.drop_rate
    if config.drop_path_rate:
        kwargs["drop_path_rate"] = config.drop_path_rate
    try:
        model = create_model(config.model, num_classes=config.num_classes, **kwargs)
    except TypeError as err:
        hint = ""
        if "drop_path_rate" in kwargs and "drop_path_rate" in str(err):
            hint = "; stochastic depth (drop_path_rate) needs a residual model"
        raise RecipeError(
            f"model {config.model!r} does not accept {kwargs} ({err}){hint}"
        ) from None
    except ValueError as err:
        if isinstance(err, ReparamError):
            raise
        raise RecipeError(f"model {config.model!r} with model_kwargs {kwargs}: {err}") from None
    if config.sync_bn and distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int, total_steps: int
) -> Any:
    """timm ``CosineLRScheduler`` counted in optimizer steps: linear warmup over
    ``warmup_epochs * steps_per_epoch`` steps from ``warmup_lr_init`` to ``lr``, then
    ``lr_t = min_lr + (lr - min_lr) (1 + cos(pi t / T')) / 2`` over the remaining ``T'`` steps."""
    warmup = min(total_steps, round(config.warmup_epochs * steps_per_epoch))
    timm_log = logging.getLogger("timm.scheduler.cosine_lr")
    level = timm_log.level
    timm_log.setLevel(logging.ERROR)  # its "no effect" warning when warmup fills a short run
    try:
        return CosineLRScheduler(
            optimizer,
            t_initial=max(1, total_steps - warmup),
            lr_min=config.min_lr,
            warmup_t=warmup,
            warmup_lr_init=config.warmup_lr_init,
            warmup_prefix=True,
            t_in_epochs=False,
        )
    finally:
        timm_log.setLevel(level)


def build_ema(model: nn.Module, config: TrainConfig) -> Any:
    """timm ``ModelEmaV3`` (weights and BN buffers) when the recipe turns EMA on, else ``None``."""
    if not config.ema:
        return None
    if config.ema_warmup and config.ema_warmup_rule == "resnet-rs":
        return ResNetRSEma(model, decay=config.ema_decay)
    return ModelEmaV3(model, decay=config.ema_decay, use_warmup=config.ema_warmup)


class ResNetRSEma(ModelEmaV3):
    """timm's EMA with the warm-up of the official ResNet-RS code:
    ``decay_t = min(decay, (1 + t) / (10 + t))`` at optimizer step ``t``."""

    def get_decay(self, step: int | None = None) -> float:
        return self.decay if step is None else min(self.decay, (1 + step) / (10 + step))


class TrainingLoss(nn.Module):
    """The training objective, computed in at least float32 (also under bf16 autocast).

    ``targets`` are class indices, or per-class probabilities ``q`` from :func:`build_mixup`
    (which then carry the label smoothing ``e``):

    - ``"ce"``: indices: ``(1 - e) CE(p, y) + e mean_k(-log p_k)``; probabilities:
      ``-sum_k q_k log p_k`` (timm ``SoftTargetCrossEntropy``);
    - ``"bce"``: timm ``BinaryCrossEntropy``, one sigmoid per class against the one-hot target
      smoothed to ``e / K`` off and ``1 - e + e / K`` on (or against ``q``), averaged.
    """

    def __init__(self, kind: str = "ce", label_smoothing: float = 0.0):
        super().__init__()
        self.kind, self.label_smoothing = kind, label_smoothing
        self.bce = BinaryCrossEntropy(smoothing=label_smoothing) if kind == "bce" else None
        self.soft_ce = SoftTargetCrossEntropy()

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if self.bce is not None:
            return self.bce(logits, targets)
        if targets.ndim == 2:
            return self.soft_ce(logits, targets)
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)


def build_mixup(config: TrainConfig) -> Mixup | None:
    """timm ``Mixup`` when the recipe sets ``mixup`` and/or ``cutmix`` (per batch, probability 1,
    CutMix half the time when both are on; targets smoothed by ``label_smoothing``), else
    ``None``. It needs an even per-process batch."""
    if not (config.mixup or config.cutmix):
        return None
    return Mixup(
        mixup_alpha=config.mixup,
        cutmix_alpha=config.cutmix,
        label_smoothing=config.label_smoothing,
        num_classes=config.num_classes,
    )


def lambda_schedule(model: nn.Module, config: TrainConfig) -> Any:
    """``LambdaSchedule`` for models with annealed activations (depth re-param), else ``None``."""
    if not has_annealing(model):
        return None
    return LambdaSchedule(
        kind=config.anneal_kind, fraction=config.anneal_fraction, per=config.anneal_per
    )
