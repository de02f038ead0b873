"""RepGhostNet / RepOpt-GhostNet: the official scale file, grad mults = the official formula,
eq. 14 init, fused == unfused and CSLA == RepOpt over random shapes (float64, hypothesis)."""

import copy
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reparam
from reparam.app.verify.gradient import ghostnet_csla_pair, train_outputs
from reparam.app.verify.structural import SMALL_GHOST_ARCH, random_scales_
from reparam.errors import ScaleError
from reparam.models.repopt_ghostnet import (
    BottleneckSpec,
    GhostArch,
    HSGhostCheap,
    RepGhostCheap,
    RepOptGhostCheap,
    repghostnet,
    repopt_ghostnet,
    repopt_ghostnet_hs,
)
from reparam.models.scales import extract_scales, model_scales, save_scale_file
from reparam.optim import RepOptSGD, grad_mults
from reparam.testing import randomize_batchnorm_, rel_err

DT = torch.float64
OFFICIAL = Path(__file__).parent / "fixtures" / "repopt-scales" / "RepOptGhostNet_0_5x_scales.pth"
BUILDERS = {
    "repghostnet": repghostnet,
    "hs": repopt_ghostnet_hs,
    "repopt": lambda arch, n, **kw: repopt_ghostnet(arch, n, scales="hs_init", **kw),
}


def expected_mult(cheap: RepOptGhostCheap) -> torch.Tensor:
    """The official ``generate_grad_mults``: ``s^2`` on the whole depthwise kernel, + 1 at the
    centre tap (the trainable identity ``s_id``)."""
    mult = (cheap.scale_conv**2).view(-1, 1, 1, 1).expand_as(cheap.conv.weight).clone()
    centre = cheap.conv.kernel_size[0] // 2
    mult[:, 0, centre, centre] += 1
    return mult


def test_official_scales_load_strictly_and_grad_mults_match_the_official_formula():
    official = torch.load(OFFICIAL, map_location="cpu", weights_only=True)
    model = reparam.create_model("repopt_ghostnet_0_5x", num_classes=100, scales=OFFICIAL)
    scales = model_scales(model)
    assert len(scales) == len(official) == 64
    for ours, theirs in (
        ("blocks.0.0.ghost1.cheap_operation.scale_identity", "blocks.0.0.ghost1.fusion_scale"),
        ("blocks.6.3.ghost2.cheap_operation.scale_conv", "blocks.6.3.ghost2.cheap_operation.1"),
    ):
        assert torch.equal(scales[ours], official[f"{theirs}.weight"])
    cheaps = {n: m for n, m in model.named_modules() if isinstance(m, RepOptGhostCheap)}
    masks = grad_mults(model)
    assert set(masks) == {f"{n}.conv.weight" for n in cheaps} and len(masks) == 32
    for name, cheap in cheaps.items():
        assert torch.equal(masks[f"{name}.conv.weight"], expected_mult(cheap)), name
    # the Hyper-Search model reads out exactly the target's keys (the hypersearch hand-over)
    hs = reparam.create_model("repopt_ghostnet_0_5x_hs", num_classes=100)
    assert extract_scales(hs).keys() == scales.keys()


def test_hs_init_counts_runs_across_groups_like_the_official_model():
    """The official file's last ghost2 scales barely moved from their init: ``sqrt(2/(m+1))``
    with ``m = 2n``, ``n`` counting blocks.7.0, 8.0, 8.1, ... as one run."""
    official = torch.load(OFFICIAL, map_location="cpu", weights_only=True)
    hs = model_scales(reparam.create_model("repopt_ghostnet_0_5x_hs", num_classes=100))
    for n, block in enumerate(("7.0", "8.0", "8.1", "8.2", "8.3"), start=1):
        init = hs[f"blocks.{block}.ghost2.cheap_operation.scale_conv"].detach()
        assert torch.allclose(init, torch.full_like(init, math.sqrt(2 / (2 * n + 1))))
        trained = official[f"blocks.{block}.ghost2.cheap_operation.1.weight"]
        assert (trained - init).abs().max() < 1e-5
    assert torch.equal(
        hs["blocks.6.0.ghost1.cheap_operation.scale_identity"].detach(), torch.ones(52)
    )


