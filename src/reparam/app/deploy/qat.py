"""Quantization-aware training (``reparam qat``): fine-tune a trained model with fake quantization
(torchao PT2E, :mod:`reparam.quant.pt2e`) and write a deploy folder like ``deploy --int8``'s.

Routes (``QATSettings.route``):

- ``"train"``: QAT of the training structure as it is (conv-BN-ReLU for RepOpt-VGG and plain
  VGG, with RepOpt grad mults kept). For a multi-branch model (RepVGG) this is the naive route:
  every branch is fake-quantized on its own, and the INT8 model it deploys keeps the branches
  (3 convs and 2 adds per block), because a sum of quantized kernels is not the quantized sum.
- ``"fused-bn"``: the official RepVGG route (its repository's ``quantization/`` recipe): fuse,
  then give every fused conv a BN that starts as the identity plus the bias
  (:func:`with_batchnorm`), and QAT that single-branch network; it deploys as a plain VGG.
- ``"auto"``: ``"train"`` when the training structure already is the deploy structure (as many
  convs before as after fusing), else ``"fused-bn"``.

Optimizer: SGD (RepOptSGD with the model's grad mults on the ``"train"`` route) with the run's
momentum, Nesterov and weight decay, cosine from ``lr`` to 0 per step. BN statistics are frozen by
default (``freeze_bn``: BN normalises with its running statistics, so the fake-quantized conv-BN
fold is the one deployed, and the fine-tune starts from the trained function exactly); its scale
and shift still train. Loss: the run's
label-smoothed cross-entropy; with ``distill``, ``(CE + T^2 KL(p_teacher^T || p_student^T)) / 2``
with the FP32 model as teacher (``T = 2``; logit distillation).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from reparam.app.deploy.pipeline import deploy, onnx_metadata
from reparam.app.train import TrainConfig
from reparam.app.train.optim_factory import weight_decay_groups
from reparam.app.train.setup import TrainingLoss, build_data
from reparam.errors import DeployError
from reparam.extras import require_extra
from reparam.fuse import reparameterize
from reparam.models.annealed import annealing_finished, has_annealing
from reparam.optim import RepOptSGD, grad_mults
from reparam.quant.ort import GRANULARITIES, QuantSettings
from reparam.saved import load_model

__all__ = ["ROUTES", "QATSettings", "qat", "resolve_route", "with_batchnorm"]

log = logging.getLogger(__name__)

ROUTES = ("auto", "train", "fused-bn")
KD_TEMPERATURE = 2.0


@dataclasses.dataclass(frozen=True)
class QATSettings:
    """What decides a QAT fine-tune (recorded as ``settings`` in ``quant.json``). ``lr`` and
    ``batch_size`` default to 1% of the run's learning rate and the run's batch size."""

    epochs: int = 2
    granularity: Literal["per-tensor", "per-channel"] = "per-channel"
    route: Literal["auto", "train", "fused-bn"] = "auto"
    lr: float | None = None
    batch_size: int | None = None
    distill: bool = False
    freeze_bn: bool = True
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "seed"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise DeployError(f"QAT {name} must be an integer, got {value!r}")
        if self.epochs < 1:
            raise DeployError(f"QAT epochs must be >= 1, got {self.epochs}")
        if self.granularity not in GRANULARITIES:
            raise DeployError(f"granularity {self.granularity!r}: expected one of {GRANULARITIES}")
        if self.route not in ROUTES:
            raise DeployError(f"route {self.route!r}: expected one of {ROUTES}")
        if self.lr is not None and not (0 < self.lr < math.inf):
            raise DeployError(f"QAT lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.seed < 2**32:
            raise DeployError(f"QAT seed must be in [0, {2**32 - 1}], got {self.seed}")
        if self.batch_size is not None and self.batch_size < 2:
            raise DeployError(f"QAT batch size must be >= 2, got {self.batch_size}")


def with_batchnorm(fused: nn.Module, images: Tensor | None = None) -> nn.Module:
    """A copy of ``fused`` with every biased ``Conv2d`` replaced by ``Sequential(conv, bn)``: the
    conv without bias, then a BN whose running statistics are the per-channel mean ``mu`` and
    variance ``var`` of the bias-free conv output on ``images`` (0 and 1 without images), with
    ``gamma = sqrt(var + eps)`` and ``beta = mu + b``, so ``bn(conv(x)) = conv(x) + b`` exactly in
    eval mode, and nearly so in train mode on data like ``images``. The keys match plain VGG's
    ``conv.conv`` / ``conv.bn``."""
    model = copy.deepcopy(fused).eval()
    convs = [
        (module, name, child)
        for module in model.modules()
        for name, child in module.named_children()
        if isinstance(child, nn.Conv2d) and child.bias is not None
    ]
    stats: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def record(conv: nn.Module, inputs: tuple[Tensor], output: Tensor) -> None:
        centred = output - conv.bias.view(1, -1, 1, 1)
        stats[conv] = (centred.mean((0, 2, 3)), centred.var((0, 2, 3), unbiased=False))

    if images is not None:
        hooks = [conv.register_forward_hook(record) for _, _, conv in convs]
        with torch.no_grad():
            model(images)
        for hook in hooks:
            hook.remove()
    for module, name, child in convs:
        conv = copy.deepcopy(child)
        bias = conv.bias.detach().clone()
        conv.bias = None
        bn = nn.BatchNorm2d(conv.out_channels, device=bias.device, dtype=bias.dtype).eval()
        with torch.no_grad():
            if child in stats:
                bn.running_mean.copy_(stats[child][0])
                bn.running_var.copy_(stats[child][1])
            bn.weight.copy_((bn.running_var + bn.eps).sqrt())
            bn.bias.copy_(bn.running_mean + bias)
        setattr(module, name, nn.Sequential(OrderedDict(conv=conv, bn=bn)))
    return model


def _conv_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def resolve_route(model: nn.Module, route: str) -> str:
    """``"train"`` or ``"fused-bn"`` for ``model`` (see the module docstring)."""
    if route != "auto":
        return route
    fused = reparameterize(copy.deepcopy(model).eval())
    return "train" if _conv_count(fused) == _conv_count(model) else "fused-bn"


def _run_config(config: dict[str, Any], data: str) -> TrainConfig:
    """The run's recipe (augmentation, label smoothing, optimizer settings) on ``data``."""
    values = {k: v for k, v in config.items() if k in TrainConfig.model_fields}
    values.update(data=data, resume=False, device="auto")  # the run's device may be absent here
    return TrainConfig.from_dict(values)


