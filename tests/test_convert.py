"""Official checkpoints convert to reparam models that compute the same function.

Each official network is rebuilt here, minimally and independently, from the structure of the
published code (module names, branch layout, forward pass): RepVGG (github.com/DingXiaoH/RepVGG,
repvgg.py), RepOpt-VGG (github.com/DingXiaoH/RepOptimizers, repoptvgg_model.py) and VanillaNet
(github.com/huawei-noah/VanillaNet, models/vanillanet.py). Every variant's key mapping is checked
on the meta device; the forward pass of small ones in float32 with random BN statistics.
"""

import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reparam
from reparam.app.cli import main
from reparam.errors import CheckpointError, UserError
from reparam.models.annealed import set_lambda
from reparam.models.convert import (
    convert_checkpoint,
    convert_state_dict,
    detect_layout,
    read_checkpoint,
    target_model,
)
from reparam.models.repopt_vgg import repopt_vgg, repopt_vgg_hs
from reparam.models.repvgg import REPVGG_ARCHS, repvgg
from reparam.models.scales import model_scales
from reparam.models.vggnet import VGGArch
from reparam.testing import randomize_batchnorm_, rel_err

TOLERANCE = 1e-5  # float32, relative
A, B, L = (2, 4, 14, 1), (4, 6, 16, 1), (8, 14, 24, 1)
# repvgg.py: create_RepVGG_<name> -> (num_blocks, width_multiplier, groups of g2_map / g4_map)
REPVGG_VARIANTS = {
    "a0": (A, (0.75, 0.75, 0.75, 2.5), 1),
    "a1": (A, (1, 1, 1, 2.5), 1),
    "a2": (A, (1.5, 1.5, 1.5, 2.75), 1),
    "b0": (B, (1, 1, 1, 2.5), 1),
    "b1": (B, (2, 2, 2, 4), 1),
    "b1g2": (B, (2, 2, 2, 4), 2),
    "b1g4": (B, (2, 2, 2, 4), 4),
    "b2": (B, (2.5, 2.5, 2.5, 5), 1),
    "b2g2": (B, (2.5, 2.5, 2.5, 5), 2),
    "b2g4": (B, (2.5, 2.5, 2.5, 5), 4),
    "b3": (B, (3, 3, 3, 5), 1),
    "b3g2": (B, (3, 3, 3, 5), 2),
    "b3g4": (B, (3, 3, 3, 5), 4),
}
# main_repopt.py: RepOpt-VGG-<name> -> (num_blocks, width_multiplier)
REPOPT_VARIANTS = {
    "b1": (B, (2, 2, 2, 4)),
    "b2": (B, (2.5, 2.5, 2.5, 5)),
    "l1": (L, (2, 2, 2, 4)),
    "l2": (L, (2.5, 2.5, 2.5, 5)),
}
_S, _M, _L, _XL = 512, 1024, 2048, 4096
_13 = (_S, _S, _M) + (_L,) * 7 + (_XL, _XL)
_13_STRIDES = (1, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1)
# vanillanet.py: vanillanet_<name> -> (dims, strides)
VANILLANET_VARIANTS = {
    "5": ((_S, _M, _L, _XL), (2, 2, 2)),
    "6": ((_S, _M, _L, _XL, _XL), (2, 2, 2, 1)),
    "7": ((_S, _S, _M, _L, _XL, _XL), (1, 2, 2, 2, 1)),
    "8": ((_S, _S, _M, _L, _L, _XL, _XL), (1, 2, 2, 1, 2, 1)),
    "9": ((_S, _S, _M) + (_L,) * 3 + (_XL, _XL), (1, 2, 2, 1, 1, 2, 1)),
    "10": ((_S, _S, _M) + (_L,) * 4 + (_XL, _XL), (1, 2, 2, 1, 1, 1, 2, 1)),
    "11": ((_S, _S, _M) + (_L,) * 5 + (_XL, _XL), (1, 2, 2, 1, 1, 1, 1, 2, 1)),
    "12": ((_S, _S, _M) + (_L,) * 6 + (_XL, _XL), (1, 2, 2, 1, 1, 1, 1, 1, 2, 1)),
    "13": (_13, _13_STRIDES),
    "13_x1_5": (tuple(d * 3 // 2 for d in _13), _13_STRIDES),
    "13_x1_5_ada_pool": (tuple(d * 3 // 2 for d in _13), _13_STRIDES),
}


# --- the official structures -------------------------------------------------------------------


def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    result = nn.Sequential()
    result.add_module("conv", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False))
    result.add_module("bn", nn.BatchNorm2d(cout))
    return result


class OfficialRepVGGBlock(nn.Module):
    """``rbr_dense`` + ``rbr_1x1`` + ``rbr_identity`` (a BN) then ReLU; deploy: ``rbr_reparam``."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, deploy: bool):
        super().__init__()
        if deploy:
            self.rbr_reparam = nn.Conv2d(cin, cout, 3, stride, 1, groups=groups)
        else:
            self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
            self.rbr_dense = conv_bn(cin, cout, 3, stride, groups)
            self.rbr_1x1 = conv_bn(cin, cout, 1, stride, groups)

    def forward(self, x):
        if hasattr(self, "rbr_reparam"):
            return F.relu(self.rbr_reparam(x))
        identity = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return F.relu(self.rbr_dense(x) + self.rbr_1x1(x) + identity)


class RealVGGBlock(nn.Module):
    """RepOpt-VGG target block: ``ReLU(bn(conv(x)))``, conv without bias."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, deploy: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class ScaleLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)


class LinearAddBlock(nn.Module):
    """RepOpt-VGG Hyper-Search block: ``ReLU(bn(s conv(x) + t conv_1x1(x) [+ s_id x]))``."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, deploy: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.scale_conv = ScaleLayer(cout)
        self.conv_1x1 = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.scale_1x1 = ScaleLayer(cout)
        if cin == cout and stride == 1:
            self.scale_identity = ScaleLayer(cout)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = self.scale_conv(self.conv(x)) + self.scale_1x1(self.conv_1x1(x))
        if hasattr(self, "scale_identity"):
            y = y + self.scale_identity(x)
        return F.relu(self.bn(y))


class OfficialVGG(nn.Module):
    """RepVGG's ``RepVGG`` (blocks in ``nn.ModuleList`` stages) and RepOptimizers' ``RepOptVGG``
    (``nn.Sequential``): ``stage0`` .. ``stage4``, global pool, ``linear``; ``groups`` on the
    layers of ``optional_groupwise_layers`` (2, 4, ..., 26)."""

    def __init__(self, depths, multipliers, block, groups=1, num_classes=10, deploy=False):
        super().__init__()
        widths = [int(base * m) for base, m in zip((64, 128, 256, 512), multipliers)]
        planes, layer = min(64, widths[0]), 1
        self.stage0 = block(3, planes, 2, 1, deploy)
        for stage, (depth, width) in enumerate(zip(depths, widths), start=1):
            blocks = []
            for index in range(depth):
                g = groups if layer in range(2, 27, 2) else 1
                blocks.append(block(planes, width, 2 if index == 0 else 1, g, deploy))
                planes, layer = width, layer + 1
            setattr(self, f"stage{stage}", nn.ModuleList(blocks))
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x):
        x = self.stage0(x)
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            for block in stage:
                x = block(x)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SeriesActivation(nn.ReLU):
    """VanillaNet's ``activation``: ``weight`` (depthwise 7x7) and ``bn``; deploy: ``bias``."""

    def __init__(self, dim: int, deploy: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, 1, 7, 7) * 0.1)
        if deploy:
            self.bias = nn.Parameter(torch.randn(dim) * 0.1)
        else:
            self.bias = None
            self.bn = nn.BatchNorm2d(dim, eps=1e-6)

    def forward(self, x):
        y = F.conv2d(super().forward(x), self.weight, self.bias, padding=3, groups=x.shape[1])
        return y if self.bias is not None else self.bn(y)


class VanillaBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, stride: int, deploy: bool):
        super().__init__()
        self.act_learn = 1.0
        if deploy:
            self.conv = nn.Conv2d(dim, dim_out, 1)
        else:
            self.conv1 = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim, eps=1e-6))
            self.conv2 = nn.Sequential(
                nn.Conv2d(dim, dim_out, 1), nn.BatchNorm2d(dim_out, eps=1e-6)
            )
        self.pool = nn.Identity() if stride == 1 else nn.MaxPool2d(stride)
        self.act = SeriesActivation(dim_out, deploy)

    def forward(self, x):
        if hasattr(self, "conv"):
            x = self.conv(x)
        else:
            x = self.conv2(F.leaky_relu(self.conv1(x), self.act_learn))
        return self.act(self.pool(x))


