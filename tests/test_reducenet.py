"""ReduceNet: exact fusion to one 3x3 conv per block, refusal below lambda 1, the all-linear net."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reparam import FusionError, reparameterize
from reparam.app.verify.depth import verify_reducenet_deploy
from reparam.models import create_model, list_models
from reparam.models.annealed import AnnealedActivation, has_annealing, set_lambda
from reparam.models.reducenet import ReduceBlock
from reparam.testing import randomize_batchnorm_, rel_err

DT = torch.float64
TOL = 1e-10


def ready(model, seed=0):
    """float64, random BN statistics, eval mode, lambda = 1."""
    model = model.double()
    randomize_batchnorm_(model, torch.Generator().manual_seed(seed)).eval()
    set_lambda(model, 1.0)
    return model


@settings(max_examples=25, deadline=None)
@given(
    in_ch=st.integers(1, 6),
    out_ch=st.integers(1, 6),
    stride=st.integers(1, 2),
    expansion=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    keep_relu=st.booleans(),
    projection=st.booleans(),
    plain=st.booleans(),
    size=st.integers(3, 12),
    seed=st.integers(0, 2**16),
)
def test_block_fuses_to_one_exact_3x3_conv(
    in_ch, out_ch, stride, expansion, keep_relu, projection, plain, size, seed
):
    torch.manual_seed(seed)
    block = ready(ReduceBlock(in_ch, out_ch, stride, expansion, keep_relu, projection, plain), seed)
    fused = block.fuse()
    conv = fused.conv
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
    assert (conv.stride, conv.padding, conv.in_channels, conv.out_channels) == (
        (stride, stride),
        (1, 1),
        in_ch,
        out_ch,
    )
    assert isinstance(getattr(fused, "act", None), nn.ReLU) == keep_relu
    x = torch.randn(2, in_ch, size, size + 1, dtype=DT)
    with torch.no_grad():
        assert rel_err(fused(x), block(x)) <= TOL


def test_shortcut_rules():
    assert ReduceBlock(8, 8, 1).identity
    assert not ReduceBlock(8, 8, 2).identity and ReduceBlock(8, 8, 2).shortcut is not None
    assert ReduceBlock(8, 16, 1, projection=False).shortcut is None


@pytest.mark.parametrize(
    "name,train_depth,deploy_depth",
    [
        ("reducenet20", 20, 11),
        ("reducenet56", 56, 29),
        ("reducenet18_imagenet", 18, 10),
        ("reducenet34_imagenet", 34, 18),
    ],
)
def test_layouts_and_depths(name, train_depth, deploy_depth):
    assert name in list_models()
    narrow = {"widths": (8, 8, 16, 16), "stem_width": 8} if "imagenet" in name else {}
    model = create_model(name, num_classes=10, **narrow).eval()

    def depth(m):  # weight layers on the main path (projection shortcuts excluded)
        return sum(
            isinstance(x, (nn.Conv2d, nn.Linear))
            for n, x in m.named_modules()
            if "shortcut" not in n
        )

    assert depth(model) == train_depth
    set_lambda(model, 1.0)
    fused = reparameterize(model)
    assert depth(fused) == deploy_depth
    assert not has_annealing(fused)
    assert all(m.kernel_size == (3, 3) for m in fused.modules() if isinstance(m, nn.Conv2d))


def test_whole_model_fuses_exactly_and_keys_match_the_plain_baseline():
    model = ready(create_model("reducenet20", num_classes=10))
    fused = reparameterize(model)
    for size in (16, 17):
        x = torch.randn(2, 3, size, size, dtype=DT)
        with torch.no_grad():
            assert rel_err(fused(x), model(x)) <= TOL
    plain = ready(create_model("reducenet20", num_classes=10, plain=True))
    fused_plain = reparameterize(plain)
    assert fused_plain.state_dict().keys() == fused.state_dict().keys()
    assert [v.shape for v in fused_plain.state_dict().values()] == [
        v.shape for v in fused.state_dict().values()
    ]


def test_fusing_below_lambda_one_or_in_train_mode_is_an_error():
    model = create_model("reducenet20", num_classes=10).eval()
    set_lambda(model, 0.5)
    with pytest.raises(FusionError, match="lambda"):
        reparameterize(model)
    set_lambda(model, 1.0)
    with pytest.raises(FusionError, match="train mode"):
        reparameterize(model.train())
    block = ReduceBlock(4, 4)
    set_lambda(block, 1.0)
    with pytest.raises(FusionError, match="train mode"):
        block.fuse()  # called directly, without reparameterize's checks
    set_lambda(block, 0.0)
    with pytest.raises(FusionError, match="lambda"):
        block.eval().fuse()


def affinity_error(f, shape, seed=0):
    """``max |f(a x + b y) - a f(x) - b f(y)| / max |f|``, ``a + b = 1`` (0 for affine ``f``)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = (torch.randn(4, *shape, dtype=DT, generator=gen) for _ in range(2))
    a = torch.tensor(2.7, dtype=DT)
    with torch.no_grad():
        fx, fy, fz = f(x), f(y), f(a * x + (1 - a) * y)
    return rel_err(fz, a * fx + (1 - a) * fy)


def test_all_linear_network_is_one_affine_map():
    model = ready(create_model("reducenet20", num_classes=10, keep_relu=False))
    assert isinstance(model.stem.act, AnnealedActivation)
    fused = reparameterize(model)
    assert not any(isinstance(m, (nn.ReLU, AnnealedActivation)) for m in fused.modules())
    assert affinity_error(fused, (3, 16, 16)) <= TOL
    set_lambda(model, 0.5)  # still annealing: not affine (the test can fail)
    assert affinity_error(model, (3, 16, 16)) > 1e-3
    kept = reparameterize(ready(create_model("reducenet20", num_classes=10)))
    assert affinity_error(kept, (3, 16, 16)) > 1e-3
    deep_linear = ready(create_model("reducenet20", num_classes=10, plain=True, keep_relu=False))
    assert not has_annealing(deep_linear) and affinity_error(deep_linear, (3, 16, 16)) <= TOL


def test_forward_backward_float32():
    model = create_model("reducenet18_imagenet", num_classes=5, widths=(8, 8, 16, 16), stem_width=8)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_verify_check_passes():
    result = verify_reducenet_deploy()
    assert result.passed and result.dtype == "float64"
    assert result.max_rel_err <= TOL
