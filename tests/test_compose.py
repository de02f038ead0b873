"""``kernels.compose``: sequential convs as one, exact where it says, and the border ring found."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from reparam.kernels import ConvSpec, Kernel, compose, identity_kernel
from reparam.testing import rel_err

DT = torch.float64
TOL = 1e-10


def random_spec(out_ch, in_ch, k, stride=1, padding=0, groups=1, mode="zeros", gen=None):
    weight = torch.randn(out_ch, in_ch // groups, k, k, dtype=DT, generator=gen)
    bias = torch.randn(out_ch, dtype=DT, generator=gen)
    return ConvSpec(Kernel(weight, bias), stride, padding, groups, mode)


@st.composite
def chains(draw):
    k1, k2 = draw(st.sampled_from([1, 2, 3, 4, 5])), draw(st.sampled_from([1, 3, 5]))
    s1, s2 = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    p1, p2 = draw(st.integers(0, k1 // 2)), draw(st.integers(0, k2 // 2))
    grouping = draw(st.sampled_from(["dense", "depthwise", "grouped", "mixed"]))
    c = draw(st.sampled_from([2, 4, 6]))
    if grouping == "dense":
        c_in, c_mid, c_out, g1, g2 = draw(st.integers(1, 4)), c, draw(st.integers(1, 5)), 1, 1
    elif grouping == "depthwise":
        c_in = c_mid = c_out = c
        g1 = g2 = c
    elif grouping == "grouped":
        c_in, c_mid, c_out, g1, g2 = c, 2 * c, c, 2, 2
    else:
        c_in, c_mid, c_out, g1, g2 = c, c, 2 * c, c, 2
    size = draw(st.integers(k1 + 2 * (k2 + 2), 20))  # odd and even sizes
    seed = draw(st.integers(0, 2**16))
    return (k1, s1, p1, g1, c_in, c_mid), (k2, s2, p2, g2, c_out), size, seed


@settings(max_examples=30, deadline=None)
@given(chains())
def test_compose_matches_chain_on_the_reported_region(chain):
    (k1, s1, p1, g1, c_in, c_mid), (k2, s2, p2, g2, c_out), size, seed = chain
    gen = torch.Generator().manual_seed(seed)
    conv1 = random_spec(c_mid, c_in, k1, s1, p1, g1, gen=gen)
    conv2 = random_spec(c_out, c_mid, k2, s2, p2, g2, gen=gen)
    result = compose(conv1, conv2)
    assert result.weight.shape[-1] == k1 + (k2 - 1) * s1
    assert (result.stride, result.padding) == (s1 * s2, p1 + s1 * p2)
    assert result.groups == (g1 if g1 == g2 else 1)
    x = torch.randn(2, c_in, size, size + 1, dtype=DT, generator=gen)
    reference, fused = conv2(conv1(x)), result.spec(x)
    assert fused.shape == reference.shape
    region = result.exact_region
    mask = region.mask(size, size + 1)
    assert mask.shape == reference.shape[-2:]
    assert rel_err(fused[..., mask], reference[..., mask]) <= TOL
    assert region.everywhere == (p2 == 0)
    if not region.everywhere:
        assert region.border == -(-p2 // s2)
        assert not mask[0].any() and not mask[:, 0].any()  # the leading ring
        assert mask[region.border :, region.border :].any()  # and an exact interior
        # the ring is really wrong (conv1's bias leaks into conv2's padding)
        assert (fused - reference)[..., ~mask].abs().amax() > 1e-6


def test_3x3_after_3x3_zero_padding_is_wrong_on_a_one_pixel_ring():
    gen = torch.Generator().manual_seed(0)
    conv1, conv2 = random_spec(4, 3, 3, 1, 1, gen=gen), random_spec(5, 4, 3, 1, 1, gen=gen)
    result = compose(conv1, conv2)
    assert (result.weight.shape[-1], result.padding, result.exact_region.border) == (5, 2, 1)
    assert "interior" in result.exact_region.reason
    x = torch.randn(1, 3, 9, 9, dtype=DT, generator=gen)
    wrong = (result.spec(x) - conv2(conv1(x))).abs().amax(dim=(0, 1)) > 1e-9
    ring = torch.ones(9, 9, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    assert torch.equal(wrong, ring)
    assert torch.equal(result.exact_region.mask(9, 9), ~ring)


def test_valid_convs_after_padding_the_input_once_are_exact():
    gen = torch.Generator().manual_seed(1)
    conv1, conv2 = random_spec(4, 3, 3, 2, 0, gen=gen), random_spec(5, 4, 3, 1, 0, gen=gen)
    padded1 = ConvSpec(conv1.kernel, 2, 1)  # the same chain written as 'pad x by P once'
    result = compose(padded1, ConvSpec(conv2.kernel, 1, 0))
    assert result.exact_region.everywhere and result.padding == 1
    for size in (11, 12):
        x = torch.randn(2, 3, size, size, dtype=DT, generator=gen)
        reference = conv2(conv1(F.pad(x, [1] * 4)))
        assert rel_err(result.spec(x), reference) <= TOL


@pytest.mark.parametrize("k1,k2,s2", [(3, 3, 1), (3, 5, 2), (5, 3, 1), (1, 3, 2)])
def test_circular_padding_at_stride_1_is_exact_everywhere(k1, k2, s2):
    gen = torch.Generator().manual_seed(2)
    conv1 = random_spec(4, 3, k1, 1, k1 // 2, mode="circular", gen=gen)
    conv2 = random_spec(5, 4, k2, s2, k2 // 2, mode="circular", gen=gen)
    result = compose(conv1, conv2)
    assert result.exact_region.everywhere and result.padding_mode == "circular"
    for size in (8, 9):
        x = torch.randn(2, 3, size, size, dtype=DT, generator=gen)
        assert rel_err(result.spec(x), conv2(conv1(x))) <= TOL


def test_circular_with_strided_first_conv_is_interior_only():
    conv1 = random_spec(4, 3, 3, 2, 1, mode="circular")
    conv2 = random_spec(5, 4, 3, 1, 1, mode="circular")
    assert not compose(conv1, conv2).exact_region.everywhere


@pytest.mark.parametrize("s1", [1, 2])
def test_1x1_with_bias_into_kxk_needs_bias_value_padding(s1):
    gen = torch.Generator().manual_seed(3)
    conv1 = random_spec(4, 3, 1, s1, 0, gen=gen)
    conv2 = random_spec(5, 4, 3, 1, 1, gen=gen)
    x = torch.randn(2, 3, 10, 10, dtype=DT, generator=gen)
    plain = compose(conv1, conv2)
    assert not plain.exact_region.everywhere
    assert (plain.spec(x) - conv2(conv1(x))).abs().amax() > 1e-6  # zero padding: ring wrong
    fixed = compose(conv1, conv2, intermediate_padding="bias")
    assert fixed.exact_region.everywhere
    torch.testing.assert_close(fixed.weight, plain.weight, rtol=0, atol=0)
    # DiverseBranchBlock's chain: pad the intermediate with conv1's bias, then a valid kxk conv
    b1 = conv1.kernel.bias[None, :, None, None]
    middle = F.pad(conv1(x) - b1, [1] * 4) + b1
    reference = F.conv2d(middle, *conv2.kernel)
    assert rel_err(fixed.spec(x), reference) <= TOL


def test_identity_after_identity_is_identity_and_result_unpacks():
    dirac3 = ConvSpec(Kernel(identity_kernel(4, 3, dtype=DT), torch.zeros(4, dtype=DT)), 1, 1)
    weight, bias, stride, padding, region = compose(dirac3, dirac3)
    torch.testing.assert_close(weight, identity_kernel(4, 5, dtype=DT), rtol=0, atol=0)
    assert (stride, padding, region.border) == (1, 2, 1) and not bias.any()


def test_depthwise_stays_depthwise_and_chains_compose_further():
    gen = torch.Generator().manual_seed(4)
    convs = [random_spec(6, 6, 3, 1, 0, groups=6, gen=gen) for _ in range(3)]
    two = compose(convs[0], convs[1])
    three = compose(two.spec, convs[2])
    assert three.weight.shape == (6, 1, 7, 7) and three.groups == 6
    x = torch.randn(1, 6, 13, 13, dtype=DT, generator=gen)
    assert rel_err(three.spec(x), convs[2](convs[1](convs[0](x)))) <= TOL


def test_channel_mismatch_is_an_error():
    with pytest.raises(ValueError, match="input channels"):
        compose(random_spec(4, 3, 3), random_spec(5, 6, 1))
    with pytest.raises(ValueError, match="intermediate_padding"):
        compose(random_spec(4, 3, 3), random_spec(5, 4, 1), intermediate_padding="reflect")
