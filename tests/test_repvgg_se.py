"""RepVGG-D2se: the official architecture, its SE block, the fused ``conv -> SE -> ReLU`` form in
float64, and official and timm checkpoints of it.

The official network (github.com/DingXiaoH/RepVGG, repvgg.py: ``create_RepVGG_D2se``,
``RepVGGBlock(use_se=True)``; se_block.py: ``SEBlock``) is rebuilt here independently from its
structure: module names, the SE on the branch sum before the ReLU, ``out // 16`` hidden channels.
Function checks use a small arch of the same structure; the real D2se is checked on the meta
device.
"""

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg
from timm.utils.model import reparameterize_model
from torch import nn

import reparam
from reparam.app.cli import main
from reparam.app.verify.checks import run_checks
from reparam.data import Preprocessing
from reparam.models.convert import convert_state_dict, detect_layout, load_timm_repvgg_state
from reparam.models.layers import RepVGGBlock, SEBlock
from reparam.models.repvgg import REPVGG_ARCHS, vgg
from reparam.models.vggnet import VGGArch
from reparam.quant.onnx import check_onnx_vs_torch, export_onnx
from reparam.testing import randomize_batchnorm_, rel_err

DT = torch.float64
TOL = 1e-10
FLOAT32_TOL = 1e-5
# repvgg.py create_RepVGG_D2se: num_blocks [8, 14, 24, 1], width_multiplier [2.5, 2.5, 2.5, 5]
D2SE_DEPTHS, D2SE_WIDTHS = (8, 14, 24, 1), (160, 320, 640, 2560)
# the same structure at a size the tests can afford (every width >= 16 for the SE)
TINY_DEPTHS, TINY_WIDTHS = (2, 2, 3, 1), (16, 32, 48, 64)


# --- the official structure ----------------------------------------------------------------------


def conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    result = nn.Sequential()
    result.add_module("conv", nn.Conv2d(cin, cout, k, stride, k // 2, bias=False))
    result.add_module("bn", nn.BatchNorm2d(cout))
    return result


class OfficialSEBlock(nn.Module):
    """se_block.py: average pool over the (square) map, ``down``, ReLU, ``up``, sigmoid, scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.down = nn.Conv2d(channels, channels // 16, 1)
        self.up = nn.Conv2d(channels // 16, channels, 1)

    def forward(self, x):
        gate = torch.sigmoid(self.up(F.relu(self.down(F.avg_pool2d(x, kernel_size=x.size(3))))))
        return x * gate.view(-1, x.shape[1], 1, 1)


class OfficialSEBlockRepVGG(nn.Module):
    """``ReLU(se(rbr_dense(x) + rbr_1x1(x) + rbr_identity(x)))``; deploy: ``rbr_reparam``."""

    def __init__(self, cin: int, cout: int, stride: int, deploy: bool):
        super().__init__()
        self.se = OfficialSEBlock(cout)
        if deploy:
            self.rbr_reparam = nn.Conv2d(cin, cout, 3, stride, 1)
        else:
            self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
            self.rbr_dense = conv_bn(cin, cout, 3, stride)
            self.rbr_1x1 = conv_bn(cin, cout, 1, stride)

    def forward(self, x):
        if hasattr(self, "rbr_reparam"):
            return F.relu(self.se(self.rbr_reparam(x)))
        identity = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return F.relu(self.se(self.rbr_dense(x) + self.rbr_1x1(x) + identity))


class OfficialD2se(nn.Module):
    """``RepVGG(use_se=True)``: ``stage0`` (``min(64, widths[0])`` wide) .. ``stage4``
    (``nn.ModuleList``), global pool, ``linear``."""

    def __init__(self, depths, widths, num_classes=10, deploy=False):
        super().__init__()
        planes = min(64, widths[0])
        self.stage0 = OfficialSEBlockRepVGG(3, planes, 2, deploy)
        for stage, (depth, width) in enumerate(zip(depths, widths), start=1):
            blocks = []
            for index in range(depth):
                blocks.append(OfficialSEBlockRepVGG(planes, width, 2 if index == 0 else 1, deploy))
                planes = width
            setattr(self, f"stage{stage}", nn.ModuleList(blocks))
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x):
        x = self.stage0(x)
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            for block in stage:
                x = block(x)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights (He-scaled) and BN statistics, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = (2.0 / p[0].numel()) ** 0.5 if p.dim() > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return randomize_batchnorm_(model, gen).eval()


@pytest.fixture
def tiny_d2se(monkeypatch):
    """``repvgg_d2se`` builds the tiny arch (the registered name, so the command and
    ``reparam.load`` take the D2se paths)."""
    monkeypatch.setitem(REPVGG_ARCHS, "d2se", VGGArch(TINY_DEPTHS, TINY_WIDTHS))


# --- the architecture ----------------------------------------------------------------------------


def test_d2se_is_the_official_architecture():
    with torch.device("meta"):
        model = reparam.create_model("repvgg_d2se")
        theirs = timm.create_model("repvgg_d2se")  # timm's own, independent implementation
    blocks = [model.stem, *(block for stage in model.stages for block in stage)]
    assert [len(stage) for stage in model.stages] == list(D2SE_DEPTHS)
    assert [stage[0].out_channels for stage in model.stages] == list(D2SE_WIDTHS)
    assert model.stem.out_channels == 64
    assert all(b.se.down.out_channels == b.out_channels // 16 for b in blocks)
    assert sum(p.numel() for p in model.parameters()) == 133_334_836
    assert sum(p.numel() for p in theirs.parameters()) == 133_334_836
    cfg = model.pretrained_cfg  # trained at 224, evaluated at 320 (resize 320, centre crop 320)
    assert cfg["input_size"] == (3, 224, 224) and cfg["test_input_size"] == (3, 320, 320)
    assert cfg["test_crop_pct"] == 1.0
    with pytest.raises(ValueError, match="keeps its SE blocks; fuse repvgg_d2se"):
        vgg("d2se")


def test_official_and_timm_d2se_keys_map_in_both_forms():
    with torch.device("meta"):
        ours = reparam.create_model("repvgg_d2se")
        fused = reparam.reparameterize(ours.eval())
        timm_d2se = timm.create_model("repvgg_d2se")
        for deploy, target in ((False, ours), (True, fused)):
            official = OfficialD2se(D2SE_DEPTHS, D2SE_WIDTHS, 1000, deploy).state_dict()
            layout = detect_layout(official, "repvgg_d2se")
            assert layout.name == ("repvgg-deploy" if deploy else "repvgg")
            converted = convert_state_dict(official, target, layout)
            assert {k: v.shape for k, v in converted.items()} == {
                k: v.shape for k, v in target.state_dict().items()
            }
        assert convert_state_dict(timm_d2se.state_dict(), ours, "timm-repvgg").keys() == (
            ours.state_dict().keys()
        )


def test_se_block_is_the_official_squeeze_excitation():
    gen = torch.Generator().manual_seed(0)
    ours, official = SEBlock(48).to(DT), randomized(OfficialSEBlock(48).to(DT))
    ours.load_state_dict(official.state_dict())
    x = torch.randn(3, 48, 9, 9, dtype=DT, generator=gen)
    with torch.no_grad():
        assert rel_err(ours(x), official(x)) <= TOL
    with pytest.raises(ValueError, match="SE on 8 channels needs at least 16"):
        SEBlock(8)


# --- fusion --------------------------------------------------------------------------------------


@st.composite
def se_block_geometry(draw):
    groups = draw(st.sampled_from([1, 2, 4]))
    out_channels = draw(st.sampled_from([16, 24, 32, 48]))
    identity = draw(st.booleans())
    return dict(
        in_channels=out_channels if identity else groups * draw(st.integers(1, 6)),
        out_channels=out_channels,
        stride=1 if identity else draw(st.sampled_from([1, 2])),
        groups=groups,
        size=draw(st.integers(3, 12)),
        batch=draw(st.integers(1, 3)),
    )


@settings(max_examples=40, deadline=None)
@given(g=se_block_geometry(), eps=st.sampled_from([1e-5, 1e-3, 0.1]), seed=st.integers(0, 2**16))
def test_fused_se_block_is_conv_se_relu(g, eps, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    block = RepVGGBlock(g["in_channels"], g["out_channels"], g["stride"], g["groups"], se=True)
    for module in block.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = eps
    randomize_batchnorm_(block.to(DT), gen).eval()
    assert (block.identity is not None) == (
        g["in_channels"] == g["out_channels"] and g["stride"] == 1
    )
    fused = block.fuse()
    assert list(dict(fused.named_children())) == ["conv", "se", "act"]
    assert [type(m) for m in fused] == [nn.Conv2d, SEBlock, nn.ReLU]
    assert fused.se is not block.se
    assert all(torch.equal(fused.se.state_dict()[k], v) for k, v in block.se.state_dict().items())
    x = torch.randn(g["batch"], g["in_channels"], g["size"], g["size"], dtype=DT, generator=gen)
    with torch.no_grad():
        assert rel_err(fused(x), block(x)) <= TOL


def test_verify_checks_the_se_fusion_and_catches_se_after_relu(monkeypatch):
    result = run_checks(["repvgg_se_deploy"])["repvgg_se_deploy"]
    assert result["passed"] and result["dtype"] == "float64" and result["max_rel_err"] <= TOL

    def se_after_relu(self):
        fused = correct_fuse(self)
        return nn.Sequential(fused.conv, fused.act, fused.se)

    correct_fuse = RepVGGBlock.fuse
    monkeypatch.setattr(RepVGGBlock, "fuse", se_after_relu)
    assert not run_checks(["repvgg_se_deploy"])["repvgg_se_deploy"]["passed"]


@pytest.mark.slow
def test_fused_se_model_exports_to_onnx(tiny_d2se, tmp_path):
    model = reparam.prepare_for_deploy(randomized(reparam.create_model("repvgg_d2se")))
    path = export_onnx(reparam.reparameterize(model), tmp_path / "d2se.onnx", 32)
    result = check_onnx_vs_torch(model, path, torch.randn(3, 3, 32, 32))
    assert result.passed, result


# --- checkpoints ---------------------------------------------------------------------------------


def test_official_d2se_checkpoints_convert_through_the_command(tiny_d2se, tmp_path, capsys):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for deploy, out in ((False, "d2se/d2se.safetensors"), (True, "fused/fused.safetensors")):
        official = randomized(
            OfficialD2se(TINY_DEPTHS, TINY_WIDTHS, deploy=deploy), seed=int(deploy)
        )
        source = tmp_path / f"RepVGG-D2se-{'deploy' if deploy else 'train'}.pth"
        torch.save({"model": official.state_dict()}, source)
        argv = ["convert", str(source), "--model", "repvgg_d2se", "--out", str(tmp_path / out)]
        assert main([*argv, "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["layout"] == ("repvgg-deploy" if deploy else "repvgg")
        model, preprocessing, _ = reparam.load(tmp_path / out)
        assert preprocessing == Preprocessing(320, crop_pct=1.0)
        with torch.no_grad():
            assert rel_err(model(x), official(x)) <= FLOAT32_TOL


def test_official_d2se_state_is_the_same_function_in_float64(tiny_d2se):
    official = randomized(OfficialD2se(TINY_DEPTHS, TINY_WIDTHS).to(DT))
    ours = reparam.create_model("repvgg_d2se", num_classes=10).to(DT)
    ours.load_state_dict(convert_state_dict(official.state_dict(), ours, "repvgg"))
    x = torch.randn(2, 3, 33, 33, dtype=DT, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert rel_err(ours.eval()(x), official(x)) <= TOL
        assert rel_err(reparam.reparameterize(ours)(x), official(x)) <= TOL


def test_timm_d2se_state_converts_in_both_forms(tiny_d2se):
    blocks = tuple(ByoBlockCfg("rep", d=d, c=c, gs=0) for d, c in zip(TINY_DEPTHS, TINY_WIDTHS))
    se = dict(attn_layer="se", attn_kwargs=dict(rd_ratio=1 / 16, rd_divisor=1))
    cfg = ByoModelCfg(blocks=blocks, stem_type="rep", stem_chs=TINY_WIDTHS[0], **se)
    theirs = randomized(ByobNet(cfg, num_classes=10).to(DT))
    ours = reparam.create_model("repvgg_d2se", num_classes=10).to(DT)
    load_timm_repvgg_state(ours, theirs.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=DT, generator=torch.Generator().manual_seed(5))
    deployed = reparameterize_model(theirs)
    fused = reparam.reparameterize(ours.eval())
    fused.load_state_dict(convert_state_dict(deployed.state_dict(), fused, "timm-repvgg-deploy"))
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) <= TOL
        assert rel_err(fused(x), deployed(x)) <= TOL
