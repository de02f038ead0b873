"""Hyper-Search: scale files, official import, searched scales -> optimizer, equivalence, analysis."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import reparam
from helpers import (
    TINY_DEPTHS,
    TINY_WIDTHS,
    imaginary_twin,
    labelled_images,
    tiny_target,
)
from reparam.analysis.identity import identity_variance_ratios
from reparam.app.cli import main as cli_main
from reparam.app.report import plot_identity_variance
from reparam.app.train.hypersearch import ablation_overrides
from reparam.errors import ScaleError
from reparam.models.layers import RepVGGBlock
from reparam.models.repopt_vgg import HSBlock, hs_init_scale
from reparam.models.scales import (
    extract_scales,
    model_scales,
    read_scale_file,
    read_scales,
    save_scale_file,
)
from reparam.models.vggnet import VGGNet
from reparam.optim import RepOptSGD, grad_mults
from reparam.testing import rel_err, train_twins

DT = torch.float64


def tiny_hs() -> VGGNet:
    """The HS model of ``tiny_target`` (same scale keys)."""
    return VGGNet(
        lambda s: HSBlock(s.in_channels, s.out_channels, s.stride, s.groups, hs_init_scale(s)),
        TINY_DEPTHS,
        TINY_WIDTHS,
        num_classes=3,
    )


def searched_scales(seed=0) -> dict:
    """Stand-in for a search: the HS model's scales moved to random values (mixed signs)."""
    hs = tiny_hs()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model_scales(hs).values():
            tensor.copy_(torch.randn(tensor.shape, generator=gen))
    return extract_scales(hs)


def test_hs_model_has_the_target_scale_keys_and_hs_init():
    hs, target = reparam.create_model("repopt_vgg_a0_hs"), reparam.create_model("repopt_vgg_a0")
    hs_scales, target_scales = model_scales(hs), model_scales(target)
    assert hs_scales.keys() == target_scales.keys()
    assert all(isinstance(v, nn.Parameter) for v in hs_scales.values())
    assert all(torch.equal(hs_scales[k], target_scales[k]) for k in hs_scales)
    assert torch.allclose(hs_scales["stages.2.2.scale_1x1"], torch.full((192,), 1.0))
    assert torch.equal(hs_scales["stages.2.1.scale_identity"], torch.ones(192))
    assert math.isclose(hs_scales["stages.1.2.scale_conv"][0].item(), 1.0, rel_tol=1e-7)
    assert math.isclose(
        hs_scales["stages.1.3.scale_conv"][0].item(), math.sqrt(2 / 3), rel_tol=1e-7
    )


def test_hs_block_computes_bn_of_the_scaled_sum():
    block = HSBlock(4, 4, 1, 1, scale=0.7).to(DT).eval()
    with torch.no_grad():
        block.scale_identity.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    x = torch.randn(2, 4, 5, 5, dtype=DT)
    s = lambda v: v.view(1, -1, 1, 1)  # noqa: E731
    expected = torch.relu(
        block.bn(
            s(block.scale_conv) * block.conv3x3(x)
            + s(block.scale_1x1) * block.conv1x1(x)
            + s(block.scale_identity) * x
        )
    )
    assert torch.equal(block(x), expected)


def test_scale_file_round_trip(tmp_path):
    scales = searched_scales()
    path = tmp_path / "s.safetensors"
    save_scale_file(path, scales, model="tiny_hs", data="digits", epochs=3, seed=7, top1=0.875)
    loaded, metadata = read_scale_file(path)
    assert loaded.keys() == scales.keys()
    assert all(torch.equal(loaded[k], scales[k]) for k in scales)
    assert metadata == {
        "format": "reparam-scales/1",
        "model": "tiny",
        "data": "digits",
        "epochs": "3",
        "seed": "7",
        "top1": "0.875",
    }
    assert read_scales(path, model="tiny").keys() == scales.keys()
    with pytest.raises(ScaleError, match="searched for 'tiny', not 'repopt_vgg_a0'"):
        read_scales(path, model="repopt_vgg_a0")


def test_bad_scale_files_are_refused(tmp_path):
    plain = tmp_path / "weights.safetensors"
    save_file({"a": torch.ones(2)}, str(plain))
    with pytest.raises(ScaleError, match="not a reparam scale file"):
        read_scales(plain)
    with pytest.raises(ScaleError, match="non-finite"):
        save_scale_file(
            tmp_path / "nan.safetensors", {"a": torch.tensor([float("nan")])}, model="x"
        )
    pickled = tmp_path / "bad.pth"
    torch.save({"stage0.scale_conv.weight": torch.ones(2), "x": [1, 2]}, pickled)
    with pytest.raises(ScaleError, match="dict of tensors"):
        read_scales(pickled)


