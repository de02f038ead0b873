"""The numerics of every equivalence check: relative error, :class:`CheckResult`, random BN
statistics, fused-vs-reference output pairs and nets trained side by side on the same batches
(pure torch; used by the checks, by deployment's ONNX check and by the tests).

Relative error is ``max|candidate - reference| / max|reference|`` over all compared tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "Batch",
    "CheckResult",
    "compare",
    "fused_output_pairs",
    "randomize_batchnorm_",
    "rel_err",
    "train_together",
    "train_twins",
]

Batch = Callable[[torch.Generator], tuple]


@dataclass
class CheckResult:
    """One comparison. ``finite`` is false when either side held a NaN or an infinity: then the
    errors are ``None`` (JSON ``null``) and the check has failed."""

    max_abs_err: float | None
    max_rel_err: float | None
    dtype: str
    passed: bool

    @property
    def finite(self) -> bool:
        return self.max_abs_err is not None

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """``"max rel err 1.2e-16 (abs 3.4e-15)"``, or what was not finite."""
        if not self.finite:
            return "non-finite values (NaN or inf) in the compared outputs"
        return f"max rel err {self.max_rel_err:.2e} (abs {self.max_abs_err:.2e})"


def compare(pairs: Iterable[tuple[Tensor, Tensor]], tolerance: float) -> CheckResult:
    """Compare ``(candidate, reference)`` tensor pairs; passed when every value on both sides is
    finite and ``max_rel_err <= tolerance``."""
    max_abs, max_ref, dtype, finite = 0.0, 0.0, None, True
    for candidate, reference in pairs:
        candidate, reference = candidate.detach(), reference.detach()
        dtype = dtype or str(reference.dtype).replace("torch.", "")
        finite = finite and bool(
            torch.isfinite(candidate).all() and torch.isfinite(reference).all()
        )
        max_abs = max(max_abs, (candidate - reference).abs().max().item())
        max_ref = max(max_ref, reference.abs().max().item())
    if dtype is None:
        raise ValueError("compare needs at least one pair of tensors")
    if not finite:
        return CheckResult(None, None, dtype, passed=False)
    rel = max_abs / max_ref if max_ref > 0 else max_abs
    return CheckResult(max_abs, rel, dtype, rel <= tolerance)


def randomize_batchnorm_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters, in place.

    ``mean ~ U(-1, 1)``, ``var ~ U(0.5, 2)``, ``gamma ~ U(0.5, 1.5)``, ``beta ~ U(-1, 1)``: a freshly
    initialised BN (mean 0, var 1, gamma 1, beta 0) would hide folding mistakes.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for tensor, low, high in (
                (module.running_mean, -1.0, 1.0),
                (module.running_var, 0.5, 2.0),
                (module.weight, 0.5, 1.5),
                (module.bias, -1.0, 1.0),
            ):
                if tensor is not None:
                    values = torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
                    tensor.data.copy_(values * (high - low) + low)
    return model


@torch.no_grad()
def fused_output_pairs(
    model: nn.Module,
    fused: nn.Module,
    shapes: tuple[tuple[int, int], ...],
    generator: torch.Generator | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """``(fused, model)`` output pairs, features and logits, on random float64 images of each
    ``(batch, size)``: the inputs of :func:`compare`."""
    pairs = []
    for batch, size in shapes:
        x = torch.randn(batch, 3, size, size, dtype=torch.float64, generator=generator)
        pairs.append((fused.forward_features(x), model.forward_features(x)))
        pairs.append((fused(x), model(x)))
    return pairs


def rel_err(candidate: Tensor, reference: Tensor) -> float:
    """``max|candidate - reference| / max|reference|`` (0 when both are all zeros)."""
    return ((candidate - reference).abs().max() / reference.abs().max().clamp_min(1e-300)).item()


def square_sum(output: Tensor) -> Tensor:
    return output.square().sum()


def train_together(
    runs: Sequence[tuple],
    steps: int,
    batch: Batch,
    loss: Callable[..., Tensor] = square_sum,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> torch.Generator:
    """Train every ``(net, optimizer)`` or ``(net, optimizer, scheduler)`` of ``runs`` on the same
    batches: each of ``steps`` steps draws ``(x, *rest) = batch(gen)`` once, and every net takes
    one step on ``loss(net(x), *rest)`` (its scheduler, if any, steps after). ``gen`` is
    ``generator`` or a fresh one seeded ``seed``; it is returned, for a held-out draw."""
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, *rest = batch(gen)
        for net, opt, *scheduler in runs:
            opt.zero_grad()
            loss(net(x), *rest).backward()
            opt.step()
            for s in scheduler:
                s.step()
    return gen


def train_twins(
    imaginary: nn.Module,
    target: nn.Module,
    reference_opt: torch.optim.Optimizer,
    repopt: torch.optim.Optimizer,
    steps: int,
    batch: Batch,
    loss: Callable[..., Tensor] = square_sum,
    *,
    held_out: Callable[[torch.Generator], Tensor] | None = None,
    eval_mode: bool = False,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Train an imaginary CSLA network with ``reference_opt`` (torch's SGD / AdamW) and its
    target with ``repopt`` on the same batches (:func:`train_together`); return ``(target output,
    imaginary output)`` on a held-out input drawn after training: ``held_out(gen)``, by default
    the input of one more ``batch(gen)``. ``eval_mode`` puts both nets in eval mode first (BN
    then normalises with the running statistics the training left)."""
    gen = train_together(
        [(imaginary, reference_opt), (target, repopt)], steps, batch, loss, generator, seed
    )
    x = held_out(gen) if held_out is not None else batch(gen)[0]
    if eval_mode:
        imaginary.eval()
        target.eval()
    with torch.no_grad():
        return target(x), imaginary(x)
