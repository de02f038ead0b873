"""Recipes: presets, files, overrides, validation, round trip into config.json."""

import json
import re

import pytest
import torch

import reparam
from reparam.app.cli import build_parser
from reparam.app.commands.train import build_config
from reparam.app.train import (
    RecipeError,
    TrainConfig,
    execution_defaults,
    load_recipe,
    parse_overrides,
    recipes,
    resolve_config,
)


def test_presets_resolve_and_round_trip():
    names = set(recipes())
    assert {"basic", "resnet-rs"} | {
        f"resnet-rs{d}" for d in (50, 101, 152, 200, 270, 350, 420)
    } <= names
    for name in names:
        config = resolve_config(name)
        assert config.recipe == name
        assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_resnet_rs_numbers():
    rs = resolve_config("resnet-rs")
    assert (rs.epochs, rs.batch_size, rs.lr_per_256, rs.warmup_epochs) == (350, 4096, 0.1, 5.0)
    assert rs.resolved_lr == pytest.approx(1.6)  # 0.1 x 4096 / 256
    assert (rs.optimizer, rs.momentum, rs.nesterov) == ("sgd", 0.9, False)
    assert (rs.weight_decay, rs.wd_exempt, rs.label_smoothing) == (4e-5, "bn", 0.1)
    assert (rs.ema, rs.ema_decay, rs.drop_rate) == (True, 0.9999, 0.25)
    rs50, rs200, rs350 = (resolve_config(f"resnet-rs{d}") for d in (50, 200, 350))
    assert rs50.randaugment == "rand-m10-n2-mmax10" and rs50.image_size == 160
    assert rs200.randaugment == "rand-m15-n2-mmax15" and rs200.drop_path_rate == 0.1
    assert rs200.model == "resnet_rs" and rs200.model_kwargs == {"depth": 200}
    assert (rs350.image_size, rs350.drop_rate) == (320, 0.4)
    for name in recipes():  # a magnitude above 10 must lift timm's cap with mmax
        ra = resolve_config(name).randaugment
        if ra:
            magnitude = re.search(r"-m(\d+)", ra).group(1)
            mmax = re.search(r"-mmax(\d+)", ra)
            assert int(magnitude) <= (int(mmax.group(1)) if mmax else 10)


def test_recipe_files(tmp_path):
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text(
        "recipe: resnet-rs\nepochs: 90\nbetas: [0.8, 0.99]\nmodel_kwargs: {width: 2}\n"
    )
    config = resolve_config(str(yaml_file), {"lr": "0.3"})
    assert (config.epochs, config.betas, config.lr, config.weight_decay) == (
        90,
        (0.8, 0.99),
        0.3,
        4e-5,
    )
    assert config.model_kwargs == {"width": 2} and config.recipe == str(yaml_file)
    json_file = tmp_path / "r.json"
    json_file.write_text(json.dumps({"ema": True, "batch_size": 32}))
    assert load_recipe(str(json_file))["ema"] is True
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(str(tmp_path / "missing.yaml"))
    with pytest.raises(RecipeError, match="unknown recipe"):
        load_recipe("resnet-rs9000")
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(str(tmp_path / "bad.yaml"))


def test_overrides_are_typed_and_validated():
    values = parse_overrides(["ema=true", "grad_clip=none", "drop-path-rate=0.1", "epochs=3"])
    config = resolve_config("basic", values)
    assert config.ema is True and config.grad_clip is None and config.drop_path_rate == 0.1
    assert config.epochs == 3
    for bad, message in [
        ({"epochs": "x"}, "'epochs' is 'x'; expected an integer"),
        ({"optimizer": "lars"}, "'optimizer' is 'lars'; expected one of"),
        ({"random_erasing": 1.5}, "random_erasing"),
        ({"ema": "maybe"}, "'ema' is 'maybe'; expected true or false"),
        ({"epochs": 0}, "'epochs'"),
        ({"accum_steps": 3}, "divide"),
        ({"nope": 1}, "unknown config keys"),
    ]:
        with pytest.raises(RecipeError, match=message):
            resolve_config("basic", bad)
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_overrides(["lr"])


def test_changing_the_model_drops_the_presets_model_kwargs():
    assert resolve_config("resnet-rs200", {"model": "repvgg_a0"}).model_kwargs == {}
    assert resolve_config("resnet-rs200", {"model": "resnet_rs"}).model_kwargs == {"depth": 200}


def test_cli_flags_map_to_fields(tmp_path):
    args = build_parser().parse_args(
        [
            "train",
            "--model",
            "vgg_a0",
            "--data",
            "synthetic:64",
            "--epochs",
            "3",
            "--lr",
            "0.05",
            "--ema",
            "--no-nesterov",
            "--scales",
            "s.safetensors",
            "--set",
            "hflip=true",
            "--recipe",
            "resnet-rs",
            "--out",
            str(tmp_path),
        ]
    )
    config = build_config(args)
    assert (config.model, config.data, config.epochs, config.lr, config.ema) == (
        "vgg_a0",
        "synthetic:64",
        3,
        0.05,
        True,
    )
    assert config.model_kwargs == {"scales": "s.safetensors"} and config.hflip is True
    assert config.weight_decay == 4e-5  # from the preset
    default_out = build_config(build_parser().parse_args(["train", "--data", "cifar10:/x"]))
    assert default_out.out == "runs/repvgg_a0-cifar10"