def test_sizes_match_the_repghost_paper_and_forms_deploy_alike():
    """RepGhostNet 0.5x / 1.0x: 2.3M / 4.1M parameters (https://arxiv.org/abs/2211.06088)."""
    for name, params in (("repghostnet_0_5x", 2.3), ("repghostnet_1_0x", 4.1)):
        fused = reparam.reparameterize(reparam.create_model(name).eval())
        assert round(sum(p.numel() for p in fused.parameters()) / 1e6, 1) == params
    shapes = [
        {
            k: v.shape
            for k, v in reparam.reparameterize(reparam.create_model(name, num_classes=10).eval())
            .state_dict()
            .items()
        }
        for name in ("repghostnet_0_5x", "repopt_ghostnet_0_5x", "repopt_ghostnet_0_5x_hs")
    ]
    assert shapes[0] == shapes[1] == shapes[2]
    assert not any("scale" in k or "bn" in k for k in shapes[0])


def test_timm_style_head():
    model = repopt_ghostnet(SMALL_GHOST_ARCH, 5, scales="hs_init").eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, 8, 8)  # stem and one block of stride 2
    assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
    assert model.get_classifier().out_features == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, model.head_hidden_size) and model.num_classes == 0


def test_timm_levels_and_pretrained_cfg_match_timms_ghostnet():
    """The last group at each reduction (timm's ghostnet taps the first); timm's ghostnet cfg."""
    with torch.device("meta"):
        model = reparam.create_model("repopt_ghostnet_0_5x")
    assert [(i["module"], i["reduction"]) for i in model.feature_info] == [
        ("blocks.0", 2),
        ("blocks.2", 4),
        ("blocks.4", 8),
        ("blocks.6", 16),
        ("blocks.9", 32),
    ]
    cfg = model.pretrained_cfg
    assert (cfg["interpolation"], cfg["crop_pct"], cfg["input_size"]) == (
        "bicubic",
        0.875,
        (3, 224, 224),
    )
    assert model.head_hidden_size == model.conv_head.out_channels == 1280


def test_reinit_is_eq14_and_identity_init_scale_moves_only_the_centre():
    torch.manual_seed(0)
    model = repopt_ghostnet(SMALL_GHOST_ARCH, 5, scales="hs_init", reinit=False)
    random_scales_(model, torch.Generator().manual_seed(1))
    cheap = model.blocks[2][1].ghost2.cheap_operation
    for identity_init in ("one", "scale"):
        cheap.identity_init = identity_init
        cheap.reset_csla_init(generator=torch.Generator().manual_seed(2))
        w0 = torch.empty_like(cheap.conv.weight).uniform_(
            -1 / 3, 1 / 3, generator=torch.Generator().manual_seed(2)
        )
        s_id = 1.0 if identity_init == "one" else cheap.scale_identity
        expected = cheap.scale_conv.view(-1, 1, 1, 1) * w0
        expected[:, 0, 1, 1] += s_id
        assert rel_err(cheap.conv.weight, expected) <= 1e-6
    with pytest.raises(ValueError, match="identity_init"):
        repopt_ghostnet(SMALL_GHOST_ARCH, 5, identity_init="two")


def test_scale_files_round_trip_and_are_checked(tmp_path):
    hs = random_scales_(repopt_ghostnet_hs("0_5x", 10))
    path = tmp_path / "ghost.safetensors"
    save_scale_file(path, extract_scales(hs), model="repopt_ghostnet_0_5x_hs")
    target = reparam.create_model("repopt_ghostnet_0_5x", num_classes=10, scales=path)
    assert all(torch.equal(v, model_scales(hs)[k]) for k, v in model_scales(target).items())
    with pytest.raises(ScaleError, match="not 'repopt_ghostnet_1_0x'"):
        reparam.create_model("repopt_ghostnet_1_0x", scales=path)
    with pytest.raises(ScaleError, match="wrong shape"):
        reparam.create_model("repopt_ghostnet_1_0x", scales=OFFICIAL)


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from([RepGhostCheap, HSGhostCheap, RepOptGhostCheap]),
    channels=st.integers(1, 8),
    kernel_size=st.sampled_from([1, 3, 5]),
    size=st.integers(1, 9),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
