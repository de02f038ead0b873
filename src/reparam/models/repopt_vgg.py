"""RepOpt-VGG (Ding et al. 2022, https://arxiv.org/abs/2205.15242) and its Hyper-Search models.

``repopt_vgg_*``: the target model, a plain VGG trained as ``conv3x3 (no bias) -> BN -> ReLU``.
Each block stores the constant scales of its imaginary CSLA block
``s (.) conv3x3(x) + t (.) conv1x1(x) [+ identity]`` as buffers (``scale_conv``, ``scale_1x1``,
``scale_identity``) and describes it with :meth:`RepOptVGGBlock.csla_specs`, so
``reparam.optim.RepOptSGD(model)`` multiplies the conv's gradient by
``M = s^2`` (+ ``t^2`` at the centre tap, + 1 on the diagonal centre when the block has an
identity). The conv starts at eq. 14, ``W'0 = s W3x3_0 + t pad(W1x1_0) + s_id0 I``: the paper
puts ``s_id0 = 1`` on the identity (``identity_init="one"``, the default here); the official code
(https://github.com/DingXiaoH/RepOptimizers) puts the searched ``scale_identity`` there
(``identity_init="scale"``) and notes that this makes almost no difference. Either is the init of
a trainable identity scale, so the gradient mask is the same (+1 on the diagonal centre).
Deploy form (BN folded): ``Sequential(conv=Conv2d 3x3 + bias, act=ReLU)``, the same keys as
RepVGG and plain VGG.

``repopt_vgg_*_hs``: the Hyper-Search model, ``ReLU(BN(s conv3x3(x) + t conv1x1(x) [+ s_id x]))``
with trainable per-channel scales; ``reparam.models.scales.extract_scales`` reads them out under
the target model's buffer names.

Model kwargs (**contract**; ``reparam train --scales FILE`` is ``model_kwargs={"scales": FILE}``):

- ``scales``: ``None`` (HS-init constants, with a logged notice), a scale file (``.safetensors``
  from ``reparam hypersearch`` or an official ``.pth``), a dict, ``"hs_init"`` or ``"ones"``;
- ``channel_average``: replace every per-channel scale vector by its mean (ablation);
- ``reinit``: eq. 14 init of the conv (default ``True``; ``False`` = the "without new init"
  ablation);
- ``identity_init``: ``"one"`` (default) or ``"scale"``, the identity term of that init. Plain SGD instead of RepOptSGD is the engine's ``grad_mult=False``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from reparam.csla import Branch, CSLASpec, equivalent_weight, init_weight
from reparam.kernels import Kernel, fold_bn
from reparam.models.layers import VGGBlock, conv_from_kernel
from reparam.models.registry import register_model
from reparam.models.scales import build_target
from reparam.models.vggnet import BlockSpec, VGGArch, VGGNet

__all__ = [
    "REPOPT_ARCHS",
    "HSBlock",
    "RepOptVGGBlock",
    "hs_init_scale",
    "repopt_vgg",
    "repopt_vgg_hs",
]

_A, _B, _L = (2, 4, 14, 1), (4, 6, 16, 1), (8, 14, 24, 1)
_B1_WIDTHS, _B2_WIDTHS = (128, 256, 512, 2048), (160, 320, 640, 2560)

# A widths are RepVGG-A's; B1/L1 widths are RepVGG-B1's, B2/L2 RepVGG-B2's
REPOPT_ARCHS: dict[str, VGGArch] = {
    "a0": VGGArch(_A, (48, 96, 192, 1280)),
    "a1": VGGArch(_A, (64, 128, 256, 1280)),
    "a2": VGGArch(_A, (96, 192, 384, 1408)),
    "b1": VGGArch(_B, _B1_WIDTHS),
    "b2": VGGArch(_B, _B2_WIDTHS),
    "l1": VGGArch(_L, _B1_WIDTHS),
    "l2": VGGArch(_L, _B2_WIDTHS),
}


def hs_init_scale(spec: BlockSpec) -> float:
    """HS init: 1.0 for the stem and block 0 of a stage, ``sqrt(2 / i)`` for block ``i >= 1``."""
    return 1.0 if spec.index == 0 else math.sqrt(2.0 / spec.index)


def _has_identity(in_channels: int, out_channels: int, stride: int) -> bool:
    return stride == 1 and in_channels == out_channels


class _OwnsScales:
    """A block with per-channel ``scale_conv``, ``scale_1x1`` and, when it has an identity,
    ``scale_identity`` (buffers or parameters); :mod:`reparam.models.scales` reads and writes
    them through :meth:`scale_tensors`."""

    def scale_tensors(self) -> dict[str, Tensor]:
        names = ("scale_conv", "scale_1x1", "scale_identity")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class RepOptVGGBlock(_OwnsScales, VGGBlock):
    """Target block ``ReLU(BN(conv3x3(x)))`` (keys ``conv.conv``, ``conv.bn``) plus the constant
    scales of its imaginary block as buffers; see module docstring."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 1,
        scale: float = 1.0,
    ):
        super().__init__(in_channels, out_channels, stride, groups)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.register_buffer("scale_conv", torch.full((out_channels,), float(scale)))
        self.register_buffer("scale_1x1", torch.full((out_channels,), float(scale)))
        if _has_identity(in_channels, out_channels, stride):
            self.register_buffer("scale_identity", torch.ones(out_channels))
        else:
            self.scale_identity = None
        self.identity_init = "one"

    def csla_spec(self) -> CSLASpec:
        """The imaginary block: ``s`` 3x3, ``t`` 1x1, a trainable identity whose init is 1 or the
        searched ``scale_identity`` (``identity_init``)."""
        identity = None
        if self.scale_identity is not None:
            identity = 1.0 if self.identity_init == "one" else self.scale_identity
        return CSLASpec(
            self.in_channels,
            self.out_channels,
            (Branch(self.scale_conv, 3), Branch(self.scale_1x1, 1)),
            kernel_size=3,
            groups=self.groups,
            identity=identity,
        )

    def csla_specs(self) -> dict[str, CSLASpec]:
        return {"conv.conv.weight": self.csla_spec()}

    @torch.no_grad()
    def reset_csla_init(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise the conv at eq. 14 for the current scales."""
        weight = self.conv.conv.weight
        weight.copy_(
            init_weight(
                self.csla_spec(), dtype=weight.dtype, device=weight.device, generator=generator
            )
        )

    def identity_variance_parts(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        if self.scale_identity is None:
            return None
        return x, self.conv.conv(x)

    def fuse(self) -> nn.Sequential:
        return nn.Sequential(OrderedDict(conv=self.conv.fuse(), act=nn.ReLU()))


class HSBlock(_OwnsScales, nn.Module):
    """Hyper-Search block ``ReLU(BN(s (.) conv3x3(x) + t (.) conv1x1(x) [+ s_id (.) x]))`` with
    trainable per-channel ``s``, ``t``, ``s_id`` (init ``scale``, ``scale``, 1). Deploys like a
    RepOpt-VGG block: ``W = fold_BN(s W3 + t pad(W1) + s_id I)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 1,
        scale: float = 1.0,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.conv3x3 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=False)
        self.conv1x1 = nn.Conv2d(in_channels, out_channels, 1, stride, 0, groups=groups, bias=False)
        self.scale_conv = nn.Parameter(torch.full((out_channels,), float(scale)))
        self.scale_1x1 = nn.Parameter(torch.full((out_channels,), float(scale)))
        if _has_identity(in_channels, out_channels, stride):
            self.scale_identity = nn.Parameter(torch.ones(out_channels))
        else:
            self.scale_identity = None
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def _linear_sum(self, x: Tensor) -> Tensor:
        y = self.scale_conv.view(1, -1, 1, 1) * self.conv3x3(x) + self.scale_1x1.view(
            1, -1, 1, 1
        ) * self.conv1x1(x)
        if self.scale_identity is not None:
            y = y + self.scale_identity.view(1, -1, 1, 1) * x
        return y

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self._linear_sum(x)))

    def identity_variance_parts(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        if self.scale_identity is None:
            return None
        return self.scale_identity.view(1, -1, 1, 1) * x, self._linear_sum(x)

    def kernel(self) -> Kernel:
        identity = None if self.scale_identity is None else self.scale_identity.detach()
        spec = CSLASpec(
            self.in_channels,
            self.out_channels,
            (Branch(self.scale_conv.detach(), 3), Branch(self.scale_1x1.detach(), 1)),
            groups=self.groups,
            identity=identity,
        )
        weights = [self.conv3x3.weight.detach(), self.conv1x1.weight.detach()]
        weight = equivalent_weight(spec, weights)
        return fold_bn(weight, self.bn)

    def fuse(self) -> nn.Sequential:
        return nn.Sequential(
            OrderedDict(conv=conv_from_kernel(self.kernel(), self.conv3x3), act=nn.ReLU())
        )


def _create(arch: str | VGGArch, block: type[nn.Module], num_classes: int, **kwargs: Any) -> VGGNet:
    spec = arch if isinstance(arch, VGGArch) else REPOPT_ARCHS[arch]
    return VGGNet(
        lambda s: block(s.in_channels, s.out_channels, s.stride, s.groups, hs_init_scale(s)),
        spec.depths,
        spec.widths,
        num_classes=num_classes,
        **{"groups_map": spec.groups_map(), **kwargs},
    )


def repopt_vgg(
    arch: str | VGGArch, num_classes: int = 1000, name: str | None = None, **kwargs: Any
) -> VGGNet:
    """RepOpt-VGG target model of ``arch``: a key of :data:`REPOPT_ARCHS`, or a
    :class:`VGGArch` of any size; takes the target kwargs of the module docstring
    (:func:`~reparam.models.scales.build_target`) and :class:`VGGNet`'s. ``name`` is the model a
    scale file must have been searched for (default ``repopt_vgg_<arch>``)."""
    return build_target(
        partial(_create, arch, RepOptVGGBlock, num_classes),
        RepOptVGGBlock,
        name=name or f"repopt_vgg_{arch}",
        init="1.0 for the first block of a stage, sqrt(2/i) after",
        **kwargs,
    )


register_hs = register_model(first_conv=("stem.conv3x3", "stem.conv1x1"))


def repopt_vgg_hs(arch: str | VGGArch, num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """Hyper-Search model for RepOpt-VGG-``arch``: trainable scales, HS init."""
    return _create(arch, HSBlock, num_classes, **kwargs)


@register_model
def repopt_vgg_a0(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-A0 target model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg("a0", num_classes, **kwargs)


@register_hs
def repopt_vgg_a0_hs(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-A0 Hyper-Search model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg_hs("a0", num_classes, **kwargs)


@register_model
def repopt_vgg_a1(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-A1 target model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg("a1", num_classes, **kwargs)


@register_hs
def repopt_vgg_a1_hs(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-A1 Hyper-Search model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg_hs("a1", num_classes, **kwargs)


@register_model
def repopt_vgg_a2(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-A2 target model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg("a2", num_classes, **kwargs)


@register_hs
def repopt_vgg_a2_hs(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-A2 Hyper-Search model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg_hs("a2", num_classes, **kwargs)


@register_model
def repopt_vgg_b1(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-B1 target model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg("b1", num_classes, **kwargs)


@register_hs
def repopt_vgg_b1_hs(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-B1 Hyper-Search model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg_hs("b1", num_classes, **kwargs)


@register_model
def repopt_vgg_b2(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-B2 target model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg("b2", num_classes, **kwargs)


@register_hs
def repopt_vgg_b2_hs(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-B2 Hyper-Search model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg_hs("b2", num_classes, **kwargs)


@register_model
def repopt_vgg_l1(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-L1 target model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg("l1", num_classes, **kwargs)


@register_hs
def repopt_vgg_l1_hs(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-L1 Hyper-Search model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg_hs("l1", num_classes, **kwargs)


@register_model
def repopt_vgg_l2(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-L2 target model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg("l2", num_classes, **kwargs)


@register_hs
def repopt_vgg_l2_hs(num_classes: int = 1000, **kwargs: Any) -> VGGNet:
    """RepOpt-VGG-L2 Hyper-Search model (Ding et al. 2022, https://arxiv.org/abs/2205.15242)."""
    return repopt_vgg_hs("l2", num_classes, **kwargs)
