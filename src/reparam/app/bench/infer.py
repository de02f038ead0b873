"""``reparam bench infer``: latency and images/s of each deploy path, side by side.

Per model, the variants (all float32 unless named otherwise):

- ``train_form``: the model as trained, eval mode, torch eager;
- ``fused``: ``reparam.reparameterize(model)`` (timm models: ``timm.utils.reparameterize_model``);
- ``onnx_fp32`` / ``onnx_int8``: the fused model exported with ``reparam.app.deploy`` and run by ONNX
  Runtime, FP32 and INT8 QDQ (per-channel MinMax on random calibration images: a speed figure
  only; accuracy of INT8 is the deployment benchmarks' job);
- ``compiled`` (with ``compile=True``): ``torch.compile(fused)``, mode default, static shapes.
  Its first call at each batch size compiles; that time is ``compile_s`` and is left out of the
  latency. When compiling fails, its records hold ``error`` (a one-line reason) and no timings.

BatchNorm running statistics are randomised first, so the fusion is not a no-op; annealed
activations (ReduceNet, VanillaNet) are put in their end-of-training state (lambda = 1) by
``reparam.fuse.prepare_for_deploy``. Each record
holds ``max_abs_diff_vs_train_form`` (the variant's logits vs the train form's; ``max_rel_...``
divides by the largest train-form logit) and, for timm's fused RepVGG when ours is in the same
run and timm's weights map onto ours (``reparam.models.convert``),
``max_abs_diff_vs_reparam_fused`` / ``max_rel_diff_vs_reparam_fused``: the two fused models given
equal weights.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.utils.model import reparameterize_model as timm_reparameterize
from torch import Tensor, nn

from reparam.app.bench.machine import machine_info
from reparam.app.bench.subjects import TIMM_PREFIX, ModelSpec, build_model
from reparam.app.bench.timing import interleaved_windows
from reparam.fuse import prepare_for_deploy, reparameterize
from reparam.models.convert import load_timm_repvgg_state
from reparam.quant.onnx import export_onnx, open_session, run_session
from reparam.quant.ort import QuantSettings, quantize_onnx
from reparam.testing import randomize_batchnorm_

__all__ = ["InferBenchConfig", "run_infer_bench"]

Progress = Callable[[str], None]
Runner = Callable[[Tensor], Tensor]
RUNTIMES = {
    "train_form": "torch_eager",
    "fused": "torch_eager",
    "compiled": "torch_compile",
    "onnx_fp32": "onnxruntime",
    "onnx_int8": "onnxruntime",
}


@dataclass(frozen=True)
class InferBenchConfig:
    specs: tuple[ModelSpec, ...]
    batch_sizes: tuple[int, ...] = (1, 32)
    image_size: int = 32
    num_classes: int = 100
    steps: int = 10
    warmup: int = 3
    repeats: int = 5
    threads: int = 2
    onnx: bool = True
    compile: bool = False
    command: str = ""


def _fuse(spec: ModelSpec, model: nn.Module) -> nn.Module:
    if spec.is_timm:
        return timm_reparameterize(model, inplace=False).eval()
    return reparameterize(model)


def _torch_runner(model: nn.Module) -> Runner:
    def run(images: Tensor) -> Tensor:
        with torch.inference_mode():
            return model(images)

    return run


def _timed_call(run: Runner, images: Tensor) -> Callable[[], None]:
    def call() -> None:
        run(images)

    return call


def _onnx_runners(
    fused: nn.Module, image_size: int, threads: int, folder: Path, name: str
) -> dict[str, Runner]:
    fp32 = export_onnx(fused, folder / f"{name}.onnx", image_size)
    generator = torch.Generator().manual_seed(1)
    calibration = torch.randn(32, 3, image_size, image_size, generator=generator)
    int8 = folder / f"{name}.int8.onnx"
    quantize_onnx(fp32, int8, calibration.numpy(), QuantSettings(calib_images=32))
    runners = {}
    for variant, path in (("onnx_fp32", fp32), ("onnx_int8", int8)):
        # idle ORT threads sleep instead of spinning: spinning threads would steal the cores
        # from whichever variant runs next in the interleaved rounds
        session = open_session(path, threads, allow_spinning=False)
        runners[variant] = lambda images, s=session: torch.from_numpy(run_session(s, images))
    return runners


def _compiled_runner(
    fused: nn.Module, inputs: dict[int, Tensor], probe: Tensor
) -> tuple[Runner | None, dict[int, float] | str]:
    """``torch.compile(fused)`` and the seconds of its first call per batch size (the compile),
    or ``(None, reason)`` when compiling or running it fails."""
    try:
        run = _torch_runner(torch.compile(fused, dynamic=False))
        compile_s = {}
        for batch, images in inputs.items():
            start = time.perf_counter()
            run(images)
            compile_s[batch] = time.perf_counter() - start
        run(probe)
    except Exception as err:  # noqa: BLE001 - any backend failure is recorded, not raised
        reason = str(err).strip().splitlines()
        return None, f"{type(err).__name__}: {reason[0] if reason else ''}"
    return run, compile_s


def _timm_to_ours(
    models: dict[ModelSpec, nn.Module], spec: ModelSpec, num_classes: int
) -> nn.Module | None:
    """Our model of the same name loaded with timm ``spec``'s weights, or None when not mappable."""
    ours = [s for s in models if s.name == spec.name[len(TIMM_PREFIX) :]]
    if not ours or not spec.name.startswith(TIMM_PREFIX + "repvgg_"):
        return None
    mapped = build_model(ours[0], num_classes)
    load_timm_repvgg_state(mapped, models[spec].state_dict())
    return mapped.eval()


