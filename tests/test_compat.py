"""The private torch functions behind a version check, and their public fallbacks."""

from __future__ import annotations

import pytest
import torch
from torch.torch_version import TorchVersion

import reparam
from reparam import compat
from reparam.testing import rel_err

DT = torch.float64

SETTINGS = {
    "plain": dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
    "heavy ball": dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0),
    "nesterov": dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.0),
    "weight decay": dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=1e-2),
    "nesterov, weight decay": dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-2),
    "dampening": dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-2),
}
# element counts in whole SIMD vectors (64 of float32 or float64 fills any x86 vector width)
# and with a tail that torch's kernel updates element by element
WHOLE_VECTORS, TAILS = [(64, 3, 3, 3), (4096,)], [(37,), (5, 7)]


def run_updates(fused: bool, shapes, dtype, settings: dict, monkeypatch, steps: int = 3):
    """Parameters and buffers after ``steps`` updates from fixed random tensors."""
    monkeypatch.setattr(compat, "has_fused_sgd", lambda: fused)
    generator = torch.Generator().manual_seed(0)

    def randn(shape):
        return torch.randn(shape, generator=generator, dtype=dtype)

    params = [randn(shape) for shape in shapes]
    buffers = [torch.empty_like(p) for p in params]
    for step in range(steps):
        grads = [randn(shape) for shape in shapes]
        kept = [g.clone() for g in grads]
        compat.sgd_update_(params, grads, buffers, is_first_step=step == 0, lr=0.1, **settings)
        assert all(torch.equal(g, k) for g, k in zip(grads, kept))  # gradients only read
    return params + (buffers if settings["momentum"] else [])


def test_the_fused_kernel_runs_on_the_tested_torch():
    assert compat.torch_in_range() and compat.has_fused_sgd()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_the_public_sgd_update_equals_the_fused_kernel(name, dtype, monkeypatch):
    """Bit for bit on whole SIMD vectors, where both round alike. In a tensor's tail torch's
    kernel computes element by element and rounds ``weight_decay * p`` and ``(1 - dampening) *
    d`` on their own, so there the two can part by an ulp of one term per step: at most
    ``steps`` machine epsilons relative."""
    settings = SETTINGS[name]
    fused = run_updates(True, WHOLE_VECTORS, dtype, settings, monkeypatch)
    public = run_updates(False, WHOLE_VECTORS, dtype, settings, monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(fused, public))
    fused = run_updates(True, TAILS, dtype, settings, monkeypatch)
    public = run_updates(False, TAILS, dtype, settings, monkeypatch)
    for a, b in zip(fused, public):
        assert rel_err(b, a) <= 3 * torch.finfo(dtype).eps


def test_rep_opt_sgd_on_the_fallback_takes_the_same_steps(monkeypatch):
    """Masks, blocks and first-step buffers reach both paths alike (float64; the tails as above)."""

    def train(fused: bool) -> dict:
        monkeypatch.setattr(compat, "has_fused_sgd", lambda: fused)
        torch.manual_seed(0)
        model = reparam.create_model("repopt_vgg_a0", num_classes=3).double()
        optimizer = reparam.optim.RepOptSGD(
            model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3
        )
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=DT)
        for _ in range(2):
            optimizer.zero_grad()
            model(x).logsumexp(1).mean().backward()
            optimizer.step()
        return model.state_dict()

    fused, public = train(True), train(False)
    assert (
        max(rel_err(public[key], fused[key]) for key in fused if fused[key].is_floating_point())
        <= 1e-12
    )


@pytest.mark.parametrize("version", ["2.5.1", "3.0.0"])
def test_outside_the_tested_torch_range_the_public_fallbacks_run(version, monkeypatch):
    monkeypatch.setattr(torch, "__version__", TorchVersion(version))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert not compat.torch_in_range() and not compat.has_fused_sgd()
    assert compat.cpu_has_native_bf16() == compat._cpuinfo_has({"avx512_bf16", "amx_tile"})


def test_native_bf16_reads_both_cpu_features(monkeypatch):
    for avx512, amx in ((False, False), (True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert compat.cpu_has_native_bf16() is (avx512 or amx)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(compat, "CPUINFO", cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 amx_tile\n")
    assert compat._cpuinfo_has({"amx_tile"}) and not compat._cpuinfo_has({"avx512_bf16"})
    cpuinfo.unlink()
    assert not compat._cpuinfo_has({"amx_tile"})  # not Linux
