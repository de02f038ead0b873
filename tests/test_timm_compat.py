"""Our fused RepVGG-A0 equals timm's own reparameterized repvgg_a0 given the same weights."""

import timm
import torch
from timm.utils.model import reparameterize_model

import reparam
from reparam.models.timm_compat import load_timm_repvgg_state
from reparam.verify import randomize_batchnorm_, rel_err


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