def test_official_keys_are_renamed(tmp_path):
    official = {
        "stage0.scale_conv.weight": torch.ones(4),
        "stage1.0.scale_1x1.weight": torch.ones(4),
        "stage3.1.scale_identity.weight": torch.ones(8),
    }
    path = tmp_path / "official.pth"
    torch.save(official, path)
    assert set(read_scales(path)) == {
        "stem.scale_conv",
        "stages.0.0.scale_1x1",
        "stages.2.1.scale_identity",
    }


def test_searched_scales_reach_the_optimizer():
    default = grad_mults(tiny_target())
    scales = searched_scales()
    model = tiny_target(scales=scales)
    optimizer = RepOptSGD(model, lr=0.1)
    searched = grad_mults(model)
    assert default.keys() == searched.keys()
    assert all(not torch.equal(default[k], searched[k]) for k in default)
    weight = model.stages[1][1].conv.conv.weight
    s = scales["stages.1.1.scale_conv"]
    assert torch.equal(optimizer.grad_mult(weight)[:, 0, 0, 0], s**2)
    assert torch.equal(optimizer.grad_mult(weight), searched["stages.1.1.conv.conv.weight"])


def test_repopt_vgg_with_searched_scales_trains_like_the_csla_model(tmp_path):
    path = tmp_path / "searched.safetensors"
    save_scale_file(path, searched_scales(seed=3), model="tiny")
    target = tiny_target(scales=str(path)).to(DT)
    imaginary, _ = imaginary_twin(target)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    outputs = train_twins(
        imaginary,
        target,
        torch.optim.SGD(imaginary.parameters(), **kw),
        RepOptSGD(target, **kw),
        steps=3,
        batch=labelled_images(2),
        loss=nn.functional.cross_entropy,
        held_out=lambda gen: labelled_images(4)(gen)[0],
        eval_mode=True,
    )
    assert rel_err(*outputs) <= 1e-10


def test_identity_variance_ratios_for_hs_repvgg_and_repopt(tmp_path):
    images = torch.randn(2, 3, 16, 16)
    tiny_repvgg = VGGNet(
        lambda s: RepVGGBlock(s.in_channels, s.out_channels, s.stride, s.groups),
        TINY_DEPTHS,
        TINY_WIDTHS,
        num_classes=3,
    )
    results = {}
    for name, model in (("hs", tiny_hs()), ("repvgg", tiny_repvgg), ("repopt", tiny_target())):
        results[name] = identity_variance_ratios(model, images)
        assert model.training  # mode restored
    assert all(r.keys() == {"stages.1.1", "stages.2.1"} for r in results.values())
    assert all(v > 0 and math.isfinite(v) for r in results.values() for v in r.values())
    hs = tiny_hs()
    with torch.no_grad():
        hs.stages[1][1].scale_identity.zero_()
    assert identity_variance_ratios(hs, images)["stages.1.1"] == 0.0
    png = plot_identity_variance(results, tmp_path / "plots" / "identity.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_hypersearch_command_writes_a_scale_file_that_train_accepts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the HS run folder goes to runs/hs-<model>-<data>
    out = tmp_path / "a0.safetensors"
    code = cli_main(
        [
            "hypersearch",
            "--model",
            "repopt_vgg_a0",
            "--data",
            "synthetic:32",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--image-size",
            "8",
            "--seed",
            "3",
            "--out",
            str(out),
            "--no-progress",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    scales, metadata = read_scale_file(out)
    assert summary["scales"] == str(out)
    assert summary["run_dir"] == str(Path("runs") / "hs-repopt_vgg_a0-synthetic-32")
    assert (tmp_path / summary["run_dir"] / "last.state.pt").is_file()  # kept, resumable
    assert metadata["model"] == "repopt_vgg_a0" and metadata["data"] == "synthetic:32"
    assert metadata["epochs"] == "1" and metadata["seed"] == "3"
    assert math.isclose(float(metadata["top1"]), summary["top1"])
    model = reparam.create_model("repopt_vgg_a0", num_classes=10, scales=str(out))
    assert all(torch.equal(model_scales(model)[k], v) for k, v in scales.items())
    assert (
        cli_main(
            [
                "hypersearch",
                "--model",
                "vgg_a0",
                "--data",
                "synthetic:32",
                "--out",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 2
    )
    assert "no Hyper-Search model" in capsys.readouterr().err


def test_ablation_overrides_build_valid_configs_and_models(tmp_path):
    from reparam.app.train import TrainConfig

    path = tmp_path / "s.safetensors"
    save_scale_file(path, searched_scales(), model="tiny")
    for name, overrides in ablation_overrides(path).items():
        config = TrainConfig(model="repopt_vgg_a0", **overrides)
        kwargs = dict(config.model_kwargs)
        model = tiny_target(**kwargs)
        assert config.grad_mult == (name not in ("no_grad_mult", "plain")), name
        if kwargs.get("scales") == str(path) and not kwargs.get("channel_average"):
            assert torch.equal(
                model_scales(model)["stages.1.1.scale_conv"],
                searched_scales()["stages.1.1.scale_conv"],
            )
