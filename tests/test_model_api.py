"""The timm model API on every registered model, checked the way timm's ``tests/test_models.py``
checks timm's own: pretrained cfg and data config, classifier head, feature levels,
``features_only``, ``forward_intermediates``, gradient checkpointing, the meta device, and the
same API on the fused model.

Every model is built on the meta device (shapes only, any size is free); the checks that need
values run on one small model of each fixed-width family (each GhostNet form) and on every
VanillaNet and ResNet-RS at a small width. A star import of every model module works.
"""

from __future__ import annotations

import importlib
import math
import pkgutil

import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.models import group_parameters

import reparam
import reparam.models
from helpers import ONE_PER_FAMILY, slow_except
from reparam.models import TIMM_PREFIX
from reparam.testing import randomize_batchnorm_, rel_err

NUM_CLASSES = 3
BATCH = 2
ALL = reparam.list_models()
# cheap to build and run for real: the smallest of each fixed-width family, every width-scalable
# model at a small width
SMALL_KWARGS = {
    **dict.fromkeys(
        ["repvgg_a0", "vgg_a0", "repopt_vgg_a0", "repopt_vgg_a0_hs", "reducenet20"], {}
    ),
    "reducenet18_imagenet": {},
    **{n: {"width_multiplier": 1 / 128} for n in ALL if n.startswith("vanillanet_")},
    "resnet_rs": {"width": 0.125},
    "resnet_rs_tiny": {},
    # no head dropout: the checkpointing test compares two training-mode forwards
    **dict.fromkeys(
        ["repghostnet_0_5x", "repopt_ghostnet_0_5x", "repopt_ghostnet_0_5x_hs"], {"drop_rate": 0.0}
    ),
}
# adaptive pools give the map sizes of a 224-pixel input whatever the input
IMAGE_SIZE = {"vanillanet_13_x1_5_ada_pool": 224}


def timm_model(name: str, **kwargs):
    return timm.create_model(TIMM_PREFIX + name, num_classes=NUM_CLASSES, **kwargs)


def image_size(name: str) -> int:
    return IMAGE_SIZE.get(name, 32)


def check_maps(maps, infos, size: int) -> None:
    """Channels as ``feature_info`` says, spatial size at most ``ceil(size / reduction) + 1``
    (timm's bound; ``ceil`` exactly for the sizes used here)."""
    assert len(maps) == len(infos)
    for fmap, info in zip(maps, infos):
        assert fmap.shape[:2] == (BATCH, info["num_chs"])
        assert fmap.shape[2] <= math.ceil(size / info["reduction"]) + 1
        assert fmap.shape[3] <= math.ceil(size / info["reduction"]) + 1


@pytest.mark.parametrize("name", slow_except(ALL, ONE_PER_FAMILY))
def test_api_shapes_on_the_meta_device(name):
    with torch.device("meta"):
        model = timm_model(name).eval()
        cfg = model.pretrained_cfg
        size = cfg["input_size"][-1]
        x = torch.empty(BATCH, 3, size, size)

        assert model.default_cfg is cfg and cfg["num_classes"] == 1000
        data = resolve_data_config({}, model=model)
        assert data["input_size"] == cfg["input_size"] and len(data["mean"]) == 3
        assert {"crop_pct", "interpolation", "std"} <= data.keys()
        keys = model.state_dict().keys()
        for param in (cfg["first_conv"], cfg["classifier"]):
            for prefix in (param,) if isinstance(param, str) else param:
                assert f"{prefix}.weight" in keys

        infos = model.feature_info
        assert len(infos) >= 3 and infos[-1]["num_chs"] == model.num_features
        modules = dict(model.named_modules())
        assert all(info["module"] in modules for info in infos)
        assert [i["reduction"] for i in infos] == sorted(i["reduction"] for i in infos)

        final, maps = model.forward_intermediates(x)  # one forward: meta shapes are slow too
        assert final.shape[:2] == (BATCH, model.num_features)
        check_maps(maps, infos, size)
        pooled = model.forward_head(final, pre_logits=True)
        assert pooled.shape == (BATCH, model.head_hidden_size)
        assert model.forward_head(final).shape == (BATCH, NUM_CLASSES)

        groups = group_parameters(model, model.group_matcher())
        assert sorted(n for names in groups.values() for n in names) == sorted(
            n for n, _ in model.named_parameters()
        )
        assert len(group_parameters(model, model.group_matcher(coarse=True))) >= 3

        assert model.get_classifier() is not None
        model.reset_classifier(0)
        assert model.forward_head(final).shape == pooled.shape
        model.reset_classifier(0, "")  # GhostNet: conv_head applies at every position
        assert model.forward_head(final).shape == (BATCH, model.head_hidden_size, *final.shape[2:])
        model.reset_classifier(5, "avg")
        assert model.forward_head(final).shape == (BATCH, 5)

        backbone = timm_model(name, features_only=True)
        assert backbone.feature_info.channels() == [i["num_chs"] for i in infos]
        assert backbone.feature_info.reduction() == [i["reduction"] for i in infos]


