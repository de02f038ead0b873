"""ResNet-RS: structure (SE, ResNet-D, zero-init), timm parity, stochastic depth, scaling."""

import pytest
import timm
import torch
from torch import nn

import reparam
from reparam.models.resnet_rs import (
    RESNET_RS_DEPTHS,
    ResNetRSScale,
    build_resnet_rs,
    scale_resnet_rs,
    stage_drop_path_rates,
)

DT = torch.float64


def test_resnet_rs50_equals_timm_resnetrs50():
    """Same keys, shapes and outputs as timm's resnetrs50 given its weights (width 0.25 on both
    sides to keep the float64 check fast; the builder is the same at every width)."""
    ours = reparam.create_model("resnet_rs", num_classes=5, depth=50, width=0.25).to(DT).eval()
    theirs = (
        timm.create_model("resnetrs50", num_classes=5, channels=(16, 32, 64, 128), stem_width=8)
        .to(DT)
        .eval()
    )
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=DT)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=0)
    full = reparam.create_model("resnet_rs", num_classes=1000)
    assert sum(p.numel() for p in full.parameters()) == 35_691_912  # = timm resnetrs50


def test_structure_se_resnet_d_zero_init():
    model = build_resnet_rs(50)
    stem = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.out_channels) for c in stem] == [
        ((3, 3), 32),
        ((3, 3), 32),
        ((3, 3), 64),
    ]
    pool_conv = model.maxpool[0]
    assert (
        isinstance(pool_conv, nn.Conv2d)
        and pool_conv.stride == (2, 2)
        and pool_conv.kernel_size == (3, 3)
    )
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    for stage in (model.layer2, model.layer3, model.layer4):
        assert isinstance(stage[0].downsample[0], nn.AvgPool2d)  # avg-pool then 1x1 shortcut
    blocks = [b for s in (model.layer1, model.layer2, model.layer3, model.layer4) for b in s]
    assert len(blocks) == sum(RESNET_RS_DEPTHS[50])
    for block in blocks:
        assert torch.all(block.bn3.weight == 0)  # zero-init last BN gamma
        assert block.se.fc1.out_channels * 4 == block.conv3.out_channels  # SE ratio 0.25


def test_stochastic_depth_per_stage_schedule():
    assert stage_drop_path_rates(0.1) == pytest.approx([0.04, 0.06, 0.08, 0.10])
    model = reparam.create_model("resnet_rs_tiny", num_classes=3, drop_path_rate=0.1)
    rates = [
        block.drop_path.drop_prob
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4)
        for block in stage
    ]
    assert rates == pytest.approx([0.04, 0.06, 0.08, 0.10])
    off = reparam.create_model("resnet_rs_tiny", num_classes=3)
    assert all(block.drop_path is None for block in off.layer1)


@pytest.mark.parametrize("kwargs", [{"drop_path_rate": 0.5}, {"drop_rate": 0.5}])
def test_drop_is_random_in_train_and_off_in_eval(kwargs):
    model = reparam.create_model("resnet_rs_tiny", num_classes=4, **kwargs).to(DT)
    nn.init.normal_(model.layer1[0].bn3.weight)  # give residual branches a non-zero output
    for stage in (model.layer2, model.layer3, model.layer4):
        nn.init.normal_(stage[0].bn3.weight)
    x = torch.randn(4, 3, 32, 32, dtype=DT)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    plain = reparam.create_model("resnet_rs_tiny", num_classes=4).to(DT).train()
    assert torch.equal(
        plain(x), plain(x)
    )  # nothing random when off (train-mode BN is deterministic)


def test_tiny_trains_at_32px_and_width_scaling():
    model = reparam.create_model("resnet_rs_tiny", num_classes=10)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    wide = reparam.create_model("resnet_rs", num_classes=10, depth=50, width=1.5)
    assert wide.layer1[0].conv1.out_channels == 96 and wide.fc.in_features == 3072
    with pytest.raises(ValueError, match="depth must be one of"):
        reparam.create_model("resnet_rs", depth=77)


def test_scaling_rules():
    base = ResNetRSScale(50, 1.0, 160)
    long_run = scale_resnet_rs(base, epochs=350)  # long schedule: deeper, resolution as paired
    assert (long_run.depth, long_run.width, long_run.image_size) == (101, 1.0, 192)
    short_run = scale_resnet_rs(base, epochs=10)  # short schedule: wider, same resolution
    assert (short_run.depth, short_run.width, short_run.image_size) == (50, 1.5, 160)
    top = scale_resnet_rs(ResNetRSScale(420, 1.0, 320), epochs=350)
    assert (top.depth, top.width) == (420, 1.5)
    assert long_run.model_kwargs() == {"depth": 101, "width": 1.0}
