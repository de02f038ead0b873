"""What a benchmark trains: a model spec, its optimizer and one fixed synthetic batch.

Model spec: ``NAME[@OPTIMIZER]``. ``NAME`` is a reparam model (``repopt_vgg_a0``) or a timm model
with a ``timm:`` prefix (``timm:repvgg_a0``, the peer implementation). ``OPTIMIZER``:

- ``auto`` (default): ``reparam.optim.RepOptSGD`` when the model has gradient multipliers
  (``reparam.optim.grad_mults(model)`` non-empty), else ``torch.optim.SGD``;
- ``sgd``: ``torch.optim.SGD`` whatever the model (the RepOpt-overhead baseline);
- ``repopt``: ``RepOptSGD`` (an error for a model without multipliers).

Both optimizers run with the same settings: momentum 0.9, weight decay 4e-5, lr 0.01.

Execution paths of a :class:`TrainSubject` (as ``reparam.app.train.fit`` runs them): ``amp`` runs the
forward and loss under bf16 autocast; ``channels_last`` stores the model and the batch in
channels-last (NHWC) memory format.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import timm
import torch
from torch import Tensor, nn

from reparam.errors import UserError
from reparam.models import create_model, list_models
from reparam.optim import RepOptSGD, grad_mults

__all__ = [
    "OPTIMIZERS",
    "ModelSpec",
    "TrainSubject",
    "build_model",
    "build_optimizer",
    "check_spec",
    "parse_spec",
]

OPTIMIZERS = ("auto", "sgd", "repopt")
TIMM_PREFIX = "timm:"
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 4e-5


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``NAME[@OPTIMIZER]``."""

    name: str
    optimizer: str = "auto"

    @property
    def label(self) -> str:
        return self.name if self.optimizer == "auto" else f"{self.name}@{self.optimizer}"

    @property
    def is_timm(self) -> bool:
        return self.name.startswith(TIMM_PREFIX)


def parse_spec(text: str, default_optimizer: str = "auto") -> ModelSpec:
    """``"repopt_vgg_a0@sgd"`` -> ``ModelSpec("repopt_vgg_a0", "sgd")``."""
    name, _, optimizer = text.strip().partition("@")
    optimizer = optimizer or default_optimizer
    if not name:
        raise UserError(f"empty model name in {text!r}; expected NAME[@{'|'.join(OPTIMIZERS)}]")
    if optimizer not in OPTIMIZERS:
        raise UserError(
            f"unknown optimizer {optimizer!r} in {text!r}; expected one of {OPTIMIZERS}"
        )
    return ModelSpec(name, optimizer)


def check_spec(spec: ModelSpec) -> ModelSpec:
    """Raise :class:`UserError` when ``spec`` names no registered (reparam or timm) model."""
    if spec.is_timm:
        name = spec.name[len(TIMM_PREFIX) :]
        if not timm.is_model(name):
            raise UserError(f"{spec.name}: timm has no model {name!r}")
        return spec
    if spec.name not in list_models():
        raise UserError(
            f"unknown model {spec.name!r}; see `reparam models`, or use timm:NAME for timm models"
        )
    return spec


def build_model(spec: ModelSpec, num_classes: int) -> nn.Module:
    """The model named by ``spec`` with fresh weights (reparam registry or ``timm:`` names)."""
    if spec.is_timm:
        name = spec.name[len(TIMM_PREFIX) :]
        try:
            return timm.create_model(name, num_classes=num_classes, pretrained=False)
        except RuntimeError as err:
            raise UserError(f"timm model {name!r}: {err}") from None
    try:
        return create_model(spec.name, num_classes=num_classes)
    except ValueError as err:
        raise UserError(str(err)) from None


def build_optimizer(spec: ModelSpec, model: nn.Module) -> tuple[torch.optim.Optimizer, str]:
    """``(optimizer, its name)`` for ``spec`` (see module docstring)."""
    mults = {} if spec.is_timm or spec.optimizer == "sgd" else grad_mults(model)
    if spec.optimizer == "repopt" and not mults:
        raise UserError(f"{spec.label}: the model has no gradient multipliers (no CSLA layers)")
    if mults:
        optimizer = RepOptSGD(model, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        return optimizer, "RepOptSGD"
    optimizer = torch.optim.SGD(
        model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    return optimizer, "SGD"


@dataclass
class TrainSubject:
    """One model + optimizer + fixed batch; ``step()`` is one full training step, on the
    execution path set by ``amp`` and ``channels_last`` (see module docstring)."""

    spec: ModelSpec
    batch_size: int
    image_size: int
    num_classes: int
    seed: int = 0
    amp: bool = False
    channels_last: bool = False
    model: nn.Module = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    optimizer_name: str = field(init=False)

    def __post_init__(self) -> None:
        torch.manual_seed(self.seed)
        self.model = build_model(self.spec, self.num_classes).train()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer, self.optimizer_name = build_optimizer(self.spec, self.model)
        self.loss_fn = nn.CrossEntropyLoss()
        self.set_batch(self.batch_size)

    def set_batch(self, batch_size: int) -> None:
        """Replace the fixed batch by a random one of ``batch_size`` images."""
        self.batch_size = batch_size
        self.images = torch.randn(batch_size, 3, self.image_size, self.image_size)
        if self.channels_last:
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.labels = torch.randint(0, self.num_classes, (batch_size,))

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def forward_loss(self) -> Tensor:
        with torch.autocast(self.images.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.loss_fn(self.model(self.images), self.labels)

    def step(self) -> float:
        """One training step; returns the seconds spent in ``optimizer.step()``."""
        self.optimizer.zero_grad(set_to_none=True)
        self.forward_loss().backward()
        start = time.perf_counter()
        self.optimizer.step()
        return time.perf_counter() - start