def test_cheap_operation_fused_equals_unfused(kind, channels, kernel_size, size, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    cheap = kind(channels, kernel_size=kernel_size).to(DT)
    torch.nn.init.normal_(cheap.conv.weight, generator=gen)
    random_scales_(randomize_batchnorm_(cheap, gen), gen).eval()
    x = torch.randn(batch, channels, size, size, dtype=DT, generator=gen)
    with torch.no_grad():
        assert rel_err(cheap.fuse()(x), cheap(x)) <= 1e-10


bottlenecks = st.builds(
    BottleneckSpec,
    kernel_size=st.sampled_from([3, 5]),
    hidden_channels=st.integers(2, 12),
    out_channels=st.integers(2, 12),
    se_ratio=st.sampled_from([0.0, 0.25]),
    stride=st.sampled_from([1, 2]),
)
archs = st.builds(
    GhostArch,
    width=st.sampled_from([0.5, 1.0]),
    stages=st.lists(
        st.lists(bottlenecks, min_size=1, max_size=2).map(tuple), min_size=1, max_size=3
    ).map(tuple),
    stem_channels=st.integers(4, 8),
    head_channels=st.integers(4, 16),
)


@settings(max_examples=20, deadline=None)
@given(
    form=st.sampled_from(sorted(BUILDERS)),
    arch=archs,
    size=st.integers(5, 20),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
def test_whole_net_fused_equals_unfused(form, arch, size, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    model = BUILDERS[form](arch, 4).to(DT)
    random_scales_(randomize_batchnorm_(model, gen), gen).eval()
    x = torch.randn(batch, 3, size, size, dtype=DT, generator=gen)
    fused = reparam.reparameterize(model)
    with torch.no_grad():
        assert rel_err(fused.forward_features(x), model.forward_features(x)) <= 1e-10
        assert rel_err(fused(x), model(x)) <= 1e-10


def nudged(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every parameter moved to the next float towards +inf (1 ulp)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.copy_(torch.nextafter(p, torch.full_like(p, math.inf)))
    return twin


def cheap_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.equivalent_weight() for n, m in model.named_modules() if isinstance(m, HSGhostCheap)
    }


@settings(max_examples=6, deadline=None)
@given(arch=archs, nesterov=st.booleans(), seed=st.integers(0, 2**31))
def test_repopt_ghostnet_trains_like_its_csla_model(arch, nesterov, seed):
    """The target with RepOptSGD and the HS model with frozen ``s`` (the official CSLA mode)
    with torch's SGD, 3 steps from equal functions (BN in train mode): equal outputs and
    equivalent weights.

    Equal up to rounding: train-mode BN over few values per channel can amplify a rounding
    difference ~100x per step, so the bound is 1e-10 or, when larger, 10x the spread that
    rounding alone causes: the same CSLA model trained from weights 1 ulp apart (a wrong mask
    differs by orders of magnitude more)."""
    imaginary, target = ghostnet_csla_pair(arch, seed)
    twin, nudged_twin = copy.deepcopy(imaginary), nudged(imaginary)
    kw = dict(lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=1e-2)
    run = dict(steps=3, seed=seed, batch=4, size=32)
    got, expected = train_outputs(
        imaginary,
        target,
        torch.optim.SGD(imaginary.parameters(), **kw),
        RepOptSGD(target, **kw),
        **run,
    )
    spread_out, twin_out = train_outputs(
        twin,
        nudged_twin,
        torch.optim.SGD(twin.parameters(), **kw),
        torch.optim.SGD(nudged_twin.parameters(), **kw),
        **run,
    )
    assert rel_err(got, expected) <= max(1e-10, 10 * rel_err(spread_out, twin_out))
    nudged_weights = cheap_weights(nudged_twin)
    for name, weight in cheap_weights(twin).items():
        bound = max(1e-10, 10 * rel_err(nudged_weights[name], weight))
        target_weight = target.get_submodule(name).conv.weight
        equivalent = imaginary.get_submodule(name).equivalent_weight()
        assert rel_err(target_weight, equivalent) <= bound, name


def test_verify_checks_pass():
    from reparam.app.verify.checks import run_checks

    results = run_checks(["ghostnet_deploy", "ghostnet_csla_vs_repopt_sgd"])
    assert all(r["passed"] and r["max_rel_err"] <= 1e-12 for r in results.values()), results