class OfficialVanillaNet(nn.Module):
    def __init__(self, dims, strides, num_classes=10, deploy=False):
        super().__init__()
        self.act_learn = 1.0
        if deploy:
            self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), SeriesActivation(dims[0], True))
        else:
            self.stem1 = nn.Sequential(
                nn.Conv2d(3, dims[0], 4, 4), nn.BatchNorm2d(dims[0], eps=1e-6)
            )
            self.stem2 = nn.Sequential(
                nn.Conv2d(dims[0], dims[0], 1),
                nn.BatchNorm2d(dims[0], eps=1e-6),
                SeriesActivation(dims[0], False),
            )
        self.stages = nn.ModuleList(
            VanillaBlock(dims[i], dims[i + 1], s, deploy) for i, s in enumerate(strides)
        )
        head = [nn.AdaptiveAvgPool2d(1), nn.Dropout(0.0), nn.Conv2d(dims[-1], num_classes, 1)]
        if deploy:
            self.cls = nn.Sequential(*head)
        else:
            self.cls1 = nn.Sequential(*head, nn.BatchNorm2d(num_classes, eps=1e-6))
            self.cls2 = nn.Sequential(nn.Conv2d(num_classes, num_classes, 1))

    def change_act(self, value: float) -> None:
        self.act_learn = value
        for block in self.stages:
            block.act_learn = value

    def forward(self, x):
        if hasattr(self, "stem"):
            x = self.stem(x)
        else:
            x = self.stem2(F.leaky_relu(self.stem1(x), self.act_learn))
        for block in self.stages:
            x = block(x)
        if hasattr(self, "cls"):
            return self.cls(x).flatten(1)
        return self.cls2(F.leaky_relu(self.cls1(x), self.act_learn)).flatten(1)


