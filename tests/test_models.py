"""Every registered model: forward, backward, fused-equals-unfused (float64), like timm's tests."""

import dataclasses

import pytest
import timm
import torch

import reparam
from helpers import ONE_PER_FAMILY, slow_except
from reparam.errors import FusionError
from reparam.models.repopt_vgg import REPOPT_ARCHS
from reparam.models.repvgg import REPVGG_ARCHS
from reparam.models.vggnet import VGGArch
from reparam.testing import randomize_batchnorm_, rel_err

DT = torch.float64
NUM_CLASSES = 7
# Fusion is exact whatever the width: the wide families are checked at their depths and block
# kinds with narrower layers (full widths cost minutes in float64: up to 128M parameters).
NARROWER = {
    **{f"vanillanet_{d}": {"width_multiplier": 1 / 8} for d in range(5, 14)},
    "vanillanet_13_x1_5": {"width_multiplier": 1 / 8},
    "vanillanet_13_x1_5_ada_pool": {"width_multiplier": 1 / 8},
}


def _narrow(arch: VGGArch, factor: int) -> VGGArch:
    """``arch`` with every width divided by ``factor`` (at least 16: grouped and SE layers)."""
    return dataclasses.replace(arch, widths=tuple(max(16, w // factor) for w in arch.widths))


def _narrow_vgg_family(name: str, monkeypatch) -> None:
    """RepVGG / plain VGG / RepOpt-VGG (and its HS model) archs from B1 up at a quarter of their
    widths (RepVGG-D2se at an eighth), patched into the arch table the model is built from."""
    for prefix, table in (
        ("repvgg_", REPVGG_ARCHS),
        ("vgg_", REPVGG_ARCHS),
        ("repopt_vgg_", REPOPT_ARCHS),
    ):
        key = name.removeprefix(prefix).removesuffix("_hs")
        if name.startswith(prefix) and key in table and key[0] in "bdl":
            monkeypatch.setitem(table, key, _narrow(table[key], 8 if key == "d2se" else 4))
            return


# the fast subset: one model of each family, and the grouped and SE blocks of RepVGG
@pytest.mark.parametrize(
    "name", slow_except(reparam.list_models(), (*ONE_PER_FAMILY, "repvgg_b1g2", "repvgg_d2se"))
)
def test_forward_backward_fused(name, monkeypatch):
    _narrow_vgg_family(name, monkeypatch)
    gen = torch.Generator().manual_seed(0)
    model = reparam.create_model(name, num_classes=NUM_CLASSES, **NARROWER.get(name, {})).to(DT)
    x = torch.randn(2, 3, 32, 32, dtype=DT, generator=gen)

    out = model.train()(x)
    assert out.shape == (2, NUM_CLASSES)
    out.sum().backward()
    with_grad = [n for n, p in model.named_parameters() if p.requires_grad]
    assert with_grad and all(model.get_parameter(n).grad is not None for n in with_grad)

    # the state training ends in (eval; annealed models fuse only at lambda = 1)
    randomize_batchnorm_(reparam.prepare_for_deploy(model), gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = reparam.reparameterize(model)
    assert not fused.training
    with torch.no_grad():
        expected, got = model(x), fused(x)
    assert rel_err(got, expected) <= 1e-10
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", [n for n in reparam.list_models() if n.startswith("repvgg_")][:2])
def test_timm_registration_uses_prefix(name):
    model = timm.create_model(reparam.models.TIMM_PREFIX + name, num_classes=3)
    assert type(model) is type(reparam.create_model(name, num_classes=3))
    assert timm.is_model(name)  # timm's own repvgg_* stays timm's
    assert type(timm.create_model(name, num_classes=3)) is not type(model)


def test_fusing_a_train_mode_model_is_refused_unless_asked():
    model = reparam.create_model("repvgg_a0", num_classes=NUM_CLASSES)
    with pytest.raises(FusionError, match="train mode"):
        reparam.reparameterize(model)
    assert model.training  # untouched
    fused = reparam.reparameterize(model, switch_to_eval=True)
    assert not fused.training and model.training


def test_deploy_structures_line_up():
    """RepVGG and plain VGG of one arch fuse to identical structures (same keys and shapes)."""
    fused = [
        reparam.reparameterize(reparam.create_model(n, num_classes=5).eval())
        for n in ("repvgg_a0", "vgg_a0")
    ]
    shapes = [{k: v.shape for k, v in f.state_dict().items()} for f in fused]
    assert shapes[0] == shapes[1]


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="repvgg_a0"):
        reparam.create_model("repvgg_z9")


def test_repvgg_a0_size_matches_paper():
    """RepVGG-A0 deploy form: 8.31M params at 1000 classes (paper: 8.30M)."""
    fused = reparam.reparameterize(reparam.create_model("repvgg_a0").eval())
    assert round(sum(p.numel() for p in fused.parameters()) / 1e6, 2) == 8.31
