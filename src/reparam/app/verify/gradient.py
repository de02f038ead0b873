"""``reparam verify`` checks: a real multi-branch CSLA network trained with torch's SGD / AdamW
against its single-layer target trained with RepOptSGD / RepOptAdamW (float64).

The network covers the general spec: a stride-2 3x3+1x1 block, a 5x5+3x3+1x1 block with a
trainable identity and negative per-channel scales, a depthwise 3x3+1x1 block with an identity,
and a two-branch ``nn.Linear`` head; ReLUs between blocks. Both nets see the same batches for
``steps`` steps; compared: outputs on a held-out batch and every equivalent weight.

The GhostNet check does the same for a whole RepOpt-GhostNet (BN, SE, shortcuts and all): its
imaginary CSLA model is the Hyper-Search model with ``s`` frozen (``s (.) dw(x) + s_id (.) x``,
``s_id`` trainable), trained with torch's SGD against the target with RepOptSGD.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reparam.app.verify.structural import SMALL_GHOST_ARCH, random_scales_
from reparam.csla import Branch, CSLABlock, CSLASpec
from reparam.models.repopt_ghostnet import (
    GhostArch,
    GhostNet,
    HSGhostCheap,
    repopt_ghostnet,
    repopt_ghostnet_hs,
)
from reparam.optim import RepOptAdamW, RepOptSGD
from reparam.testing import CheckResult, compare, randomize_batchnorm_, train_twins

__all__ = [
    "csla_pair",
    "ghostnet_csla_pair",
    "train_outputs",
    "train_pair",
    "verify_csla_vs_repopt_adamw",
    "verify_csla_vs_repopt_sgd",
    "verify_ghostnet_csla_vs_repopt_sgd",
]


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


def train_outputs(
    imaginary: nn.Module,
    target: nn.Module,
    reference_opt: torch.optim.Optimizer,
    repopt: torch.optim.Optimizer,
    steps: int = 20,
    seed: int = 1,
    batch: int = 2,
    size: int = 8,
) -> tuple[Tensor, Tensor]:
    """:func:`reparam.testing.train_twins` on random regression batches (3-channel images, 5
    outputs, summed MSE); returns ``(target output, imaginary output)`` on a held-out batch of 4
    (the nets stay in train mode)."""
    dtype = next(target.parameters()).dtype

    def regression(gen: torch.Generator, n: int = batch) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, 3, size, size, generator=gen, dtype=dtype)
        return x, torch.randn(n, 5, generator=gen, dtype=dtype)

    return train_twins(
        imaginary,
        target,
        reference_opt,
        repopt,
        steps,
        regression,
        lambda output, y: nn.functional.mse_loss(output, y, reduction="sum"),
        held_out=lambda gen: regression(gen, 4)[0],
        seed=seed,
    )


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
    """:func:`train_outputs`, then ``(candidate, reference)`` pairs: the held-out outputs and
    each layer's equivalent weight."""
    pairs = [train_outputs(imaginary, target, reference_opt, repopt, steps, seed, batch, size)]
    with torch.no_grad():
        pairs += [
            (t.weight, m.equivalent_weight())
            for t, m in zip(target, imaginary)
            if isinstance(m, CSLABlock)
        ]
    return pairs


def ghostnet_csla_pair(
    arch: GhostArch = SMALL_GHOST_ARCH, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[GhostNet, GhostNet]:
    """``(imaginary CSLA GhostNet, its RepOpt-GhostNet target)`` for 5 classes in ``dtype``, no
    dropout: random signed scales and BN parameters; the imaginary model is the Hyper-Search
    model with every ``s`` frozen; the target has the same weights (BN, SE, head, ...), its
    scales as buffers and each cheap conv at the equivalent weight ``s W + s_id I``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    imaginary = repopt_ghostnet_hs(arch, 5, drop_rate=0.0).to(dtype)
    random_scales_(randomize_batchnorm_(imaginary, gen), gen)
    target = repopt_ghostnet(arch, 5, scales="hs_init", reinit=False, drop_rate=0.0).to(dtype)
    target.load_state_dict(imaginary.state_dict())
    with torch.no_grad():
        for name, cheap in imaginary.named_modules():
            if isinstance(cheap, HSGhostCheap):
                cheap.scale_conv.requires_grad_(False)
                target.get_submodule(name).conv.weight.copy_(cheap.equivalent_weight())
    return imaginary, target


def verify_ghostnet_csla_vs_repopt_sgd() -> CheckResult:
    """A whole RepOpt-GhostNet (:data:`SMALL_GHOST_ARCH`) with RepOptSGD vs its CSLA model with
    torch's SGD (momentum 0.9, weight decay, nesterov on and off), 10 steps of batch 4 at 16x16,
    BN in train mode; compared: held-out outputs and every cheap conv's equivalent weight;
    tolerance 1e-10."""
    pairs = []
    for nesterov in (False, True):
        imaginary, target = ghostnet_csla_pair()
        kw = dict(lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=1e-2)
        pairs.append(
            train_outputs(
                imaginary,
                target,
                torch.optim.SGD(imaginary.parameters(), **kw),
                RepOptSGD(target, **kw),
                steps=10,
                batch=4,
                size=16,
            )
        )
        with torch.no_grad():
            pairs += [
                (target.get_submodule(name).conv.weight, cheap.equivalent_weight())
                for name, cheap in imaginary.named_modules()
                if isinstance(cheap, HSGhostCheap)
            ]
    return compare(pairs, 1e-10)


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