# --- helpers -------------------------------------------------------------------------------------


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights (scaled so deep nets neither vanish nor explode) and BN statistics, eval."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif "scale" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return randomize_batchnorm_(model, gen).eval()


def check_same_function(official: nn.Module, ours: nn.Module, layout: str, size: int = 32):
    """Load ``official``'s converted weights into ``ours``; return the relative error."""
    ours.load_state_dict(convert_state_dict(official.state_dict(), ours, layout), strict=True)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        error = rel_err(ours.eval()(x), official(x))
    assert error <= TOLERANCE, error
    return error


def fused(name: str, **kwargs) -> nn.Module:
    return reparam.reparameterize(reparam.prepare_for_deploy(reparam.create_model(name, **kwargs)))


def assert_converts(official: nn.Module, ours: nn.Module, layout: str) -> None:
    converted = convert_state_dict(official.state_dict(), ours, layout)
    target = ours.state_dict()
    assert converted.keys() == target.keys()
    assert all(converted[k].shape == target[k].shape for k in target)


# --- RepVGG ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(REPVGG_VARIANTS))
def test_every_repvgg_variant_maps_in_both_forms(variant):
    depths, multipliers, groups = REPVGG_VARIANTS[variant]
    with torch.device("meta"):
        for deploy, name in ((False, f"repvgg_{variant}"), (True, f"vgg_{variant}")):
            official = OfficialVGG(depths, multipliers, OfficialRepVGGBlock, groups, 1000, deploy)
            layout = detect_layout(official.state_dict(), name)
            assert layout.name == ("repvgg-deploy" if deploy else "repvgg")
            ours = fused(name) if deploy else reparam.create_model(name)
            assert_converts(official, ours, layout.name)


