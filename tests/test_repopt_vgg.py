"""RepOpt-VGG: official scales, grad mults = the paper's formula, eq. 14 init, CSLA equivalence,
errors."""

import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import reparam
from helpers import imaginary_twin, labelled_images, tiny_target
from reparam.csla import CSLABlock
from reparam.errors import ScaleError
from reparam.models.repopt_vgg import RepOptVGGBlock
from reparam.models.scales import model_scales, save_scale_file
from reparam.optim import RepOptSGD, grad_mults
from reparam.testing import rel_err, train_twins

DT = torch.float64
ANCHORS = Path(__file__).parent / "fixtures" / "repopt-scales"  # the official files (MIT)


def expected_mult(block: RepOptVGGBlock) -> torch.Tensor:
    """RepOptimizer paper (https://arxiv.org/abs/2205.15242): M = s^2; centre += t^2; diagonal
    centre += 1 when there is an identity (the trainable identity moves the kernel by 1 * g)."""
    cout, cin = block.out_channels, block.in_channels
    s2, t2 = block.scale_conv**2, block.scale_1x1**2
    mult = s2.view(-1, 1, 1, 1).expand(cout, cin, 3, 3).clone()
    mult[:, :, 1, 1] += t2.view(-1, 1)
    if block.scale_identity is not None:
        index = torch.arange(cout)
        mult[index, index, 1, 1] += 1
    return mult


@pytest.mark.parametrize("arch, n_keys", [("b1", 79), ("b2", 79), ("l1", 139), ("l2", 139)])
def test_official_scales_load_and_grad_mults_match_the_formula(arch, n_keys):
    path = ANCHORS / f"RepOpt-VGG-{arch.upper()}-scales.pth"
    official = torch.load(path, map_location="cpu", weights_only=True)
    model = reparam.create_model(f"repopt_vgg_{arch}", num_classes=10, scales=path, reinit=False)
    scales = model_scales(model)
    assert len(scales) == len(official) == n_keys
    assert torch.equal(scales["stem.scale_conv"], official["stage0.scale_conv.weight"])
    assert torch.equal(
        scales["stages.2.5.scale_identity"], official["stage3.5.scale_identity.weight"]
    )
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, RepOptVGGBlock)}
    masks = grad_mults(model)
    assert set(masks) == {f"{n}.conv.conv.weight" for n in blocks}
    for name, block in blocks.items():
        got = masks[f"{name}.conv.conv.weight"]
        assert torch.equal(got, expected_mult(block)), name


def test_scales_for_another_model_are_refused(tmp_path):
    with pytest.raises(ScaleError, match="wrong shape"):
        reparam.create_model(
            "repopt_vgg_b2", scales=ANCHORS / "RepOpt-VGG-B1-scales.pth", reinit=False
        )
    with pytest.raises(ScaleError, match="missing"):
        reparam.create_model(
            "repopt_vgg_l1", scales=ANCHORS / "RepOpt-VGG-B1-scales.pth", reinit=False
        )
    a0 = reparam.create_model("repopt_vgg_a0", scales="ones", reinit=False)
    path = tmp_path / "a0.safetensors"
    save_scale_file(path, model_scales(a0), model="repopt_vgg_a0")
    with pytest.raises(ScaleError, match="searched for 'repopt_vgg_a0', not 'repopt_vgg_a1'"):
        reparam.create_model("repopt_vgg_a1", scales=path, reinit=False)


def test_scale_key_errors_are_loud_and_name_the_keys():
    scales = {k: v.clone() for k, v in model_scales(tiny_target()).items()}
    with pytest.raises(ScaleError, match="module.*DDP"):
        tiny_target(scales={f"module.{k}": v for k, v in scales.items()})
    broken = dict(scales)
    broken.pop("stem.scale_1x1")
    broken["stages.0.0.scale_conv"] = torch.ones(3)
    broken["stages.1.1.scale_identity"] = torch.full_like(
        scales["stages.1.1.scale_identity"], float("nan")
    )
    with pytest.raises(ScaleError) as err:
        tiny_target(scales=broken)
    message = str(err.value)
    for part in (
        "missing (1): ['stem.scale_1x1']",
        "stages.0.0.scale_conv (3,) != (4,)",
        "NaN/inf (1): ['stages.1.1.scale_identity']",
    ):
        assert part in message
    with pytest.raises(ScaleError, match="not found"):
        tiny_target(scales="/nonexistent/scales.safetensors")
    with pytest.raises(ValueError, match="scales must be"):
        tiny_target(scales=3.0)


