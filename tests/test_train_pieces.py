"""Every recipe piece changes what it should, and nothing when off."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reparam
import reparam.app.train.setup
from reparam.app.train import TrainConfig, fit
from reparam.app.train.optim_factory import create_optimizer, weight_decay_groups
from reparam.app.train.setup import (
    TrainingLoss,
    build_data,
    build_ema,
    build_mixup,
    build_model,
    build_scheduler,
    lambda_schedule,
)
from reparam.errors import RecipeError, TrainingError
from reparam.files import load_weights
from reparam.optim import RepOptAdamW, RepOptSGD, grad_mults


def bn_free_net(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


@pytest.fixture
def swap_model(monkeypatch):
    """Make ``create_model`` build ``factory()`` whatever the name (the engine still applies
    channels_last etc.); returns a list of (model, its initial state) per build."""
    built = []

    def install(factory):
        def create(name, num_classes=1000, **kwargs):
            model = factory()
            built.append((model, {k: v.clone() for k, v in model.state_dict().items()}))
            return model

        monkeypatch.setattr(reparam.app.train.setup, "create_model", create)
        return built

    return install


def test_label_smoothing_changes_the_loss_by_its_formula():
    logits, labels = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 5, (8,))
    plain = TrainingLoss("ce", 0.0)(logits, labels)
    smooth = TrainingLoss("ce", 0.1)(logits, labels)
    log_p = logits.log_softmax(1)
    assert plain == pytest.approx(F.nll_loss(log_p, labels).item(), rel=1e-12)
    expected = 0.9 * F.nll_loss(log_p, labels) - 0.1 * log_p.mean(1).mean()
    assert smooth == pytest.approx(expected.item(), rel=1e-12) and smooth != plain


def test_soft_targets_and_bce_follow_their_formulas():
    logits, labels = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 5, (8,))
    soft = torch.softmax(torch.randn(8, 5, dtype=torch.float64), 1)
    expected_soft = -(soft * logits.log_softmax(1)).sum(1).mean()
    assert TrainingLoss("ce", 0.1)(logits, soft).item() == pytest.approx(
        expected_soft.item(), rel=1e-12
    )
    e, k = 0.1, 5
    one_hot = F.one_hot(labels, k).double() * (1 - e) + e / k  # off e/K, on 1 - e + e/K
    p = torch.sigmoid(logits)
    expected_bce = -(one_hot * p.log() + (1 - one_hot) * (1 - p).log()).mean()
    assert TrainingLoss("bce", e)(logits, labels).item() == pytest.approx(
        expected_bce.item(), rel=1e-10
    )
    bf16 = TrainingLoss("bce", e)(logits.bfloat16(), labels)
    assert bf16.dtype == torch.float32


def test_mixup_and_cutmix_mix_images_and_targets_only_when_on(tiny_config):
    assert build_mixup(TrainConfig(num_classes=5)) is None
    mixup = build_mixup(TrainConfig(num_classes=5, mixup=0.1, cutmix=1.0, label_smoothing=0.1))
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    mixed, targets = mixup(images.clone(), labels)
    assert targets.shape == (8, 5) and torch.allclose(targets.sum(1), torch.ones(8))
    assert not torch.equal(mixed, images) and targets.min() > 0  # smoothed and mixed
    odd = tiny_config(batch_size=15, mixup=0.2)
    with pytest.raises(TrainingError, match="must be even, got 15"):
        fit(odd, progress=False)


def test_random_erasing_erases_only_when_on():
    base = dict(model="resnet_rs_tiny", data="synthetic:40", image_size=16, crop_padding=0)
    off = build_data(TrainConfig(**base))
    on = build_data(TrainConfig(**base, random_erasing=1.0))
    torch.manual_seed(0)
    a = off.train[0][0]
    torch.manual_seed(0)
    b = on.train[0][0]
    assert torch.equal(a, off.train[0][0]) and not torch.equal(a, b)
    assert (a != b).any(0).float().mean() < 0.5  # one box, not the whole image


def test_lamb_is_timms_and_refused_with_grad_mults():
    from timm.optim import Lamb

    plain = create_optimizer(bn_free_net(), TrainConfig(optimizer="lamb"))
    assert isinstance(plain, Lamb)
    repopt = reparam.create_model("repopt_vgg_a0", num_classes=10)
    with pytest.raises(RecipeError, match="trust ratio"):
        create_optimizer(repopt, TrainConfig(optimizer="lamb"))
    assert isinstance(
        create_optimizer(repopt, TrainConfig(optimizer="lamb", grad_mult=False)), Lamb
    )


def test_the_vanillanet_recipe_trains_with_all_its_parts(tmp_path):
    from reparam.app.train import resolve_config

    small = dict(data="synthetic:80", image_size=32, epochs=3, batch_size=16, threads=1)
    config = resolve_config(
        "vanillanet",
        {**small, "model_kwargs": {"width_multiplier": 1 / 64}, "out": str(tmp_path / "v")},
    )
    assert (config.optimizer, config.loss, config.mixup, config.cutmix) == ("lamb", "bce", 0.1, 1.0)
    metrics = fit(config, progress=False)
    assert metrics["epochs"] == 3 and math.isfinite(metrics["train_loss"])
    assert metrics["top1_ema"] is not None  # EMA on, evaluated


def test_randaugment_flip_crop_change_the_image_only_when_on():
    base = dict(model="resnet_rs_tiny", data="synthetic:40", image_size=16, crop_padding=0)
    off = build_data(TrainConfig(**base))
    assert all(torch.equal(off.train[i][0], off.train[i][0]) for i in range(4))
    for piece in ({"randaugment": "rand-m15-n2-mmax15"}, {"crop_padding": 4}, {"hflip": True}):
        on = build_data(TrainConfig(**{**base, **piece}))
        assert any(not torch.equal(on.train[i][0], off.train[i][0]) for i in range(8)), piece
        assert all(torch.equal(on.val[i][0], off.val[i][0]) for i in range(4))  # eval untouched


def test_weight_decay_exemption_rules():
    model = reparam.create_model("resnet_rs_tiny", num_classes=3)
    params = dict(model.named_parameters())
    bn_names = {
        f"{m}.{p}"
        for m, mod in model.named_modules()
        if isinstance(mod, nn.BatchNorm2d)
        for p, _ in mod.named_parameters(recurse=False)
    }
    one_d = {n for n, p in params.items() if p.ndim <= 1}
    assert bn_names < one_d  # SE and fc biases are 1-D but not BN

    decay, no_decay = weight_decay_groups(model, 0.1, "bn")
    assert set(no_decay["names"]) == bn_names and no_decay["weight_decay"] == 0.0
    assert set(decay["names"]) == set(params) - bn_names and decay["weight_decay"] == 0.1
    decay, no_decay = weight_decay_groups(model, 0.1, "1d")
    assert set(no_decay["names"]) == one_d and set(decay["names"]) == set(params) - one_d
    (everything,) = weight_decay_groups(model, 0.1, "none")
    assert set(everything["names"]) == set(params)


def test_optimizer_choice_and_repopt_hook():
    model = reparam.create_model("resnet_rs_tiny", num_classes=3)
    sgd = create_optimizer(model, TrainConfig(nesterov=True, lr=0.3))
    assert (
        type(sgd) is torch.optim.SGD
        and sgd.param_groups[0]["nesterov"]
        and sgd.param_groups[0]["lr"] == 0.3
    )
    adamw = create_optimizer(model, TrainConfig(optimizer="adamw", betas=(0.8, 0.9)))
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["betas"] == (0.8, 0.9)
    repopt = reparam.create_model("repopt_vgg_a0", num_classes=3)
    assert grad_mults(repopt)
    assert isinstance(create_optimizer(repopt, TrainConfig()), RepOptSGD)
    assert isinstance(create_optimizer(repopt, TrainConfig(optimizer="adamw")), RepOptAdamW)
    assert (
        type(create_optimizer(repopt, TrainConfig(grad_mult=False))) is torch.optim.SGD
    )  # ablation


def test_dropout_and_drop_path_reach_the_model_only_when_set():
    cpu = torch.device("cpu")
    model = build_model(
        TrainConfig(model="resnet_rs_tiny", num_classes=3, drop_rate=0.3, drop_path_rate=0.1), cpu
    )
    assert model.drop_rate == 0.3 and model.layer4[0].drop_path.drop_prob == pytest.approx(0.1)
    plain = build_model(TrainConfig(model="resnet_rs_tiny", num_classes=3), cpu)
    assert plain.drop_rate == 0.0 and plain.layer4[0].drop_path is None
    vgg = build_model(TrainConfig(model="vgg_a0", num_classes=3, drop_rate=0.2), cpu)
    assert vgg.head_drop.p == 0.2
    with pytest.raises(ValueError, match="drop_path_rate"):
        build_model(TrainConfig(model="vgg_a0", num_classes=3, drop_path_rate=0.1), cpu)


def test_ema_tracks_weights_and_buffers_only_when_on():
    model = reparam.create_model("resnet_rs_tiny", num_classes=3)
    assert build_ema(model, TrainConfig(ema=False)) is None
    ema = build_ema(model, TrainConfig(ema=True, ema_decay=0.5))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.fc.weight.add_(1.0)
        model.bn1.running_mean.add_(2.0)
    ema.update(model, step=10)
    got = ema.module.state_dict()
    torch.testing.assert_close(got["fc.weight"], start["fc.weight"] + 0.5, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        got["bn1.running_mean"], start["bn1.running_mean"] + 1.0, rtol=0, atol=1e-6
    )


def test_cosine_schedule_with_linear_warmup_per_iteration():
    model = nn.Linear(2, 2)
    config = TrainConfig(lr=1.0, min_lr=0.01, warmup_epochs=2, warmup_lr_init=0.0, epochs=10)
    optimizer = create_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=5, total_steps=50)

    def lr_at(t):
        scheduler.step_update(t)
        return optimizer.param_groups[0]["lr"]

    assert [lr_at(t) for t in range(0, 11, 5)] == pytest.approx([0.0, 0.5, 1.0])
    for t in (15, 30, 45):
        assert lr_at(t) == pytest.approx(0.01 + 0.99 * (1 + math.cos(math.pi * (t - 10) / 40)) / 2)
    assert lr_at(50) == pytest.approx(0.01)


def test_gradient_accumulation_equals_the_full_batch(tmp_path, swap_model, tiny_config):
    results = []
    for accum in (1, 2, 4):
        built = swap_model(lambda: bn_free_net())
        fit(tiny_config(f"a{accum}", epochs=1, accum_steps=accum), progress=False)
        results.append(load_weights(tmp_path / f"a{accum}" / "last.safetensors"))
        assert not torch.equal(results[-1]["4.weight"], built[0][1]["4.weight"])
    for other in results[1:]:
        for key in results[0]:
            torch.testing.assert_close(other[key], results[0][key], rtol=0, atol=1e-6)


def test_grad_clip_bounds_the_first_update(tmp_path, swap_model, tiny_config):
    moves = {}
    for clip in (None, 1e-6):
        built = swap_model(lambda: bn_free_net())
        config = tiny_config(
            f"c{clip}",
            epochs=1,
            grad_clip=clip,
            lr=1.0,
            warmup_epochs=0,
            momentum=0.0,
            weight_decay=0.0,
            stop_after_steps=1,
        )
        fit(config, progress=False)
        after, before = load_weights(tmp_path / f"c{clip}" / "last.safetensors"), built[0][1]
        moves[clip] = math.sqrt(sum(((after[k] - before[k]) ** 2).sum().item() for k in after))
    assert moves[1e-6] <= 1e-6 * (1 + 1e-4) and moves[None] > 1e-3


def test_amp_and_channels_last_switch_independently(tmp_path, swap_model, tiny_config):
    seen = {}
    for amp, channels_last in ((False, False), (True, False), (False, True)):
        record = {}

        def factory(record=record):
            net = bn_free_net()
            net[0].register_forward_hook(
                lambda m, a, o: (
                    record.update(
                        dtype=o.dtype,
                        input_cl=not a[0].is_contiguous(),
                        weight_cl=not m.weight.is_contiguous(),
                    )
                    if m.training
                    else None
                )
            )
            return net

        swap_model(factory)
        fit(
            tiny_config(
                f"{amp}{channels_last}",
                epochs=1,
                amp=amp,
                channels_last=channels_last,
                stop_after_steps=1,
            ),
            progress=False,
        )
        seen[(amp, channels_last)] = (record["dtype"], record["input_cl"], record["weight_cl"])
    assert seen == {
        (False, False): (torch.float32, False, False),
        (True, False): (torch.bfloat16, False, False),
        (False, True): (torch.float32, True, True),
    }


def test_annealing_hook_sets_lambda_every_iteration(tmp_path, tiny_config):
    from reparam.models import annealed

    model = reparam.create_model("reducenet20", num_classes=10)
    assert (
        lambda_schedule(reparam.create_model("resnet_rs_tiny", num_classes=3), TrainConfig())
        is None
    )
    schedule = lambda_schedule(model, TrainConfig(anneal_kind="cosine", anneal_fraction=0.5))
    assert schedule == annealed.LambdaSchedule(kind="cosine", fraction=0.5, per="iteration")
    fit(
        tiny_config(
            model="reducenet20",
            anneal_kind="cosine",
            anneal_fraction=0.5,
            epochs=2,
            stop_after_steps=3,
        ),
        progress=False,
    )
    lams = [
        v
        for k, v in load_weights(tmp_path / "run" / "last.safetensors").items()
        if k.endswith("lam")
    ]
    # lambda was set before steps 0, 1, 2 of 8; the last value is the one saved
    assert lams and all(v.item() == pytest.approx(schedule.value(2, 8, 4)) for v in lams)
    assert schedule.value(2, 8, 4) == pytest.approx(0.75)


def test_ema_copy_follows_lambda_and_fuses(tmp_path, tiny_config):
    """EMA averages buffers; lambda is a schedule value, so the EMA copy must carry it exactly."""
    from reparam.files import load_state

    config = tiny_config(model="reducenet20", epochs=2, ema=True, ema_decay=0.9)
    fit(config, progress=False)
    ema_state = load_state(tmp_path / "run" / "last.state.pt")["ema"]
    lams = [v for k, v in ema_state.items() if k.endswith("lam")]
    assert lams and all(v.item() == 1.0 for v in lams)
    ema_model = reparam.create_model("reducenet20", num_classes=10)
    ema_model.load_state_dict(ema_state)
    reparam.reparameterize(ema_model.eval())  # refused if any lambda < 1