@pytest.mark.parametrize("name", slow_except(sorted(SMALL_KWARGS), ONE_PER_FAMILY))
def test_features_only_and_intermediates_match(name):
    levels = len(timm_model(name, **SMALL_KWARGS[name]).feature_info)
    out_indices = (0, levels - 2)  # leaves the last level out: the model is pruned
    size = image_size(name)
    x = torch.randn(BATCH, 3, size, size)
    torch.manual_seed(0)
    model = timm_model(name, **SMALL_KWARGS[name]).eval()
    torch.manual_seed(0)
    backbone = timm_model(name, features_only=True, out_indices=out_indices, **SMALL_KWARGS[name])
    backbone.eval()
    assert backbone.feature_info.out_indices == out_indices
    infos = [model.feature_info[i] for i in out_indices]
    assert backbone.feature_info.get_dicts(["num_chs", "reduction", "module"]) == infos
    with torch.no_grad():
        maps = backbone(x)
        expected = model.forward_intermediates(x, indices=out_indices, intermediates_only=True)
        final, every = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
    for got, want, info in zip(maps, expected, infos):
        assert torch.equal(got, want)
        assert got.shape[1:] == (info["num_chs"], *[math.ceil(size / info["reduction"])] * 2)
    assert torch.equal(every[out_indices[1]], expected[1])


def _saved_tensors(model, x) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """Output, parameter gradients and the number of tensors autograd stored."""
    model.zero_grad()
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    out.square().sum().backward()
    return out, [p.grad.clone() for p in model.parameters() if p.grad is not None], saved


@pytest.mark.parametrize("name", slow_except(sorted(SMALL_KWARGS), ONE_PER_FAMILY))
def test_grad_checkpointing_same_outputs_less_memory(name):
    model = timm_model(name, **SMALL_KWARGS[name]).train()
    x = torch.randn(BATCH, 3, image_size(name), image_size(name))
    out, grads, saved = _saved_tensors(model, x)
    model.set_grad_checkpointing()
    out_ckpt, grads_ckpt, saved_ckpt = _saved_tensors(model, x)
    assert saved_ckpt < saved  # the checkpointed stages stored only their inputs
    torch.testing.assert_close(out_ckpt, out, rtol=0, atol=0)
    assert len(grads_ckpt) == len(grads)
    for got, want in zip(grads_ckpt, grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", slow_except(sorted(SMALL_KWARGS), ONE_PER_FAMILY))
def test_fused_model_keeps_the_api(name):
    gen = torch.Generator().manual_seed(0)
    model = timm_model(name, **SMALL_KWARGS[name]).double()
    model = randomize_batchnorm_(reparam.prepare_for_deploy(model), gen)  # eval, lambda = 1
    fused = reparam.reparameterize(model)
    size = image_size(name)
    x = torch.randn(BATCH, 3, size, size, dtype=torch.float64, generator=gen)
    assert fused.feature_info == model.feature_info
    assert fused.pretrained_cfg == model.pretrained_cfg
    with torch.no_grad():
        final, maps = fused.forward_intermediates(x)
        want_final, want_maps = model.forward_intermediates(x)
        for got, want in zip([final, *maps], [want_final, *want_maps]):
            assert rel_err(got, want) <= 1e-10
        pooled = fused.forward_head(final, pre_logits=True)
        logits = fused.get_classifier()(pooled)
        assert rel_err(logits, model.forward_head(want_final)) <= 1e-10
        fused.reset_classifier(0)
        assert fused.forward_head(final).shape == pooled.shape


def test_reparam_create_model_builds_like_timm():
    """``reparam.create_model`` goes through timm's builder: pretrained cfg, ``features_only``."""
    model = reparam.create_model("vgg_a0", num_classes=NUM_CLASSES)
    assert model.pretrained_cfg["architecture"] == TIMM_PREFIX + "vgg_a0"
    backbone = reparam.create_model("vgg_a0", features_only=True, out_indices=(1, 2, 3, 4))
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    assert timm_model("vgg_a0", in_chans=1).stem.conv.conv.in_channels == 1
    assert reparam.create_model("resnet_rs_tiny", in_channels=1).conv1[0].in_channels == 1
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(TIMM_PREFIX + "vgg_a0", pretrained=True)


@pytest.mark.parametrize("name", ["vanillanet_13_x1_5_ada_pool", "reducenet20"])
def test_a_fused_backbone_gives_the_same_maps(name):
    """``features_only`` models fuse like classifiers (VanillaNet: at lambda = 1)."""
    backbone = timm_model(name, features_only=True, **SMALL_KWARGS[name]).double()
    randomize_batchnorm_(reparam.prepare_for_deploy(backbone), torch.Generator().manual_seed(0))
    fused = reparam.reparameterize(backbone)
    x = torch.randn(BATCH, 3, image_size(name), image_size(name), dtype=torch.float64)
    with torch.no_grad():
        maps, want = fused(x), backbone(x)
    assert fused.feature_info.get_dicts() == backbone.feature_info.get_dicts()
    check_maps(maps, backbone.feature_info.get_dicts(), image_size(name))
    assert max(rel_err(got, ref) for got, ref in zip(maps, want)) <= 1e-10


@pytest.mark.parametrize(
    "module", [m.name for m in pkgutil.iter_modules(reparam.models.__path__, "reparam.models.")]
)
def test_star_import_of_every_model_module(module):
    """timm's ``register_model`` lists each entrypoint in its module's ``__all__``: every name
    listed must be there."""
    namespace: dict[str, object] = {}
    exec(f"from {module} import *", namespace)
    assert set(getattr(importlib.import_module(module), "__all__", [])) <= namespace.keys()