def test_official_presets_cite_their_sources_and_match_them():
    listed = recipes()
    for name in ("repopt-vgg", "repopt-hs", "repvgg", "resnet-rs50", "vanillanet"):
        assert "https://" in listed[name]["source"] or "tensorflow/tpu" in listed[name]["source"]
    vgg, hs, rep = (resolve_config(n) for n in ("repopt-vgg", "repopt-hs", "repvgg"))
    assert (vgg.epochs, vgg.lr_per_256, vgg.weight_decay, vgg.warmup_epochs) == (120, 0.1, 4e-5, 5)
    assert vgg.nesterov and vgg.label_smoothing == 0.1 and vgg.randaugment.startswith("rand-m15")
    assert (hs.epochs, hs.label_smoothing, hs.grad_clip, hs.wd_exempt) == (
        240,
        0.0,
        None,
        "1d_but_identity",
    )
    assert (rep.epochs, rep.weight_decay, rep.randaugment, rep.nesterov) == (120, 1e-4, None, False)
    van = resolve_config("vanillanet")
    assert (van.epochs, van.batch_size, van.optimizer, van.weight_decay) == (
        300,
        1024,
        "lamb",
        0.35,
    )
    assert van.resolved_lr == pytest.approx(3.5e-3) and van.min_lr == 1e-6
    assert (van.loss, van.mixup, van.cutmix, van.random_erasing) == ("bce", 0.1, 1.0, 0.25)
    assert (van.ema_decay, van.amp, van.drop_rate) == (0.99996, True, 0.05)
    assert (van.anneal_per, van.anneal_kind) == ("epoch", "linear")
    assert round(van.anneal_fraction * van.epochs) == 100  # decay_epochs 100
    assert van.randaugment == "rand-m7-mstd0.5-inc1"
    rs, rs50 = resolve_config("resnet-rs"), resolve_config("resnet-rs50")
    assert rs.randaugment == rs50.randaugment == "rand-m10-n2-mmax10"  # depth 50: magnitude 10
    assert rs.ema_warmup and rs.ema_warmup_rule == "resnet-rs"


def test_resnet_rs_presets_warn_when_the_resolution_leaves_their_table(caplog):
    with caplog.at_level("WARNING"):
        resolve_config("resnet-rs50", {"image_size": 224})
    assert "follow the ResNet-RS table for 160 px" in caplog.text


def test_ema_warm_up_of_the_official_resnet_rs_code():
    from reparam.app.train.setup import ResNetRSEma

    ema = ResNetRSEma(torch.nn.Linear(2, 2), decay=0.9999)
    assert [ema.get_decay(t) for t in (0, 10, 10**6)] == [0.1, 11 / 20, 0.9999]


def test_hyper_search_models_decay_their_identity_scales_like_the_official_optimizer():
    from reparam.app.train.optim_factory import weight_decay_groups

    model = reparam.create_model("repopt_vgg_a0_hs", num_classes=10)
    decay, no_decay = weight_decay_groups(model, 4e-5, "1d_but_identity")
    assert any(n.endswith("scale_identity") for n in decay["names"])
    assert not any(n.endswith(("scale_conv", "scale_1x1", ".bias")) for n in decay["names"])
    assert any(n.endswith("scale_conv") for n in no_decay["names"])


def test_execution_defaults_pick_bf16_channels_last_on_bf16_cpus_from_32_px(monkeypatch):
    """The measured fastest CPU path (benchmarks/cpu_paths.py) where it is safe: a CPU with native
    bf16 and images of 32 px or more; FP32 NCHW below (oneDNN's bf16 weight gradient of a strided
    convolution on a 1x1 input), on CPUs that emulate bf16, and on CUDA (not measured)."""
    on, off = {"amp": True, "channels_last": True}, {"amp": False, "channels_last": False}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert execution_defaults("cpu", 32) == execution_defaults("auto", 224) == on
    assert execution_defaults("cpu", 31) == execution_defaults("cpu", 16) == off
    assert execution_defaults("cuda", 224) == execution_defaults("cuda:1", 224) == off
    config = TrainConfig(image_size=224, device="cpu")
    assert (config.amp, config.channels_last) == (True, True)  # resolved, so config.json records it
    assert TrainConfig(image_size=224, device="cpu", amp=False).to_dict()["channels_last"] is False
    assert TrainConfig(image_size=16, device="cpu", channels_last=True).amp is False
    (warning,) = TrainConfig(image_size=16, device="cpu", amp=True).execution_warnings()
    assert "runs can diverge" in warning
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert execution_defaults("cpu", 224) == off
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert execution_defaults("cpu", 224) == on
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert execution_defaults("auto", 224) == off
