"""CSLA (constant-scale linear addition): the general RepOptimizer "compiler".

A CSLA block sums trainable linear branches, each times a constant scale, with no nonlinearity
or BN inside the sum (Ding et al. 2022, https://arxiv.org/abs/2205.15242):

    Y = sum_i a_i (.) conv_i(X; W_i)  [+ s_id (.) X]

Training it with SGD equals training ONE conv ``W'`` (kernel ``k >= every k_i``) whose gradient
is multiplied by a constant mask (induction on ``dW'/dW_i = a_i``):

- init (paper eq. 14): ``W'0 = sum_i a_i (.) pad(W_i0, k) + s_id0 (.) I``;
- grad mult: ``M = sum_i |a_i|^p (.) pad(1_{k_i}, k)`` plus ``1`` on the Dirac centre when the
  identity scale is trainable (its own SGD step moves ``W'`` by exactly ``1 * g``);
  ``p = 2`` for SGD, ``p = 1`` for AdamW (Adam is scale-invariant, so each branch moves ``W'``
  by ``|a_i|`` times the normalised step; exact only up to Adam's ``eps``).

Scales are scalars or per-output-channel vectors (negative allowed). Branches share stride,
groups and "same" padding; ``kernel_size=None`` describes ``nn.Linear`` branches (``[out, in]``).
Any module can take part: :func:`attach` a spec to a conv / linear layer, or give a module a
``csla_specs()`` method returning ``{parameter name: CSLASpec}``; ``reparam.optim.grad_mults``
finds both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from reparam.kernels import identity_kernel, pad_kernel

__all__ = [
    "Branch",
    "CSLABlock",
    "CSLASpec",
    "attach",
    "equivalent_weight",
    "grad_mult",
    "init_weight",
    "specs_of",
]

Scale = float | Tensor


@dataclass(frozen=True)
class Branch:
    """One imaginary branch: a trainable bias-free conv of ``kernel_size`` (1 for linear) times a
    constant ``scale`` (scalar or ``[out_channels]``)."""

    scale: Scale
    kernel_size: int = 1


@dataclass(frozen=True)
class CSLASpec:
    """An imaginary CSLA block and the single layer that replaces it.

    ``kernel_size`` is the target conv's kernel (``None``: ``nn.Linear``). ``identity`` is the
    init value of a trainable identity scale ``s_id``, or ``None`` for no identity branch; an
    identity needs ``in == out`` and stride 1 (caller's job). A *constant* identity is not a CSLA
    branch: weight decay would shrink it in the target but not in the block (keep it as a real
    residual connection instead).
    """

    in_channels: int
    out_channels: int
    branches: tuple[Branch, ...]
    kernel_size: int | None = 3
    groups: int = 1
    identity: Scale | None = None

    def __post_init__(self) -> None:
        if not self.branches and self.identity is None:
            raise ValueError("CSLASpec needs at least one branch or an identity")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"CSLASpec: channels {self.in_channels}->{self.out_channels} not divisible by "
                f"groups={self.groups}"
            )
        if self.identity is not None and self.in_channels != self.out_channels:
            raise ValueError(
                f"CSLASpec: an identity branch needs in == out channels, got "
                f"{self.in_channels} -> {self.out_channels}"
            )
        if self.kernel_size is None:
            if self.groups != 1 or any(b.kernel_size != 1 for b in self.branches):
                raise ValueError("CSLASpec: linear branches take no groups and kernel_size 1")
            return
        for branch in self.branches:
            k = branch.kernel_size
            if k > self.kernel_size or (self.kernel_size - k) % 2:
                raise ValueError(
                    f"CSLASpec: a {k}x{k} branch cannot be centred in the "
                    f"{self.kernel_size}x{self.kernel_size} target kernel"
                )

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the target layer's weight."""
        if self.kernel_size is None:
            return (self.out_channels, self.in_channels)
        k = self.kernel_size
        return (self.out_channels, self.in_channels // self.groups, k, k)

    def branch_shape(self, branch: Branch) -> tuple[int, ...]:
        """Shape of one imaginary branch's weight."""
        if self.kernel_size is None:
            return (self.out_channels, self.in_channels)
        k = branch.kernel_size
        return (self.out_channels, self.in_channels // self.groups, k, k)


def _per_channel(scale: Scale, spec: CSLASpec, like: Tensor, what: str) -> Tensor:
    """``scale`` as a tensor broadcastable over the target weight (``[C_out, 1, ...]``)."""
    value = torch.as_tensor(scale, dtype=like.dtype, device=like.device)
    if value.dim() == 0:
        value = value.expand(spec.out_channels)
    if value.shape != (spec.out_channels,):
        raise ValueError(
            f"CSLA {what} scale must be a scalar or have shape ({spec.out_channels},), "
            f"got {tuple(value.shape)}"
        )
    if not value.is_meta and not torch.isfinite(value).all():  # meta: no values to check
        raise ValueError(f"CSLA {what} scale contains NaN or inf")
    return value.reshape(-1, *([1] * (len(spec.weight_shape) - 1)))


def _as_vector(scale: Scale, spec: CSLASpec, what: str, dtype: torch.dtype | None) -> Tensor:
    """``scale`` as a ``[C_out]`` tensor of ``dtype`` (default dtype when ``None``)."""
    like = torch.zeros((), dtype=dtype or torch.get_default_dtype())
    return _per_channel(scale, spec, like, what).flatten().clone()


def _identity(spec: CSLASpec, like: Tensor) -> Tensor:
    if spec.kernel_size is None:
        return torch.eye(spec.out_channels, dtype=like.dtype, device=like.device)
    return identity_kernel(
        spec.out_channels, spec.kernel_size, spec.groups, dtype=like.dtype, device=like.device
    )


def _padded(weight: Tensor, spec: CSLASpec) -> Tensor:
    return weight if spec.kernel_size is None else pad_kernel(weight, spec.kernel_size)


def grad_mult(
    spec: CSLASpec,
    power: int = 2,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The gradient mask ``M = sum_i |a_i|^power (.) pad(1_{k_i})`` (+1 on the trainable
    identity's Dirac centre); ``power`` 2 for SGD, 1 for AdamW."""
    per_channel_shape = (spec.out_channels, *([1] * (len(spec.weight_shape) - 1)))
    small = torch.zeros(per_channel_shape, dtype=dtype, device=device)  # [C_out, 1, (k, k)]
    for i, branch in enumerate(spec.branches):
        if spec.kernel_size is None:
            footprint = torch.ones(1, 1, dtype=dtype, device=device)
        else:
            size = branch.kernel_size
            footprint = pad_kernel(
                torch.ones(1, 1, size, size, dtype=dtype, device=device), spec.kernel_size
            )
        small = (
            small
            + _per_channel(branch.scale, spec, small, f"branch {i}").abs() ** power * footprint
        )
    mask = small.expand(spec.weight_shape).contiguous()
    if spec.identity is not None:
        mask += _identity(spec, mask)
    return mask


def equivalent_weight(
    spec: CSLASpec, branch_weights: list[Tensor], identity_scale: Scale | None = None
) -> Tensor:
    """``W' = sum_i a_i (.) pad(W_i) + s_id (.) I``: the single layer equal to the block now.

    ``identity_scale`` defaults to the spec's ``identity`` (its init value).
    """
    if len(branch_weights) != len(spec.branches):
        raise ValueError(f"expected {len(spec.branches)} branch weights, got {len(branch_weights)}")
    if not branch_weights and spec.identity is None:
        raise ValueError("equivalent_weight: nothing to sum")
    like = (
        branch_weights[0]
        if branch_weights
        else torch.as_tensor(
            spec.identity if identity_scale is None else identity_scale, dtype=torch.float32
        )
    )
    weight: Tensor | None = None
    for i, (branch, w) in enumerate(zip(spec.branches, branch_weights)):
        if tuple(w.shape) != spec.branch_shape(branch):
            raise ValueError(
                f"branch {i} weight has shape {tuple(w.shape)}, "
                f"expected {spec.branch_shape(branch)}"
            )
        same_size = spec.kernel_size is None or w.shape[-1] == spec.kernel_size
        scale = _per_channel(branch.scale, spec, w, f"branch {i}")
        term = w if same_size else _padded(w, spec)
        weight = scale * term if weight is None else weight.addcmul_(scale, term)
    if weight is None:
        weight = torch.zeros(spec.weight_shape, dtype=like.dtype, device=like.device)
    if spec.identity is not None:
        scale = spec.identity if identity_scale is None else identity_scale
        weight.addcmul_(_per_channel(scale, spec, weight, "identity"), _identity(spec, weight))
    return weight


def init_weight(
    spec: CSLASpec,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Paper eq. 14: ``W'0 = sum_i a_i (.) pad(W_i0) + s_id0 (.) I`` with each ``W_i0`` freshly
    initialised as its imaginary ``nn.Conv2d`` / ``nn.Linear`` would be (Kaiming-uniform,
    ``a = sqrt 5``)."""
    weights = []
    for branch in spec.branches:
        w = torch.empty(spec.branch_shape(branch), dtype=dtype, device=device)
        fan_in = math.prod(w.shape[1:])
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), ...)
        weights.append(w.uniform_(-bound, bound, generator=generator))
    if not weights:
        return equivalent_weight(spec, [], None).to(dtype=dtype, device=device)
    return equivalent_weight(spec, weights)


def attach(module: nn.Module, spec: CSLASpec, param: str = "weight") -> nn.Module:
    """Declare ``module.<param>`` as the target of the CSLA block ``spec`` (returns ``module``)."""
    target = getattr(module, param, None)
    if not isinstance(target, nn.Parameter):
        raise ValueError(f"attach: {type(module).__name__} has no parameter {param!r}")
    if tuple(target.shape) != spec.weight_shape:
        raise ValueError(
            f"attach: {param} has shape {tuple(target.shape)}, "
            f"the spec describes {spec.weight_shape}"
        )
    specs = dict(getattr(module, "csla_static_specs", {}))
    specs[param] = spec
    module.csla_static_specs = specs
    return module


def specs_of(module: nn.Module) -> dict[str, CSLASpec]:
    """``{local parameter name: spec}`` declared by ``module`` (method ``csla_specs()`` and/or
    :func:`attach`)."""
    specs = dict(getattr(module, "csla_static_specs", {}))
    method = getattr(module, "csla_specs", None)
    if callable(method):
        dynamic = method()
        clash = sorted(set(dynamic) & set(specs))
        if clash:
            raise ValueError(f"{type(module).__name__}: CSLA spec given twice for {clash}")
        specs.update(dynamic)
    return specs


class CSLABlock(nn.Module):
    """The imaginary block itself, built for real (for tests, checks and users' comparisons):
    ``sum_i a_i (.) conv_i(x) [+ s_id (.) x]`` with constant ``a_i`` (buffers), trainable
    branch weights and a trainable identity scale."""

    def __init__(self, spec: CSLASpec, stride: int = 1, dtype: torch.dtype | None = None):
        super().__init__()
        if spec.identity is not None and stride != 1:
            raise ValueError("CSLABlock: an identity branch needs stride 1")
        self.spec, self.stride = spec, stride
        self.branches = nn.ModuleList()
        for i, branch in enumerate(spec.branches):
            if spec.kernel_size is None:
                layer: nn.Module = nn.Linear(
                    spec.in_channels, spec.out_channels, bias=False, dtype=dtype
                )
            else:
                k = branch.kernel_size
                layer = nn.Conv2d(
                    spec.in_channels,
                    spec.out_channels,
                    k,
                    stride,
                    k // 2,
                    groups=spec.groups,
                    bias=False,
                    dtype=dtype,
                )
            self.branches.append(layer)
            self.register_buffer(f"scale{i}", _as_vector(branch.scale, spec, f"branch {i}", dtype))
        if spec.identity is not None:
            self.identity_scale = nn.Parameter(_as_vector(spec.identity, spec, "identity", dtype))
        else:
            self.identity_scale = None

    def _view(self, scale: Tensor) -> Tensor:
        return scale if self.spec.kernel_size is None else scale.reshape(1, -1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = sum(
            self._view(getattr(self, f"scale{i}")) * layer(x)
            for i, layer in enumerate(self.branches)
        )
        if self.identity_scale is not None:
            y = y + self._view(self.identity_scale) * x
        return y

    def current_spec(self) -> CSLASpec:
        """The spec with this block's scale buffers (as they are now: dtype, device, values)."""
        branches = tuple(
            replace(b, scale=getattr(self, f"scale{i}").detach())
            for i, b in enumerate(self.spec.branches)
        )
        identity = None if self.identity_scale is None else self.identity_scale.detach()
        return replace(self.spec, branches=branches, identity=identity)

    def equivalent_weight(self) -> Tensor:
        """The single layer's weight equal to this block now."""
        return equivalent_weight(
            self.current_spec(), [b.weight for b in self.branches], self.identity_scale
        )

    def to_target(self) -> nn.Module:
        """A single ``nn.Conv2d`` / ``nn.Linear`` holding :meth:`equivalent_weight`, with the
        spec attached (so ``RepOptSGD(model)`` trains it like this block)."""
        weight = self.equivalent_weight().detach()
        spec = self.spec
        if spec.kernel_size is None:
            layer: nn.Module = nn.Linear(
                spec.in_channels,
                spec.out_channels,
                bias=False,
                dtype=weight.dtype,
                device=weight.device,
            )
        else:
            k = spec.kernel_size
            layer = nn.Conv2d(
                spec.in_channels,
                spec.out_channels,
                k,
                self.stride,
                k // 2,
                groups=spec.groups,
                bias=False,
                dtype=weight.dtype,
                device=weight.device,
            )
        layer.weight.data.copy_(weight)
        current = self.current_spec()
        branches = tuple(replace(b, scale=b.scale.clone()) for b in current.branches)
        identity = None if current.identity is None else current.identity.clone()
        return attach(layer, replace(current, branches=branches, identity=identity))
