"""The benchmark machinery: memory accounting, max-batch search, interleaving, JSON schema.

No timed assertions: speed is measured by ``benchmarks/``, not asserted here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reparam.app.bench.infer import InferBenchConfig, run_infer_bench
from reparam.app.bench.maxbatch import largest_fitting_batch, predict_max_batch
from reparam.app.bench.memory import (
    MIB,
    StorageCounter,
    activation_memory_mb,
    measure_training_memory,
    optimizer_tensors,
)
from reparam.app.bench.subjects import ModelSpec, TrainSubject, check_spec, parse_spec
from reparam.app.bench.timing import interleaved_windows, paired_ratio
from reparam.app.bench.train import TrainBenchConfig, run_train_bench
from reparam.app.cli import main
from reparam.errors import UserError

CONTRACT_KEYS = {
    "model",
    "batch_size",
    "image_size",
    "optimizer",
    "train_images_per_s",
    "peak_train_memory_mb",
    "machine",
}
MACHINE_KEYS = {"cpu_model", "cores", "torch_version", "threads"}


def _quiet(message: str) -> None:
    pass


# --- memory accounting ---------------------------------------------------------------------------


def test_storage_counter_counts_each_storage_once():
    base = torch.zeros(10, dtype=torch.float64)
    counter = StorageCounter()
    assert counter.add([base, base[2:5], base.view(2, 5)]) == 80
    assert counter.add([base[1:]]) == 0
    assert counter.add([torch.zeros(3, dtype=torch.float32)]) == 12


def _tiny_setup(batch: int, with_bn: bool = False):
    torch.manual_seed(0)
    layers = [nn.Linear(4, 8)] + ([nn.BatchNorm1d(8)] if with_bn else []) + [nn.ReLU()]
    model = nn.Sequential(*layers).double()
    images = torch.randn(batch, 4, dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def forward_loss():
        return model(images).sum()  # sum's backward saves no tensor

    def step():
        optimizer.zero_grad(set_to_none=True)
        forward_loss().backward()
        optimizer.step()

    return model, optimizer, step, forward_loss


def test_memory_breakdown_matches_hand_count_and_adds_up():
    batch = 3
    model, optimizer, step, forward_loss = _tiny_setup(batch)
    memory = measure_training_memory(model, optimizer, step, forward_loss, batch)
    parameters = (4 * 8 + 8) * 8  # float64
    assert memory.parameters_mb * MIB == parameters
    assert memory.gradients_mb * MIB == parameters
    assert memory.optimizer_state_mb * MIB == parameters  # one momentum buffer per parameter
    assert memory.buffers_mb == 0
    # addmm saves its input [3, 4] (the weight is a parameter, not counted again); ReLU its output
    assert memory.activations_mb * MIB == (batch * 4 + batch * 8) * 8
    parts = (
        memory.parameters_mb
        + memory.buffers_mb
        + memory.gradients_mb
        + memory.optimizer_state_mb
        + memory.activations_mb
    )
    assert memory.total_mb == parts
    record = memory.as_dict()
    assert record["total_mb"] == parts
    assert record["activations_per_image_mb"] * batch == memory.activations_mb


def test_activations_grow_linearly_and_exclude_buffers():
    for batch in (5, 10):
        model, _, _, forward_loss = _tiny_setup(batch, with_bn=True)
        # Linear saves [N, 4], BN its input [N, 8] and mean/invstd [8] each (running stats are
        # buffers, not activations), ReLU its output [N, 8]; float64
        expected = (batch * (4 + 8 + 8) + 2 * 8) * 8
        assert activation_memory_mb(model, forward_loss) * MIB == expected


def test_optimizer_tensors_include_masks_held_as_attributes():
    parameter = nn.Parameter(torch.zeros(5))

    class MaskedSGD(torch.optim.SGD):
        def __init__(self, params, masks):
            super().__init__(params, lr=0.1, momentum=0.9)
            self.masks = masks

    mask = torch.ones(5)
    optimizer = MaskedSGD([parameter], {parameter: mask})
    assert any(t is mask for t in optimizer_tensors(optimizer))
    counter = StorageCounter()
    counter.add([parameter])
    assert counter.add(optimizer_tensors(optimizer)) == 5 * 4  # the mask; the parameter not again


# --- max batch search ----------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    fixed=st.integers(0, 500),
    per_image=st.integers(1, 50),
    budget=st.integers(0, 5000),
    guess=st.integers(-5, 400),
    limit=st.integers(3, 300),
    minimum=st.integers(1, 3),
)
def test_largest_fitting_batch_equals_brute_force(fixed, per_image, budget, guess, limit, minimum):
    calls = []

    def fits(batch):
        assert minimum <= batch <= limit, f"probed batch {batch} outside [{minimum}, {limit}]"
        calls.append(batch)
        return fixed + batch * per_image <= budget

    fitting = [b for b in range(minimum, limit + 1) if fixed + b * per_image <= budget]
    assert largest_fitting_batch(fits, guess, limit, minimum) == max(fitting, default=0)
    assert len(calls) <= 4 * math.log2(limit + 2) + 4


def test_exact_guess_costs_two_probes_and_prediction_is_floor():
    calls = []

    def fits(batch):
        calls.append(batch)
        return 100 + 3 * batch <= 400

    guess = predict_max_batch(400, 100, 3)
    assert guess == 100
    assert largest_fitting_batch(fits, guess) == 100
    assert calls == [100, 101]
    assert predict_max_batch(50, 100, 3) == 0
    with pytest.raises(ValueError, match="per-image"):
        predict_max_batch(50, 1, 0)


# --- interleaving ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_interleaved_windows_rotate_order_and_average_the_phase():
    order = []

    def make(name, phase):
        def call():
            order.append(name)
            return phase

        return call

    windows = interleaved_windows([make("a", 0.5), make("b", 0.25)], steps=2, warmup=1, repeats=3)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"] + ["a", "a", "b", "b"]
    assert [len(w) for w in windows] == [3, 3]
    assert all(w.phase_seconds_per_call == 0.5 for w in windows[0])
    assert all(w.phase_seconds_per_call == 0.25 for w in windows[1])
    assert paired_ratio([2.0, 9.0, 4.0], [1.0, 3.0, 1.0]) == 3.0
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


def _render_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "render.py"
    spec = importlib.util.spec_from_file_location("bench_render", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_headline_ratios_are_paired_per_round():
    def record(model, images_per_s, optimizer_ms, memory_mb, state_mb, activations_mb, max_batch):
        return {
            "model": model,
            "batch_size": 32,
            "window_images_per_s": images_per_s,
            "window_optimizer_step_ms": optimizer_ms,
            "peak_train_memory_mb": memory_mb,
            "memory": {"activations_mb": activations_mb, "optimizer_state_mb": state_mb},
            "max_batch_size": max_batch,
        }

    records = [
        record("repopt_vgg_a0", [200.0, 100.0, 300.0], [12.0, 12.0, 12.0], 90.0, 20.0, 6.0, 300),
        record("repvgg_a0", [100.0, 100.0, 100.0], [10.0, 10.0, 10.0], 120.0, 15.0, 9.0, 200),
        record("repopt_vgg_a0@sgd", [320.0, 320.0, 320.0], [10.0, 11.0, 8.0], 80.0, 10.0, 6.0, 320),
    ]
    headline = _render_module().headline(records, 32)
    assert headline["repopt_over_repvgg_throughput"] == 2.0  # median of 2, 1, 3
    assert headline["repopt_over_repvgg_memory"] == 0.75
    assert headline["repopt_over_repvgg_activations"] == 6.0 / 9.0
    assert headline["repopt_over_repvgg_max_batch"] == 1.5
    assert headline["repopt_grad_mask_memory_mb"] == 10.0  # optimizer state beyond SGD's
    assert headline["repopt_optimizer_step_over_sgd"] == 1.2  # median of 1.2, 12/11, 1.5
    # SGD step = 32 / 320 s = 100 ms; optimizer differences 2, 1, 4 ms -> median 2%
    assert headline["repopt_optimizer_overhead_of_step"] == pytest.approx(0.02, rel=1e-12)
    assert "repopt_over_plain_vgg_throughput" not in headline
    assert "repopt_over_plain_vgg_memory" not in headline


def _curve_record(model, images_per_s, fixed_mb, per_image_mb, state_mb, max_batch, batch=32):
    activations = per_image_mb * batch
    return {
        "model": model,
        "batch_size": batch,
        "train_images_per_s": statistics.median(images_per_s),
        "window_images_per_s": images_per_s,
        "peak_train_memory_mb": fixed_mb + activations,
        "memory": {
            "activations_mb": activations,
            "activations_per_image_mb": per_image_mb,
            "optimizer_state_mb": state_mb,
        },
        "max_batch_size": max_batch,
        "max_batch": {"budget_mb": 512.0},
        "machine": {"cpu_model": "cpu", "cores": 2, "torch_version": "t", "threads": 2},
        "command": "reparam bench train",
    }


def test_render_cost_curves_ratios_targets_and_explanation(tmp_path):
    render = _render_module()
    assert render.load_curves(tmp_path) == {}  # no curve files: the section is left out
    for size, scale in ((32, 1), (224, 49)):  # saved activations grow with the pixels
        records = [
            _curve_record("vgg_a0", [100.0, 100.0, 100.0], 80.0, scale * 0.3, 27.0, 10),
            _curve_record("repopt_vgg_a0", [99.0, 101.0, 99.5], 100.0, scale * 0.3, 47.0, 9),
            _curve_record("repvgg_a0", [50.0, 80.0, 70.0], 90.0, scale * 0.45, 30.0, 6),
        ]
        (tmp_path / f"speed_curve_{size}.json").write_text(json.dumps(records))
    curves = render.load_curves(tmp_path)
    assert list(curves) == [32, 224] and render.curve_batch(curves) == 32
    ratios = render.curve_ratios(curves[32], 32)
    assert ratios["repopt_over_plain_throughput"] == 0.995  # median of 0.99, 1.01, 0.995
    assert ratios["repopt_over_repvgg_throughput"] == pytest.approx(99.5 / 70)
    assert ratios["repopt_over_repvgg_memory"] == pytest.approx(109.6 / 104.4)
    assert ratios["repopt_over_repvgg_max_batch"] == 1.5
    rows = render.curve_ratio_rows(curves, 32)
    assert rows[0][:4] == [
        "32",
        "1.421x",
        "1.050x (<= 0.90x: **not met**)",
        "0.995x (>= 0.99x: met)",
    ]
    assert rows[1][:3] == ["224", "1.421x", "0.717x (<= 0.72x: met)"]
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    (tmp_path / "speed_train_a0.json").write_text((results / "speed_train_a0.json").read_text())
    text = " ".join(render.render_docs(tmp_path).split())  # the section in the page's words
    assert "| 32 | 1.421x | 1.050x (<= 0.90x: **not met**) | 0.995x (>= 0.99x: met) |" in text
    assert "masks in the optimizer state: 20.0 MiB" in text
    assert "from batch 67 on at 32 px" in text  # 10 MiB more fixed / 0.15 MiB less per image
    assert render.plot_curves(curves, 32, tmp_path) == [
        "speed_curve_throughput.png",
        "speed_curve_memory.png",
    ]


def test_parse_spec():
    assert parse_spec("repopt_vgg_a0@sgd") == ModelSpec("repopt_vgg_a0", "sgd")
    assert parse_spec("timm:repvgg_a0", "sgd") == ModelSpec("timm:repvgg_a0", "sgd")
    assert parse_spec("vgg_a0").label == "vgg_a0"
    with pytest.raises(UserError, match="unknown optimizer"):
        parse_spec("vgg_a0@adam")
    assert check_spec(parse_spec("timm:repvgg_a0")).is_timm
    with pytest.raises(UserError, match="unknown model 'vgg_z9'"):
        check_spec(parse_spec("vgg_z9"))
    with pytest.raises(UserError, match="timm has no model"):
        check_spec(parse_spec("timm:vgg_z9"))


def test_train_subject_bf16_channels_last_path():
    fp32 = TrainSubject(ModelSpec("vgg_a0"), 2, 8, 10)
    fast = TrainSubject(ModelSpec("vgg_a0"), 2, 8, 10, amp=True, channels_last=True)
    conv = next(m for m in fast.model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.images.is_contiguous(memory_format=torch.channels_last)
    assert not fp32.images.is_contiguous(memory_format=torch.channels_last)
    before = conv.weight.detach().clone()
    fast.step()
    assert conv.weight.dtype == torch.float32 and not torch.equal(conv.weight, before)

    def per_image_mb(subject):  # autocast also saves bf16 weight copies: take the growth
        small = activation_memory_mb(subject.model, subject.forward_loss)
        subject.set_batch(4)
        return (activation_memory_mb(subject.model, subject.forward_loss) - small) / 2

    assert fast.images.is_contiguous(memory_format=torch.channels_last)
    assert 0.4 < per_image_mb(fast) / per_image_mb(fp32) < 0.7  # bf16 activations


# --- end to end (tiny) ----------------------------------------------------------------------------

BUDGET = 83.0  # MiB; vgg_a0 at 10 classes: ~80.7 MiB fixed, ~0.019 MiB per 8x8 image


@pytest.mark.slow
def test_train_bench_json_schema_and_verified_max_batch():
    config = TrainBenchConfig(
        specs=(ModelSpec("vgg_a0"),),
        batch_sizes=(2, 3),
        image_size=8,
        num_classes=10,
        steps=1,
        warmup=0,
        repeats=2,
        threads=1,
        memory_budget_mb=BUDGET,
        command="test",
    )
    results = run_train_bench(config, _quiet, fresh_process=False)
    assert [(r["model"], r["batch_size"]) for r in results] == [("vgg_a0", 2), ("vgg_a0", 3)]
    small, large = results  # saved activations are exactly a * batch + c
    per_image = large["memory"]["activations_mb"] - small["memory"]["activations_mb"]
    constant = small["memory"]["activations_mb"] - 2 * per_image
    fixed = small["memory"]["total_mb"] - small["memory"]["activations_mb"]
    found = small["max_batch_size"]
    assert found > 10
    assert fixed + found * per_image + constant <= BUDGET
    assert fixed + (found + 1) * per_image + constant > BUDGET
    for record in results:
        assert CONTRACT_KEYS | {"max_batch_size"} <= record.keys()
        assert MACHINE_KEYS <= record["machine"].keys()
        assert record["optimizer"] == "SGD"
        assert len(record["window_images_per_s"]) == 2
        memory = record["memory"]
        assert record["peak_train_memory_mb"] == memory["total_mb"]
        assert record["max_batch"]["verified_fits"]
        assert record["max_batch"]["verified_memory_mb"] <= BUDGET
    json.dumps(results)


@pytest.mark.slow
def test_infer_bench_fused_matches_train_form_and_timm_maps_onto_ours():
    config = InferBenchConfig(
        specs=(ModelSpec("repvgg_a0"), ModelSpec("timm:repvgg_a0")),
        batch_sizes=(1,),
        image_size=16,
        num_classes=10,
        steps=1,
        warmup=0,
        repeats=1,
        threads=1,
        onnx=False,
    )
    results = run_infer_bench(config, _quiet)
    assert {(r["model"], r["variant"]) for r in results} == {
        (m, v) for m in ("repvgg_a0", "timm:repvgg_a0") for v in ("train_form", "fused")
    }
    for record in results:
        assert record["max_rel_diff_vs_train_form"] < 1e-5  # float32
        assert record["latency_ms"] > 0 and MACHINE_KEYS <= record["machine"].keys()
    timm_fused = [r for r in results if r["model"] == "timm:repvgg_a0" and r["variant"] == "fused"]
    assert timm_fused[0]["max_rel_diff_vs_reparam_fused"] < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("compiles", [True, False])
def test_infer_bench_compile_variant_times_apart_or_records_the_failure(monkeypatch, compiles):
    def fake_compile(model, **kwargs):  # torch.compile's contract, without the minutes
        if not compiles:
            raise RuntimeError("no C++ compiler found\nsecond line")
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    config = InferBenchConfig(
        specs=(ModelSpec("timm:test_resnet"),),
        batch_sizes=(1, 2),
        image_size=8,
        num_classes=10,
        steps=1,
        warmup=0,
        repeats=1,
        threads=1,
        onnx=False,
        compile=True,
    )
    results = run_infer_bench(config, _quiet)
    compiled = [r for r in results if r["variant"] == "compiled"]
    assert [r["batch_size"] for r in compiled] == [1, 2]
    assert all(r["runtime"] == "torch_compile" for r in compiled)
    if compiles:
        assert all(r["compile_s"] > 0 and r["latency_ms"] > 0 for r in compiled)
        assert all(r["max_rel_diff_vs_train_form"] < 1e-5 for r in compiled)
    else:
        assert all(r["error"] == "RuntimeError: no C++ compiler found" for r in compiled)
        assert all(r["latency_ms"] is None for r in compiled)
    rows = _render_module().deploy_rows(results)
    failed = ["timm:test_resnet", "torch.compile", "failed: RuntimeError: no C++ compiler found"]
    assert (failed in rows) != compiles
    assert rows[0][:2] == ["timm:test_resnet", "torch eager"]


@pytest.mark.slow
def test_cli_prints_one_json_list_on_stdout(capsys):
    code = main(
        [
            "bench",
            "train",
            "--models",
            "timm:test_resnet",
            "--batch-size",
            "2",
            "--image-size",
            "8",
            "--num-classes",
            "10",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--json",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert isinstance(results, list) and CONTRACT_KEYS <= results[0].keys()
    assert "max_batch_size" not in results[0]
    assert results[0]["command"].startswith(
        "reparam bench train --models timm:test_resnet --batch-size 2"
    )
    assert "reparam bench:" in captured.err


def test_cli_infer_records_its_command_line(capsys):
    argv = "bench infer --models timm:test_resnet --batch-size 1 --image-size 8 --num-classes 10"
    argv += " --steps 1 --warmup 0 --repeats 1 --threads 1 --no-onnx --json"
    assert main(argv.split()) == 0
    results = json.loads(capsys.readouterr().out)
    assert {r["variant"] for r in results} == {"train_form", "fused"}
    assert results[0]["command"].endswith("--threads 1 --no-onnx")
