"""timm's RepVGG state dicts convert to ours: the fused outputs agree, in both forms."""

import timm
import torch
from timm.utils.model import reparameterize_model

import reparam
from reparam.models.convert import convert_state_dict, detect_layout, load_timm_repvgg_state
from reparam.testing import randomize_batchnorm_, rel_err


def test_fused_a0_matches_timm_reparameterized_a0():
    gen = torch.Generator().manual_seed(1)
    theirs = timm.create_model("repvgg_a0", num_classes=10).double()
    randomize_batchnorm_(theirs, gen).eval()
    ours = load_timm_repvgg_state(
        reparam.create_model("repvgg_a0", num_classes=10).double(), theirs.state_dict()
    ).eval()
    x = torch.randn(2, 3, 37, 37, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        unfused = theirs(x)
        ours_fused = reparam.reparameterize(ours)(x)
        theirs_fused = reparameterize_model(theirs)(x)
    assert rel_err(ours_fused, theirs_fused) <= 1e-10
    assert rel_err(ours_fused, unfused) <= 1e-10


def test_timm_layouts_are_detected_and_the_deploy_form_converts():
    gen = torch.Generator().manual_seed(2)
    theirs = randomize_batchnorm_(timm.create_model("repvgg_a0", num_classes=10), gen).eval()
    assert detect_layout(theirs.state_dict(), "repvgg_a0").name == "timm-repvgg"
    deployed = reparameterize_model(theirs)
    assert detect_layout(deployed.state_dict(), "vgg_a0").name == "timm-repvgg-deploy"
    ours = reparam.reparameterize(reparam.create_model("vgg_a0", num_classes=10).eval())
    ours.load_state_dict(convert_state_dict(deployed.state_dict(), ours, "timm-repvgg-deploy"))
    x = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) <= 1e-5