def test_repvgg_a0_computes_the_official_function_in_both_forms():
    depths, multipliers, _ = REPVGG_VARIANTS["a0"]
    official = randomized(OfficialVGG(depths, multipliers, OfficialRepVGGBlock))
    ours = reparam.create_model("repvgg_a0", num_classes=10)
    check_same_function(official, ours, "repvgg")
    deploy = randomized(OfficialVGG(depths, multipliers, OfficialRepVGGBlock, deploy=True))
    check_same_function(deploy, fused("vgg_a0", num_classes=10), "repvgg-deploy")


def test_grouped_repvgg_computes_the_official_function(monkeypatch):
    """g4 on every other layer, at a width the tests can afford."""
    monkeypatch.setitem(REPVGG_ARCHS, "tiny_g4", VGGArch((2, 3, 4, 1), (16, 32, 64, 64), groups=4))
    official = randomized(OfficialVGG((2, 3, 4, 1), (0.25,) * 3 + (0.125,), OfficialRepVGGBlock, 4))
    check_same_function(official, repvgg("tiny_g4", num_classes=10), "repvgg")


# --- RepOpt-VGG --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(REPOPT_VARIANTS))
def test_every_repopt_vgg_variant_maps(variant):
    depths, multipliers = REPOPT_VARIANTS[variant]
    with torch.device("meta"):
        for block, name, kwargs in (
            (RealVGGBlock, "", {"reinit": False}),
            (LinearAddBlock, "_hs", {}),
        ):
            official = OfficialVGG(depths, multipliers, block, num_classes=1000)
            model = f"repopt_vgg_{variant}{name}"
            layout = detect_layout(official.state_dict(), model)
            assert layout.name == ("repopt-vgg-hs" if name else "repopt-vgg")
            assert_converts(official, reparam.create_model(model, **kwargs), layout.name)


TINY = VGGArch((2, 3, 2, 1), (16, 32, 64, 96))  # widths of multipliers (0.25, 0.25, 0.25, 0.1875)
TINY_MULTIPLIERS = (0.25, 0.25, 0.25, 0.1875)


def test_repopt_vgg_target_and_hyper_search_compute_the_official_function():
    official = randomized(OfficialVGG(TINY.depths, TINY_MULTIPLIERS, RealVGGBlock))
    check_same_function(official, repopt_vgg(TINY, num_classes=10), "repopt-vgg")
    official = randomized(OfficialVGG(TINY.depths, TINY_MULTIPLIERS, LinearAddBlock))
    ours = repopt_vgg_hs(TINY, num_classes=10)
    check_same_function(official, ours, "repopt-vgg-hs")
    assert torch.equal(ours.stages[0][1].scale_identity, official.stage1[1].scale_identity.weight)


def test_repopt_vgg_target_takes_its_scales_from_the_scale_file():
    """A target checkpoint holds no scales (they live in the optimizer): they come from the
    official scale file given, or else are the Hyper-Search init constants."""
    official = randomized(OfficialVGG(TINY.depths, TINY_MULTIPLIERS, LinearAddBlock))
    scales = {k: v for k, v in official.state_dict().items() if ".scale_" in k}
    target = randomized(OfficialVGG(TINY.depths, TINY_MULTIPLIERS, RealVGGBlock))
    ours = repopt_vgg(TINY, num_classes=10, scales=scales, reinit=False)
    converted = convert_state_dict(target.state_dict(), ours, "repopt-vgg")
    assert torch.equal(
        converted["stages.1.2.scale_identity"], scales["stage2.2.scale_identity.weight"]
    )
    assert torch.equal(converted["stem.scale_1x1"], scales["stage0.scale_1x1.weight"])
    plain = convert_state_dict(target.state_dict(), repopt_vgg(TINY, num_classes=10), "repopt-vgg")
    assert torch.equal(plain["stages.0.1.scale_conv"], torch.full((16,), 2**0.5))


