"""Profile one optimizer step of RepOpt-VGG: RepOptSGD vs torch SGD (for-loop and foreach).

    .venv/bin/python benchmarks/profile_optimizer.py [--model repopt_vgg_a0 --repeats 30
        --threads 2 --record benchmarks/results/speed_optimizer_profile.json]

Same model, same gradients: each optimizer's ``step()`` is timed alone (interleaved windows,
median), and ``torch.profiler`` lists the ops of one RepOptSGD step. The masks cost one
elementwise multiply over the masked weights; anything above that is overhead to remove.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys

import torch
from torch import nn

from reparam import create_model
from reparam.bench.machine import machine_info
from reparam.bench.subjects import LR, MOMENTUM, WEIGHT_DECAY
from reparam.bench.timing import interleaved_windows
from reparam.checkpoint import write_json
from reparam.optim import RepOptSGD, grad_mults


class PerTensorMaskedSGD:
    """Comparison point (not shipped): RepOptSGD's heavy-ball update (dampening 0, no nesterov)
    done one tensor at a time while it is in cache, in place:
    ``buf = m * buf + g * M + wd * W; W -= lr * buf``."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        named = dict(model.named_parameters())
        self.params = [named[n] for n in masks] + [p for n, p in named.items() if n not in masks]
        self.masks = list(masks.values())
        self.bufs = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        for i, (param, buf) in enumerate(zip(self.params, self.bufs)):
            buf.mul_(MOMENTUM)
            if i < len(self.masks):
                buf.addcmul_(param.grad, self.masks[i])
            else:
                buf.add_(param.grad)
            buf.add_(param, alpha=WEIGHT_DECAY)
            param.add_(buf, alpha=-LR)


def per_tensor_matches_repoptsgd(model_name: str) -> float:
    """Max abs difference of the weights after 3 steps, per-tensor loop vs RepOptSGD (float64)."""
    torch.manual_seed(0)
    a = create_model(model_name, num_classes=10).double()
    b = create_model(model_name, num_classes=10).double()
    b.load_state_dict(a.state_dict())
    reference = RepOptSGD(a, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    per_tensor = PerTensorMaskedSGD(b, grad_mults(b))
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    for model, optimizer in ((a, reference), (b, per_tensor)):
        for _ in range(3):
            model.zero_grad()
            model(images).square().mean().backward()
            optimizer.step()
    pairs = zip(a.parameters(), b.parameters())
    return max(float((p.detach() - q.detach()).abs().max()) for p, q in pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="repopt_vgg_a0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", help="write the results JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=100).train()
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 100, (args.batch_size,))
    nn.functional.cross_entropy(model(images), labels).backward()  # fixed gradients for all

    settings = dict(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    optimizers = {
        "RepOptSGD": RepOptSGD(model, **settings),
        "SGD (torch default, for-loop on CPU)": torch.optim.SGD(model.parameters(), **settings),
        "SGD foreach": torch.optim.SGD(model.parameters(), foreach=True, **settings),
        "comparison: RepOptSGD update per tensor, in place": PerTensorMaskedSGD(
            model, grad_mults(model)
        ),
    }
    # the weights drift a little over the windows; every optimizer sees the same drift
    windows = interleaved_windows(
        [opt.step for opt in optimizers.values()], args.steps, warmup=3, repeats=args.repeats
    )
    step_ms = {
        name: statistics.median(1e3 * w.seconds_per_call for w in ws)
        for name, ws in zip(optimizers, windows)
    }
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(5):
            optimizers["RepOptSGD"].step()
    table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    masked = sum(
        p.numel()
        for s in optimizers["RepOptSGD"].state.values()
        if "grad_mult" in s
        for p in [s["grad_mult"]]
    )
    result = {
        "model": args.model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "masked_elements": masked,
        "optimizer_step_ms": step_ms,
        "per_tensor_max_abs_diff_vs_repoptsgd_float64": per_tensor_matches_repoptsgd(args.model),
        "profile_repoptsgd_5_steps": table,
        "machine": machine_info(),
        "command": shlex.join(
            [".venv/bin/python", "benchmarks/profile_optimizer.py", *sys.argv[1:]]
        ),
    }
    print(table, file=sys.stderr)
    print(
        "per-tensor loop vs RepOptSGD (float64, 3 steps): max abs diff "
        f"{result['per_tensor_max_abs_diff_vs_repoptsgd_float64']:.3g}",
        file=sys.stderr,
    )
    for name, ms in step_ms.items():
        print(f"{name:<40} {ms:8.3f} ms/step", file=sys.stderr)
    if args.record:
        write_json(result, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
