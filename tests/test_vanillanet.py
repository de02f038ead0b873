"""VanillaNet 5..13: official configurations, exact deploy form, refusal below lambda 1."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reparam import FusionError, reparameterize
from reparam.app.verify.depth import verify_vanillanet_deploy
from reparam.models import create_model, list_models
from reparam.models.annealed import set_lambda
from reparam.models.vanillanet import (
    VANILLANET_ARCHS,
    SeriesActivation,
    VanillaArch,
    VanillaBlock,
    vanillanet,
)
from reparam.testing import randomize_batchnorm_, rel_err

DT = torch.float64
TOL = 1e-10


def ready(model, seed=0):
    model = model.double()
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():  # away from the tiny official init, so errors would show
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=0.3, generator=gen)
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.3, generator=gen)
    randomize_batchnorm_(model, gen).eval()
    set_lambda(model, 1.0)
    return model


def test_all_depths_registered_with_official_widths():
    assert {f"vanillanet_{d}" for d in range(5, 14)} | {
        "vanillanet_13_x1_5",
        "vanillanet_13_x1_5_ada_pool",
    } == {n for n in list_models() if n.startswith("vanillanet_")}
    assert VANILLANET_ARCHS[5] == VanillaArch((512, 1024, 2048, 4096), (2, 2, 2))
    assert VANILLANET_ARCHS[13].dims == (512, 512, 1024) + (2048,) * 7 + (4096, 4096)
    for depth, arch in VANILLANET_ARCHS.items():
        assert len(arch.strides) == depth - 2 and len(arch.dims) == depth - 1
        assert sum(s == 2 for s in arch.strides) == 3  # stem /4 then /8 = total stride 32
        model = create_model(f"vanillanet_{depth}", num_classes=4, width_multiplier=1 / 128)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize("depth", [5, 9, 13])
def test_fuses_to_depth_layers_at_32px(depth):
    model = ready(create_model(f"vanillanet_{depth}", num_classes=10, width_multiplier=1 / 64))
    model = model.float()
    fused = reparameterize(model)
    main_path = [
        m
        for m in fused.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not (isinstance(m, nn.Conv2d) and m.groups > 1)
    ]  # series activations excluded
    assert len(main_path) == depth
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert fused(x).shape == (2, 10)
        assert rel_err(fused(x), model(x)) < 1e-4  # float32 sanity; exactness: float64 below


@settings(max_examples=20, deadline=None)
@given(
    in_ch=st.integers(1, 6),
    out_ch=st.integers(1, 6),
    stride=st.integers(1, 2),
    act_num=st.integers(0, 3),
    size=st.integers(1, 11),
    seed=st.integers(0, 2**16),
)
def test_block_fuses_exactly(in_ch, out_ch, stride, act_num, size, seed):
    torch.manual_seed(seed)
    block = ready(VanillaBlock(in_ch, out_ch, stride, act_num), seed)
    fused = block.fuse()
    assert fused.conv.kernel_size == (1, 1) and fused.series.conv.groups == out_ch
    x = torch.randn(2, in_ch, size, size + 1, dtype=DT)
    with torch.no_grad():
        assert rel_err(fused(x), block(x)) <= TOL


@pytest.mark.parametrize("depth,stem_stride", [(5, 4), (6, 4), (8, 2)])
def test_whole_model_fuses_exactly_odd_and_even_sizes(depth, stem_stride):
    model = ready(vanillanet(depth, 7, 1 / 64, stem_stride=stem_stride))
    fused = reparameterize(model)
    for size in (32, 37):
        x = torch.randn(2, 3, size, size, dtype=DT)
        with torch.no_grad():
            assert rel_err(fused(x), model(x)) <= TOL


def test_deploy_form_structure():
    fused = reparameterize(ready(vanillanet(5, 10, 1 / 64)))
    stem = fused.stem
    assert stem.conv.kernel_size == (4, 4) and stem.conv.stride == (4, 4)
    assert stem.conv.padding == (0, 0)
    block = fused.stages[0]
    assert list(dict(block.named_children())) == ["conv", "pool", "series"]
    assert isinstance(block.series.act, nn.ReLU) and block.series.conv.kernel_size == (7, 7)
    assert isinstance(fused.head.fc, nn.Linear)
    assert not any(
        isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, SeriesActivation)) for m in fused.modules()
    )


def test_x1_5_ada_pool_matches_the_official_layout_and_fuses_exactly():
    """Widths 1.5x VanillaNet-13's, stem conv4x4/3 padding 1, adaptive pools to 38, 19, 10."""
    wide = create_model("vanillanet_13_x1_5", num_classes=4, width_multiplier=1 / 96)
    assert wide.num_features == 6144 // 96 and wide.stem.conv1.stride == (4, 4)
    model = ready(
        create_model("vanillanet_13_x1_5_ada_pool", num_classes=4, width_multiplier=1 / 96)
    )
    stem = model.stem.conv1
    assert (stem.kernel_size, stem.stride, stem.padding) == ((4, 4), (3, 3), (1, 1))
    pools = [b.pool.output_size for b in model.stages if isinstance(b.pool, nn.AdaptiveMaxPool2d)]
    assert pools == [38, 19, 10]
    x = torch.randn(1, 3, 224, 224, dtype=DT)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        assert [m.shape[-1] for m in maps] == [75, 38, 19, 10]
        assert rel_err(reparameterize(model)(x), model(x)) <= TOL


def test_fusing_below_lambda_one_is_an_error():
    model = vanillanet(5, 10, 1 / 64).eval()
    set_lambda(model, 0.5)  # the official switch_to_deploy would fuse here, 50% wrong
    with pytest.raises(FusionError, match=r"stem\.act.*lambda = 0\.5"):
        reparameterize(model)
    set_lambda(model, 1.0)
    model.head.act.lam.fill_(0.9)
    with pytest.raises(FusionError, match=r"head\.act"):
        reparameterize(model)


def test_not_fusable_in_train_mode():
    block = VanillaBlock(4, 4)
    set_lambda(block, 1.0)
    with pytest.raises(FusionError, match="train mode"):
        block.fuse()


def test_forward_backward_small_input():
    model = create_model("vanillanet_7", num_classes=3, width_multiplier=1 / 64)
    out = model(torch.randn(2, 3, 16, 16))  # 16 / 4 = 4 -> pools 2, 1, 1 (ceil mode)
    out.sum().backward()
    assert out.shape == (2, 3)
    assert all(p.grad is not None for p in model.parameters())


def test_bad_depth():
    with pytest.raises(ValueError, match="depth"):
        vanillanet(4)


def test_verify_check_passes():
    result = verify_vanillanet_deploy()
    assert result.passed and result.max_rel_err <= TOL