# --- VanillaNet ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VANILLANET_VARIANTS))
def test_every_vanillanet_variant_maps(variant):
    name = f"vanillanet_{variant}"
    if name not in reparam.list_models():
        pytest.skip(f"{name} is not registered")
    dims, strides = VANILLANET_VARIANTS[variant]
    with torch.device("meta"):
        official = OfficialVanillaNet(dims, strides, num_classes=1000)
        assert detect_layout(official.state_dict(), name).name == "vanillanet"
        assert_converts(official, reparam.create_model(name), "vanillanet")
    # the deploy form at 1/64 width: fusing reads lambda, which the meta device cannot
    small = tuple(d // 64 for d in dims)
    official = OfficialVanillaNet(small, strides, num_classes=10, deploy=True)
    assert detect_layout(official.state_dict(), name).name == "vanillanet-deploy"
    assert_converts(
        official, fused(name, num_classes=10, width_multiplier=1 / 64), "vanillanet-deploy"
    )


@pytest.mark.parametrize("variant, act_learn", [("5", 1.0), ("6", 0.3)])
def test_vanillanet_computes_the_official_function(variant, act_learn):
    """Training form at the official act_learn (the leaky-ReLU slope while annealing), and the
    deploy form; 1/64 of the official widths, 64x64 inputs (every pool divides)."""
    dims, strides = VANILLANET_VARIANTS[variant]
    dims = tuple(d // 64 for d in dims)
    official = randomized(OfficialVanillaNet(dims, strides))
    official.change_act(act_learn)
    ours = reparam.create_model(f"vanillanet_{variant}", num_classes=10, width_multiplier=1 / 64)
    set_lambda(ours, act_learn)
    check_same_function(official, ours, "vanillanet", size=64)
    deploy = randomized(OfficialVanillaNet(dims, strides, deploy=True))
    ours = fused(f"vanillanet_{variant}", num_classes=10, width_multiplier=1 / 64)
    check_same_function(deploy, ours, "vanillanet-deploy", size=64)


# --- files, the command, errors -----------------------------------------------------------------


def a0_checkpoint(path, deploy: bool = False, wrap=lambda state: state):
    depths, multipliers, _ = REPVGG_VARIANTS["a0"]
    official = randomized(OfficialVGG(depths, multipliers, OfficialRepVGGBlock, deploy=deploy))
    torch.save(wrap(official.state_dict()), path)
    return official


def test_the_command_writes_a_checkpoint_that_reparam_loads(tmp_path, capsys):
    source = tmp_path / "RepVGG-A0-train.pth"
    official = a0_checkpoint(
        source, wrap=lambda s: {"model": {f"module.{k}": v for k, v in s.items()}}
    )
    out = tmp_path / "a0" / "a0.safetensors"
    argv = ["convert", str(source), "--model", "repvgg_a0", "--out", str(out), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layout"] == "repvgg" and summary["num_classes"] == 10
    model, preprocessing, _ = reparam.load(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(model(x), official(x)) <= TOLERANCE
    assert preprocessing.image_size == 224
    assert main(argv) == 2 and "exists; pass --force" in capsys.readouterr().err

    source = tmp_path / "RepVGG-A0-deploy.pth"
    official = a0_checkpoint(source, deploy=True)
    wrong = tmp_path / "fused" / "a0.safetensors"
    assert main(["convert", str(source), "--model", "vgg_a0", "--out", str(wrong)]) == 2
    assert "fused.safetensors" in capsys.readouterr().err
    out = tmp_path / "fused" / "fused.safetensors"
    assert main(["convert", str(source), "--model", "vgg_a0", "--out", str(out)]) == 0
    model, _, _ = reparam.load(out.parent)
    with torch.no_grad():
        assert rel_err(model(x), official(x)) <= TOLERANCE


def test_ema_weights_and_act_learn_are_chosen_on_request(tmp_path):
    dims, strides = VANILLANET_VARIANTS["5"]
    official = OfficialVanillaNet(tuple(d // 64 for d in dims), strides)
    weights = official.state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    path = tmp_path / "vanillanet_5.pth"
    torch.save({"model": weights, "model_ema": ema, "epoch": 3}, path)
    kwargs = {"model_kwargs": {"width_multiplier": 1 / 64}}
    plain = convert_checkpoint(path, "vanillanet_5", **kwargs)
    averaged = convert_checkpoint(path, "vanillanet_5", ema=True, act_learn=0.5, **kwargs)
    assert torch.equal(plain.state_dict["head.fc2.bias"], weights["cls2.0.bias"])
    assert torch.equal(averaged.state_dict["head.fc2.bias"], ema["cls2.0.bias"])
    assert float(plain.state_dict["stages.1.act.lam"]) == 1.0  # the official default
    assert float(averaged.state_dict["head.act.lam"]) == 0.5
    torch.save({"model": weights}, path)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        read_checkpoint(path, ema=True)
    deploy = OfficialVanillaNet(tuple(d // 64 for d in dims), strides, deploy=True)
    torch.save(deploy.state_dict(), path)
    with pytest.raises(UserError, match="act_learn applies to a training-form VanillaNet"):
        convert_checkpoint(path, "vanillanet_5", act_learn=0.5, **kwargs)


def test_mismatches_are_one_error_naming_the_keys(monkeypatch):
    monkeypatch.setitem(REPVGG_ARCHS, "tiny", TINY)
    state = OfficialVGG(TINY.depths, TINY_MULTIPLIERS, OfficialRepVGGBlock).state_dict()
    state["stage1.0.se.down.weight"] = torch.ones(1)
    del state["stage2.1.rbr_1x1.conv.weight"]
    state["linear.weight"] = torch.ones(10, 7)
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(state, repvgg("tiny", num_classes=10), "repvgg")
    message = str(err.value)
    assert "\n" not in message
    for part in (
        "unmapped (1): ['stage1.0.se.down.weight']",
        "missing (1): ['stages.1.1.conv1x1.conv.weight']",
        "linear.weight (10, 7) != fc.weight (10, 96)",
    ):
        assert part in message


def test_unsafe_unknown_and_misnamed_sources_are_refused(tmp_path):
    pickled = tmp_path / "with_args.pth"
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(CheckpointError, match="pickled Python objects.*Namespace"):
        read_checkpoint(pickled)
    source = tmp_path / "a0.pth"
    a0_checkpoint(source)
    with pytest.raises(CheckpointError, match="none of the layouts"):
        convert_checkpoint(source, "vanillanet_5")
    with pytest.raises(UserError, match="no converter for 'resnet_rs'"):
        convert_checkpoint(source, "resnet_rs")
    with pytest.raises(UserError, match="converts to models"):
        convert_checkpoint(source, "vanillanet_5", "repvgg")
    with pytest.raises(CheckpointError, match="unmapped"):  # --layout forces the wrong one
        convert_checkpoint(source, "repvgg_a0", "timm-repvgg")


def test_a_repopt_target_checkpoint_records_its_scale_file(tmp_path):
    depths, multipliers = (2, 4, 14, 1), (0.75, 0.75, 0.75, 2.5)
    path = tmp_path / "target.pth"
    torch.save(randomized(OfficialVGG(depths, multipliers, RealVGGBlock)).state_dict(), path)
    converted = convert_checkpoint(path, "repopt_vgg_a0")
    assert converted.config()["model_kwargs"] == {}
    scales = model_scales(target_model("repopt_vgg_a0", converted.layout, 10))
    assert all(torch.equal(converted.state_dict[k], v) for k, v in scales.items())
