"""Annealed activations for depth re-parameterization (VanillaNet's "deep training").

``A_lambda(x) = (1 - lambda) * act(x) + lambda * x``; for ReLU this is ``leaky_relu(x, lambda)``.
``lambda`` goes from 0 to 1 during training (driven by the engine through :func:`set_lambda` and a
:class:`LambdaSchedule`); at ``lambda = 1`` the activation is the identity and the convolutions
around it compose into one (``reparam.kernels.compose``).

``lambda`` is a buffer, so it is in the ``state_dict`` (resume, EMA copies and fused-model checks
all see it). The activation never works in place: ReduceNet's published numbers came from a
version where ``s * relu_(x) + (1 - s) * x`` aliased ``x``, so nothing was ever annealed.

:func:`fusion_macs` reports the analytic cost of a model before and after fusion, and warns when
fusion increases compute (stacked stride-1 ``3x3`` convs, or a bottleneck narrower than its ends).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from reparam.errors import FusionError
from reparam.fuse import prepare_for_deploy, reparameterize
from reparam.models.summary import count_macs

__all__ = [
    "AnnealedActivation",
    "LambdaSchedule",
    "annealing_finished",
    "fusion_macs",
    "has_annealing",
    "set_lambda",
]

log = logging.getLogger(__name__)


class AnnealedActivation(nn.Module):
    """``A_lambda(x) = (1 - lambda) act(x) + lambda x`` with ``lambda`` a buffer named ``lam``.

    ``act`` defaults to ReLU (then ``A_lambda = leaky_relu(x, lambda)``, computed exactly as
    ``where(x > 0, x, lambda x)``). ``lambda`` starts at ``initial`` (0: the plain activation).
    Deploy form (``fuse``): ``nn.Identity``, allowed only at ``lambda == 1``.
    """

    def __init__(self, act: nn.Module | None = None, initial: float = 0.0):
        super().__init__()
        self.act = act
        self.register_buffer("lam", torch.tensor(float(initial)))

    @property
    def value(self) -> float:
        """The current ``lambda`` as a Python float."""
        return float(self.lam)

    def forward(self, x: Tensor) -> Tensor:
        lam = self.lam.to(x.dtype)
        if self.act is None:
            return torch.where(x > 0, x, x * lam)
        return torch.lerp(self.act(x), x, lam)

    def check_fusable(self) -> None:
        """Raise :class:`FusionError` unless ``lambda == 1`` (the activation is the identity)."""
        if self.value != 1.0:
            raise FusionError(
                f"annealed activation has lambda = {self.value:.6g}; fusing is exact only at "
                "lambda = 1.0 (finish the lambda schedule, or call set_lambda(model, 1.0) and "
                "fine-tune before fusing)"
            )

    def prepare_for_deploy(self) -> None:
        """The end of annealing: ``lambda = 1`` (the hook of :func:`reparam.fuse.prepare_for_deploy`)."""
        with torch.no_grad():
            self.lam.fill_(1.0)

    def fuse(self) -> nn.Identity:
        self.check_fusable()
        return nn.Identity()

    def extra_repr(self) -> str:
        return f"lam={self.value:.6g}"


def set_lambda(model: nn.Module, value: float) -> int:
    """Set ``lambda`` of every :class:`AnnealedActivation` in ``model``; returns how many."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {value}")
    modules = [m for m in model.modules() if isinstance(m, AnnealedActivation)]
    with torch.no_grad():
        for module in modules:
            module.lam.fill_(value)
    return len(modules)


def annealing_finished(model: nn.Module) -> bool:
    """Whether every annealed activation is at ``lambda = 1`` (true for a model with none): the
    model fuses exactly."""
    return all(m.value == 1.0 for m in model.modules() if isinstance(m, AnnealedActivation))


def has_annealing(model: nn.Module) -> bool:
    """Whether ``model`` contains an :class:`AnnealedActivation` (the engine then drives lambda)."""
    return any(isinstance(m, AnnealedActivation) for m in model.modules())


@dataclass(frozen=True)
class LambdaSchedule:
    """``lambda`` from 0 to 1 over the first ``fraction`` of training, then 1.0.

    Counted in whole ``per`` units (iterations, or epochs: ``lambda`` constant within an epoch).
    With ``n`` units in the annealing phase (``n = max(1, round(fraction * total_units))``) and
    ``i = min(unit, n - 1)``, ``t = i / (n - 1)`` (``t = 1`` when ``n = 1``):

    - ``linear``: ``lambda = t``
    - ``cosine``: ``lambda = (1 - cos(pi t)) / 2``

    so ``lambda`` is exactly 0.0 at the first unit and exactly 1.0 from the last unit of the phase
    on: the last annealing update already trains the network that will be fused.
    VanillaNet: ``linear``, ``fraction=1/3``, ``per="epoch"``; ReduceNet: ``cosine``, per iteration.
    """

    kind: Literal["linear", "cosine"] = "linear"
    fraction: float = 1.0
    per: Literal["iteration", "epoch"] = "iteration"

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "cosine"):
            raise ValueError(f"LambdaSchedule kind must be 'linear' or 'cosine', got {self.kind!r}")
        if self.per not in ("iteration", "epoch"):
            raise ValueError(f"LambdaSchedule per must be 'iteration' or 'epoch', got {self.per!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"LambdaSchedule fraction must be in (0, 1], got {self.fraction}")

    def value(self, step: int, total_steps: int, steps_per_epoch: int | None = None) -> float:
        """``lambda`` for the iteration with 0-based index ``step`` of ``total_steps``."""
        if total_steps < 1 or step < 0:
            raise ValueError(f"need total_steps >= 1 and step >= 0, got {step} of {total_steps}")
        if self.per == "epoch":
            if not steps_per_epoch or steps_per_epoch < 1:
                raise ValueError("a per-epoch LambdaSchedule needs steps_per_epoch >= 1")
            unit, total_units = step // steps_per_epoch, -(-total_steps // steps_per_epoch)
        else:
            unit, total_units = step, total_steps
        n = max(1, round(self.fraction * total_units))
        if unit >= n - 1:
            return 1.0
        t = unit / (n - 1)
        return t if self.kind == "linear" else (1.0 - math.cos(math.pi * t)) / 2.0


def fusion_macs(model: nn.Module, image_size: int, in_channels: int = 3) -> dict[str, float]:
    """MACs of one ``image_size`` image before and after ``reparameterize`` (Conv2d + Linear).

    The fused structure does not depend on the weights, so a copy is fused as
    :func:`reparam.fuse.prepare_for_deploy` leaves it (eval mode, ``lambda = 1``); ``model`` is
    untouched. Logs a warning when fusion increases compute.
    Returns ``{"macs_before", "macs_after", "ratio"}`` (``ratio = after / before``).
    """
    probe = prepare_for_deploy(copy.deepcopy(model))
    before = count_macs(probe, image_size, in_channels)
    after = count_macs(reparameterize(probe), image_size, in_channels)
    ratio = after / before if before else float("nan")
    if after > before:
        log.warning(
            "fusing %s increases compute at %dx%d: %d -> %d MACs (x%.2f)",
            type(model).__name__,
            image_size,
            image_size,
            before,
            after,
            ratio,
        )
    return {"macs_before": before, "macs_after": after, "ratio": ratio}
