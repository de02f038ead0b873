"""``reparam verify`` checks: a real multi-branch CSLA network trained with torch's SGD / AdamW
against its single-layer target trained with RepOptSGD / RepOptAdamW (float64).

The network covers the general spec: a stride-2 3x3+1x1 block, a 5x5+3x3+1x1 block with a
trainable identity and negative per-channel scales, a depthwise 3x3+1x1 block with an identity,
and a two-branch ``nn.Linear`` head; ReLUs between blocks. Both nets see the same batches for
``steps`` steps; compared: outputs on a held-out batch and every equivalent weight.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..csla import Branch, CSLABlock, CSLASpec
from ..optim import RepOptAdamW, RepOptSGD
from .core import CheckResult, compare

__all__ = ["csla_pair", "train_pair", "verify_csla_vs_repopt_adamw", "verify_csla_vs_repopt_sgd"]


def csla_pair(
    seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[nn.Sequential, nn.Sequential]:
    """``(imaginary CSLA network, its target network with eq. 14 init)``, both in ``dtype``."""
    gen = torch.Generator().manual_seed(seed)

    def scales(c: int) -> Tensor:  # per-channel, |a| in [0.3, 1.3], random signs
        sign = torch.randint(0, 2, (c,), generator=gen).to(dtype) * 2 - 1
        return sign * (0.3 + torch.rand(c, generator=gen, dtype=dtype))

    torch.manual_seed(seed)
    imaginary = nn.Sequential(
        CSLABlock(
            CSLASpec(3, 8, (Branch(scales(8), 3), Branch(scales(8), 1))), stride=2, dtype=dtype
        ),
        nn.ReLU(),
        CSLABlock(
            CSLASpec(
                8,
                8,
                (Branch(scales(8), 5), Branch(-0.7, 3), Branch(scales(8), 1)),
                kernel_size=5,
                identity=1.0,
            ),
            dtype=dtype,
        ),
        nn.ReLU(),
        CSLABlock(
            CSLASpec(8, 8, (Branch(scales(8), 3), Branch(0.5, 1)), groups=8, identity=scales(8)),
            dtype=dtype,
        ),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        CSLABlock(CSLASpec(8, 5, (Branch(scales(5)), Branch(-1.3)), kernel_size=None), dtype=dtype),
    )
    target = nn.Sequential(*[m.to_target() if isinstance(m, CSLABlock) else m for m in imaginary])
    return imaginary, target


def train_pair(
    imaginary: nn.Sequential,
    target: nn.Sequential,
    reference_opt: torch.optim.Optimizer,
    repopt: torch.optim.Optimizer,
    steps: int = 20,
    seed: int = 1,
    batch: int = 2,
    size: int = 8,
) -> list[tuple[Tensor, Tensor]]:
    """Train both on the same random regression batches; return ``(candidate, reference)`` pairs:
    held-out outputs and each layer's equivalent weight."""
    gen = torch.Generator().manual_seed(seed)
    dtype = next(target.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(batch, 3, size, size, generator=gen, dtype=dtype)
        y = torch.randn(batch, 5, generator=gen, dtype=dtype)
        for net, opt in ((imaginary, reference_opt), (target, repopt)):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y, reduction="sum").backward()
            opt.step()
    x = torch.randn(4, 3, size, size, generator=gen, dtype=dtype)
    with torch.no_grad():
        pairs = [(target(x), imaginary(x))]
        pairs += [
            (t.weight, m.equivalent_weight())
            for t, m in zip(target, imaginary)
            if isinstance(m, CSLABlock)
        ]
    return pairs


def verify_csla_vs_repopt_sgd() -> CheckResult:
    """SGD (momentum 0.9, weight decay, nesterov on and off), 20 steps; tolerance 1e-10."""
    pairs = []
    for nesterov in (False, True):
        imaginary, target = csla_pair()
        kw = dict(lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=1e-2)
        pairs += train_pair(
            imaginary,
            target,
            torch.optim.SGD(imaginary.parameters(), **kw),
            RepOptSGD(target, **kw),
        )
    return compare(pairs, 1e-10)


def verify_csla_vs_repopt_adamw() -> CheckResult:
    """AdamW (weight decay on), 20 steps; tolerance 1e-6.

    Equal only up to Adam's ``eps``: an element whose gradient is comparable to ``eps / |a_i|``
    is normalised differently in the block and in the target, so this check uses 16x16 inputs,
    where every tap of the 5x5 kernels gets a gradient far above ``eps``.
    """
    imaginary, target = csla_pair()
    kw = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    pairs = train_pair(
        imaginary,
        target,
        torch.optim.AdamW(imaginary.parameters(), **kw),
        RepOptAdamW(target, **kw),
        batch=4,
        size=16,
    )
    return compare(pairs, 1e-6)