def test_default_scales_are_the_hs_init_with_a_notice(caplog):
    with caplog.at_level(logging.INFO, logger="reparam.models.scales"):
        model = reparam.create_model("repopt_vgg_a0", num_classes=10)
    assert "Hyper-Search init" in caplog.text
    scales = model_scales(model)
    assert torch.equal(scales["stem.scale_conv"], torch.ones(48))
    assert torch.equal(scales["stages.0.0.scale_1x1"], torch.ones(48))
    assert torch.allclose(scales["stages.2.3.scale_conv"], torch.full((192,), math.sqrt(2 / 3)))
    assert torch.equal(scales["stages.2.3.scale_identity"], torch.ones(192))
    assert "stages.2.0.scale_identity" not in scales


def test_ablation_scale_modes():
    ones = model_scales(tiny_target(scales="ones"))
    assert all(torch.equal(v, torch.ones_like(v)) for v in ones.values())
    gen = torch.Generator().manual_seed(0)
    base = model_scales(tiny_target())
    random = {k: torch.randn(v.shape, generator=gen) for k, v in base.items()}
    averaged = model_scales(tiny_target(scales=random, channel_average=True))
    for key, value in averaged.items():
        assert torch.allclose(value, torch.full_like(value, random[key].mean().item()))


def test_reinit_is_eq14_and_can_be_turned_off():
    torch.manual_seed(0)
    plain = tiny_target(reinit=False)
    torch.manual_seed(0)
    reinit = tiny_target()
    block = reinit.stages[1][1]
    gen = torch.Generator().manual_seed(1)
    block.reset_csla_init(generator=gen)
    imaginary = CSLABlock(block.csla_spec(), dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    for branch in imaginary.branches:
        bound = 1 / math.sqrt(math.prod(branch.weight.shape[1:]))
        branch.weight.data.uniform_(-bound, bound, generator=gen)
    assert torch.allclose(block.conv.conv.weight, imaginary.equivalent_weight(), rtol=0, atol=1e-6)
    assert not torch.equal(plain.stages[1][1].conv.conv.weight, block.conv.conv.weight)


@pytest.mark.parametrize("nesterov", [False, True])
def test_repopt_vgg_with_scales_trains_like_its_csla_model(nesterov):
    gen = torch.Generator().manual_seed(0)
    base = model_scales(tiny_target())
    scales = {k: torch.randn(v.shape, generator=gen) for k, v in base.items()}  # signs mixed
    target = tiny_target(scales=scales).to(DT)
    imaginary, blocks = imaginary_twin(target)
    kw = dict(lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=1e-3)
    outputs = train_twins(
        imaginary,
        target,
        torch.optim.SGD(imaginary.parameters(), **kw),
        RepOptSGD(target, **kw),
        steps=5,
        batch=labelled_images(4),
        loss=nn.functional.cross_entropy,
        eval_mode=True,
        generator=gen,  # the one that drew the scales
    )
    assert rel_err(*outputs) <= 1e-10
    for name, csla in blocks.items():
        weight = target.get_submodule(name).conv.conv.weight
        assert rel_err(weight, csla.equivalent_weight()) <= 1e-10, name


def test_fused_repopt_vgg_has_the_plain_vgg_deploy_keys():
    fused = reparam.reparameterize(reparam.create_model("repopt_vgg_a0", num_classes=10).eval())
    plain = reparam.reparameterize(reparam.create_model("vgg_a0", num_classes=10).eval())
    assert fused.state_dict().keys() == plain.state_dict().keys()
    assert not any("scale" in k for k in fused.state_dict())


def test_identity_init_scale_puts_the_searched_identity_scale_on_the_diagonal_centre():
    """``identity_init="scale"`` (the official code's init) differs from the paper's ``"one"``
    by exactly ``s_id - 1`` on each identity block's diagonal centre; the masks are the same."""
    reference = tiny_target()
    scales = {k: 0.5 + torch.rand_like(v) for k, v in model_scales(reference).items()}
    models = {}
    for init in ("one", "scale"):
        torch.manual_seed(3)
        models[init] = tiny_target(scales=scales, identity_init=init)
    one, scale = (dict(models[k].named_modules()) for k in ("one", "scale"))
    checked = 0
    for name, block in one.items():
        if isinstance(block, RepOptVGGBlock) and block.scale_identity is not None:
            difference = scale[name].conv.conv.weight - block.conv.conv.weight
            expected = torch.zeros_like(difference)
            channels = torch.arange(block.out_channels)
            expected[channels, channels, 1, 1] = block.scale_identity - 1
            assert rel_err(difference, expected) <= 1e-6
            checked += 1
    assert checked >= 2
    masks = [grad_mults(models[k]) for k in ("one", "scale")]
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    with pytest.raises(ValueError, match="identity_init"):
        tiny_target(identity_init="two")
