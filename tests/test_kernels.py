"""Each kernel identity against the modules it replaces, float64, random shapes (hypothesis)."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from reparam.kernels import Kernel, add_branches, conv_macs, fold_bn, identity_kernel, pad_kernel
from reparam.testing import randomize_batchnorm_, rel_err

DT = torch.float64
TOL = 1e-10


@st.composite
def conv_geometry(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    depthwise = draw(st.booleans())
    in_per_group = 1 if depthwise else draw(st.integers(1, 3))
    out_per_group = draw(st.integers(1, 3))
    return dict(
        in_channels=groups * in_per_group,
        out_channels=groups * out_per_group * (1 if not depthwise else 1),
        groups=groups,
        kernel_size=draw(st.sampled_from([1, 3, 5])),
        stride=draw(st.sampled_from([1, 2])),
        size=draw(st.integers(5, 11)),
        batch=draw(st.integers(1, 3)),
    )


@settings(max_examples=40, deadline=None)
@given(
    g=conv_geometry(),
    eps=st.sampled_from([1e-5, 1e-3, 0.1]),
    conv_bias=st.booleans(),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fold_bn_matches_conv_then_bn(g, eps, conv_bias, affine, seed):
    gen = torch.Generator().manual_seed(seed)
    k = g["kernel_size"]
    conv = nn.Conv2d(
        g["in_channels"],
        g["out_channels"],
        k,
        g["stride"],
        k // 2,
        groups=g["groups"],
        bias=conv_bias,
    ).to(DT)
    bn = nn.BatchNorm2d(g["out_channels"], eps=eps, affine=affine).to(DT)
    randomize_batchnorm_(bn, gen).eval()
    x = torch.randn(g["batch"], g["in_channels"], g["size"], g["size"], dtype=DT, generator=gen)
    folded = fold_bn(conv.weight, bn, conv.bias)
    fused = F.conv2d(x, folded.weight, folded.bias, g["stride"], k // 2, groups=g["groups"])
    with torch.no_grad():
        assert rel_err(fused, bn(conv(x))) <= TOL


@settings(max_examples=40, deadline=None)
@given(g=conv_geometry(), grow=st.sampled_from([0, 1, 2]), seed=st.integers(0, 2**16))
def test_pad_kernel_is_the_same_conv(g, grow, seed):
    gen = torch.Generator().manual_seed(seed)
    k, target = g["kernel_size"], g["kernel_size"] + 2 * grow
    w = torch.randn(
        g["out_channels"], g["in_channels"] // g["groups"], k, k, dtype=DT, generator=gen
    )
    x = torch.randn(g["batch"], g["in_channels"], g["size"], g["size"], dtype=DT, generator=gen)
    small = F.conv2d(x, w, None, g["stride"], k // 2, groups=g["groups"])
    big = F.conv2d(x, pad_kernel(w, target), None, g["stride"], target // 2, groups=g["groups"])
    assert big.shape == small.shape
    assert rel_err(big, small) <= TOL


def test_pad_kernel_rejects_impossible_sizes():
    w = torch.zeros(2, 2, 3, 3)
    for bad in (1, 4):
        try:
            pad_kernel(w, bad)
        except ValueError as err:
            assert "3x3" in str(err)
        else:
            raise AssertionError(f"pad_kernel accepted size {bad}")


@settings(max_examples=30, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 4]),
    per_group=st.integers(1, 4),
    k=st.sampled_from([1, 3, 5]),
    size=st.integers(3, 9),
    seed=st.integers(0, 2**16),
)
def test_identity_kernel_is_identity_incl_depthwise(groups, per_group, k, size, seed):
    channels = groups * per_group
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, size, size, dtype=DT, generator=gen)
    kernel = identity_kernel(channels, k, groups, dtype=DT)
    assert kernel.shape == (channels, per_group, k, k)
    assert torch.equal(F.conv2d(x, kernel, None, 1, k // 2, groups=groups), x)
    depthwise = identity_kernel(channels, k, channels, dtype=DT)
    assert torch.equal(F.conv2d(x, depthwise, None, 1, k // 2, groups=channels), x)


@settings(max_examples=40, deadline=None)
@given(g=conv_geometry(), n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_add_branches_equals_sum_of_convs(g, n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(g["batch"], g["in_channels"], g["size"], g["size"], dtype=DT, generator=gen)
    branches, reference = [], 0
    for _ in range(n):
        k = int(torch.randint(0, 3, (1,), generator=gen)) * 2 + 1
        w = torch.randn(
            g["out_channels"], g["in_channels"] // g["groups"], k, k, dtype=DT, generator=gen
        )
        b = torch.randn(g["out_channels"], dtype=DT, generator=gen)
        branches.append(Kernel(w, b))
        reference = reference + F.conv2d(x, w, b, g["stride"], k // 2, groups=g["groups"])
    total = add_branches(branches)
    k = total.weight.shape[-1]
    fused = F.conv2d(x, total.weight, total.bias, g["stride"], k // 2, groups=g["groups"])
    assert rel_err(fused, reference) <= TOL


@settings(max_examples=25, deadline=None)
@given(g=conv_geometry())
def test_conv_macs_matches_torch_flop_counter(g):
    k = g["kernel_size"]
    conv = nn.Conv2d(
        g["in_channels"], g["out_channels"], k, g["stride"], k // 2, groups=g["groups"]
    )
    x = torch.randn(1, g["in_channels"], g["size"], g["size"])
    with FlopCounterMode(display=False) as counter:
        out = conv(x)
    assert 2 * conv_macs(
        g["in_channels"], g["out_channels"], k, tuple(out.shape[-2:]), g["groups"]
    ) == (counter.get_total_flops())