def run_infer_bench(config: InferBenchConfig, progress: Progress) -> list[dict[str, Any]]:
    """One record per (model, variant, batch size)."""
    torch.set_num_threads(config.threads)
    specs = tuple(dict.fromkeys(ModelSpec(s.name) for s in config.specs))  # optimizer irrelevant
    models: dict[ModelSpec, nn.Module] = {}
    for spec in specs:
        torch.manual_seed(0)
        model = build_model(spec, config.num_classes)
        generator = torch.Generator().manual_seed(0)
        models[spec] = prepare_for_deploy(randomize_batchnorm_(model, generator))
    probe = torch.randn(
        8, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(2)
    )
    inputs = {
        b: torch.randn(b, 3, config.image_size, config.image_size) for b in config.batch_sizes
    }
    runners: list[tuple[ModelSpec, str, Runner, dict[str, Any]]] = []
    failed: list[tuple[ModelSpec, str]] = []  # (model, why torch.compile failed)
    compile_seconds: dict[tuple[ModelSpec, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="reparam-bench-") as tmp:
        for spec in specs:
            progress(f"infer: preparing {spec.label}")
            model = models[spec]
            fused = _fuse(spec, model)
            variants: dict[str, Runner] = {
                "train_form": _torch_runner(model),
                "fused": _torch_runner(fused),
            }
            if config.compile:
                progress(f"infer: compiling {spec.label}")
                compiled, outcome = _compiled_runner(fused, inputs, probe)
                if compiled is None:
                    failed.append((spec, outcome))
                else:
                    variants["compiled"] = compiled
                    compile_seconds |= {(spec, b): s for b, s in outcome.items()}
            if config.onnx and not spec.is_timm:
                variants |= _onnx_runners(
                    fused, config.image_size, config.threads, Path(tmp), spec.name
                )
            reference = variants["train_form"](probe)
            scale = float(reference.abs().max())
            extra_of: dict[str, dict[str, Any]] = {}
            for variant, run in variants.items():
                counted = model if variant == "train_form" else fused
                diff = float((run(probe) - reference).abs().max())
                extra_of[variant] = {
                    "max_abs_diff_vs_train_form": diff,
                    "max_rel_diff_vs_train_form": diff / scale,
                    "parameters": sum(p.numel() for p in counted.parameters()),
                }
            mapped = _timm_to_ours(models, spec, config.num_classes) if spec.is_timm else None
            if mapped is not None:
                ours_fused = _fuse(ModelSpec(spec.name[len(TIMM_PREFIX) :]), mapped)
                theirs, ours = variants["fused"](probe), _torch_runner(ours_fused)(probe)
                diff = float((theirs - ours).abs().max())
                extra_of["fused"]["max_abs_diff_vs_reparam_fused"] = diff
                extra_of["fused"]["max_rel_diff_vs_reparam_fused"] = diff / float(ours.abs().max())
            runners.extend(
                (spec, variant, run, extra_of[variant]) for variant, run in variants.items()
            )
        keys = [(entry, b) for entry in runners for b in config.batch_sizes]
        machine_before = machine_info()
        windows = interleaved_windows(
            [_timed_call(entry[2], inputs[b]) for entry, b in keys],
            config.steps,
            config.warmup,
            config.repeats,
            on_round=lambda r: progress(f"infer: round {r + 1}/{config.repeats} done"),
        )
    machine = machine_before | {"load_average_after": machine_info()["load_average"]}

    def record(spec: ModelSpec, variant: str, batch: int, **fields: Any) -> dict[str, Any]:
        return {
            "benchmark": "infer",
            "model": spec.label,
            "variant": variant,
            "runtime": RUNTIMES[variant],
            "batch_size": batch,
            "image_size": config.image_size,
            "num_classes": config.num_classes,
            **fields,
            "steps": config.steps,
            "warmup": config.warmup,
            "repeats": config.repeats,
            "machine": machine,
            "command": config.command,
        }

    results = []
    for ((spec, variant, _, extra), batch), variant_windows in zip(keys, windows):
        latency_ms = [1e3 * w.seconds_per_call for w in variant_windows]
        compiled = {"compile_s": compile_seconds[spec, batch]} if variant == "compiled" else {}
        results.append(
            record(
                spec,
                variant,
                batch,
                latency_ms=statistics.median(latency_ms),
                images_per_s=batch / (statistics.median(latency_ms) / 1e3),
                window_latency_ms=latency_ms,
                **compiled,
                **extra,
            )
        )
    results += [
        record(spec, "compiled", b, latency_ms=None, images_per_s=None, error=reason)
        for spec, reason in failed
        for b in config.batch_sizes
    ]
    return results