def _teacher_loss(student: Tensor, teacher: Tensor) -> Tensor:
    t = KD_TEMPERATURE
    return (
        F.kl_div(
            F.log_softmax(student.float() / t, 1),
            F.log_softmax(teacher.float() / t, 1),
            log_target=True,
            reduction="batchmean",
        )
        * t
        * t
    )


def _fine_tune(
    student: nn.Module,
    masks: dict[str, Tensor],
    teacher: nn.Module | None,
    run: TrainConfig,
    settings: QATSettings,
    lr: float,
    progress: bool,
) -> dict[str, Any]:
    """QAT fine-tuning of the prepared graph ``student`` in place; returns what it did."""
    from tqdm import tqdm

    from reparam.quant.pt2e import set_training

    bundle = build_data(run)
    batch_size = settings.batch_size or run.batch_size
    generator = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(
        bundle.train, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator
    )
    if len(loader) == 0:
        raise DeployError(
            f"QAT: {len(bundle.train)} training images are fewer than one batch of {batch_size}"
        )
    groups = weight_decay_groups(student, run.weight_decay, "1d")
    for group in groups:
        del group["names"]
    params = dict(student.named_parameters())
    lost = sorted(set(masks) - set(params))
    if lost:
        raise DeployError(f"QAT: the captured graph lost the RepOpt-weighted parameters {lost[:3]}")
    by_param = {params[name]: mask for name, mask in masks.items()}
    optimizer_kwargs = dict(
        lr=lr, momentum=run.momentum, nesterov=run.nesterov, weight_decay=run.weight_decay
    )
    if by_param:
        optimizer = RepOptSGD(groups, grad_mults=by_param, **optimizer_kwargs)
    else:
        optimizer = torch.optim.SGD(groups, **optimizer_kwargs)
    total = settings.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
    )
    criterion = TrainingLoss("ce", run.label_smoothing)
    set_training(student, not settings.freeze_bn)
    start, losses = time.perf_counter(), []
    bar = tqdm(total=total, desc="QAT", disable=not progress, leave=False)
    for _ in range(settings.epochs):
        for images, labels in loader:
            logits = student(images)
            loss = criterion(logits, labels)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(images)
                loss = (loss + _teacher_loss(logits, target)) / 2
            if not math.isfinite(loss.item()):
                raise DeployError(f"QAT: loss is {loss.item()} at step {schedule.last_epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(1)
    bar.close()
    return {
        "steps": total,
        "train_images": len(bundle.train),
        "seconds": time.perf_counter() - start,
        "final_loss": float(np.mean(losses[-len(loader) :])),
    }


def _qat_writer(source: str | os.PathLike, data: str, settings: QATSettings, progress: bool):
    """The deploy pipeline's INT8 writer: QAT the source's model, quantize, export."""

    def write(fused, config, onnx_path: Path, int8_path: Path, images: np.ndarray) -> dict:
        from reparam.quant.onnx import export_onnx, open_session, run_session
        from reparam.quant.pt2e import prepare_qat, quantize_qat

        model, _ = load_model(source)
        if has_annealing(model) and not annealing_finished(model):
            raise DeployError(
                f"{source}: {config['model']} is an annealed model below lambda = 1; QAT would "
                "quantize activations that fusing removes: finish annealing (train to the end) "
                "first"
            )
        route = resolve_route(model, settings.route)
        masks = grad_mults(model, power=2) if route == "train" else {}
        probe = torch.from_numpy(np.ascontiguousarray(images))
        student = model if route == "train" else with_batchnorm(fused, probe)
        run = _run_config(config, data)
        lr = settings.lr or 0.01 * run.resolved_lr
        torch.manual_seed(settings.seed)
        example = probe[:2]
        prepared = prepare_qat(student, example, settings.granularity)
        teacher = fused.eval() if settings.distill else None
        trained = _fine_tune(prepared, masks, teacher, run, settings, lr, progress)
        quantized = quantize_qat(prepared)
        export_onnx(quantized, int8_path, config["image_size"], onnx_metadata(config))
        with torch.no_grad():
            torch_top1 = quantized(probe).argmax(1).numpy()
        as_written = run_session(open_session(int8_path, qdq_as_written=True), probe)
        integer_kernels = run_session(open_session(int8_path), probe)
        return {
            "settings": {
                **dataclasses.asdict(settings),
                "route": route,
                "lr": lr,
                "batch_size": settings.batch_size or run.batch_size,
                "backend": "pt2e-qat",
                "calibration": f"QAT, {settings.epochs} epochs (moving-average min/max)",
                "format": "QDQ",
                "activations": "uint8",
                "weights": "int8 symmetric",
                "grad_mults": bool(masks),
            },
            "calib_images_used": trained["train_images"],
            "float_nodes": [],
            "qat": trained,
            # the export: ORT computing the QDQ graph as written against the torch model
            "onnx_vs_torch_top1_agreement": float(np.mean(torch_top1 == as_written.argmax(1))),
            # deployment: ORT's integer kernels round requantization their own way
            "onnx_int8_kernels_vs_torch_top1_agreement": float(
                np.mean(torch_top1 == integer_kernels.argmax(1))
            ),
        }

    return write


def qat(
    source: str | os.PathLike,
    data: str,
    out_dir: str | os.PathLike,
    settings: QATSettings | None = None,
    *,
    eval_images: int = 256,
    latency_batch: int = 32,
    latency_repeats: int = 30,
    threads: int | None = None,
    progress: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """QAT of the run ``source`` on ``data`` into the deploy folder ``out_dir``; returns
    ``deploy.json``'s content (``int8``: top-1 FP32 (the run's model) / INT8 (QAT), agreement,
    SQNR, latency). ``eval_images`` train images check the ONNX file against the torch model."""
    settings = settings or QATSettings()
    require_extra("qat")
    require_extra("deploy")
    path = Path(source)
    if not (path.is_dir() or path.suffix == ".safetensors"):
        raise DeployError(f"{path}: expected a run folder or a .safetensors checkpoint")
    return deploy(
        source,
        out_dir,
        int8=True,
        calib_data=data,
        settings=QuantSettings(granularity=settings.granularity, calib_images=eval_images),
        latency_batch=latency_batch,
        latency_repeats=latency_repeats,
        threads=threads,
        progress=progress,
        force=force,
        int8_writer=_qat_writer(source, data, settings, progress),
    )
