"""Time one optimizer step and count optimizer-state memory: RepOptSGD / RepOptAdamW vs torch.

    .venv/bin/python benchmarks/profile_optimizer.py [--models repopt_vgg_a0,repopt_vgg_b1
        --steps 10 --repeats 15 --threads 2 --record benchmarks/results/speed_optimizer_profile.json]

Per model, same weights and the same fixed gradients for every optimizer (copied back into
``.grad`` before every step, as the RepOptimizers overwrite it; the copy's median time is
subtracted): each one's ``step()`` is timed alone (interleaved windows, median ms per step):
RepOptSGD heavy-ball (factored and full masks) and Nesterov, torch SGD heavy-ball and Nesterov
(torch's default, the for-loop on CPU, and ``fused=True``, the kernel RepOptSGD runs after its
masks), RepOptAdamW and torch AdamW. Optimizer state = the bytes of the tensors an optimizer holds
besides the parameters (momentum / moments, masks or their factors and tiles, scratch), counted
after one step as ``reparam bench train`` counts them.

Then, on ``--training-model``, each ``step()`` is timed inside training (:func:`in_training`):
torch SGD, RepOptSGD, RepOptSGD with its masks' per-tap factors only (no identity diagonal) and
RepOptSGD without masks, which splits RepOptSGD's extra time into the masks' multiply and their
diagonal patches, and RepOptSGD with 0.5, 1 and 4 MiB blocks instead of 2.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from reparam import create_model
from reparam.app.bench.machine import machine_info
from reparam.app.bench.memory import MIB, StorageCounter, optimizer_tensors
from reparam.app.bench.subjects import LR, MOMENTUM, WEIGHT_DECAY
from reparam.app.bench.timing import interleaved_windows
from reparam.files import write_json
from reparam.optim import RepOptAdamW, RepOptSGD, param_grad_mults

ADAMW_LR, ADAMW_WEIGHT_DECAY = 1e-3, 0.05
BLOCK_MIB = (0.5, 1, 4)  # block sizes tried inside training besides the default 2 MiB


def optimizers(model: nn.Module) -> dict[str, Callable[[], torch.optim.Optimizer]]:
    """The compared optimizers of ``model``, by label, as constructors."""
    sgd = dict(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    adamw = dict(lr=ADAMW_LR, weight_decay=ADAMW_WEIGHT_DECAY)
    params = model.parameters
    return {
        "RepOptSGD heavy-ball": lambda: RepOptSGD(model, **sgd),
        "RepOptSGD heavy-ball, full masks": lambda: RepOptSGD(model, factor_masks=False, **sgd),
        "torch SGD heavy-ball": lambda: torch.optim.SGD(params(), **sgd),
        "torch SGD heavy-ball, fused": lambda: torch.optim.SGD(params(), fused=True, **sgd),
        "RepOptSGD nesterov": lambda: RepOptSGD(model, nesterov=True, **sgd),
        "torch SGD nesterov": lambda: torch.optim.SGD(params(), nesterov=True, **sgd),
        "torch SGD nesterov, fused": lambda: torch.optim.SGD(
            params(), nesterov=True, fused=True, **sgd
        ),
        "RepOptAdamW": lambda: RepOptAdamW(model, **adamw),
        "RepOptAdamW, full masks": lambda: RepOptAdamW(model, factor_masks=False, **adamw),
        "torch AdamW": lambda: torch.optim.AdamW(params(), **adamw),
    }


def state_mib(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """MiB of the tensors ``optimizer`` holds besides ``model``'s parameters (after a step)."""
    counter = StorageCounter()
    counter.add(model.parameters())
    return counter.add(optimizer_tensors(optimizer)) / MIB


def profile_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=100).train()
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 100, (args.batch_size,))
    nn.functional.cross_entropy(model(images), labels).backward()  # fixed gradients for all
    grads = [p.grad for p in model.parameters()]
    fixed = [g.clone() for g in grads]

    def restore() -> None:  # the RepOptimizers overwrite .grad (their contract)
        torch._foreach_copy_(grads, fixed)

    def timed(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
        def call() -> None:
            restore()
            optimizer.step()

        return call

    built = {label: make() for label, make in optimizers(model).items()}
    for optimizer in built.values():
        timed(optimizer)()  # creates the state
    memory = {label: state_mib(model, optimizer) for label, optimizer in built.items()}
    # the weights drift a little over the windows; every optimizer sees the same drift. Each
    # timed call restores the gradients first; the restore's own median is subtracted.
    windows = interleaved_windows(
        [restore, *map(timed, built.values())],
        args.steps,
        warmup=3,
        repeats=args.repeats,
    )
    medians = [statistics.median(1e3 * w.seconds_per_call for w in ws) for ws in windows]
    masked = RepOptSGD(model, lr=LR)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "masked_elements": sum(
            p.numel() for p in model.parameters() if masked.grad_mult(p) is not None
        ),
        "optimizer_step_ms": {label: ms - medians[0] for label, ms in zip(built, medians[1:])},
        "gradient_restore_ms": medians[0],
        "optimizer_state_mib": memory,
    }


def in_training(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """``step()`` timed inside training (forward and backward before every step, so the
    gradients arrive as a training step leaves them), for torch SGD (default and fused) and
    RepOptSGD heavy-ball on
    identical copies of ``name``, and RepOptSGD with two mask variants that split its cost:
    masks without the identity diagonal (the per-tap factors only, no diagonal patches) and no
    masks (the same blocked update); and RepOptSGD with other block sizes (:data:`BLOCK_MIB`).
    Median over interleaved rounds of the mean step ms."""
    torch.manual_seed(0)
    reference = create_model(name, num_classes=100).train()
    masks = param_grad_mults(reference)
    per_tap = {p: m.amin(dim=1, keepdim=True).expand_as(m).clone() for p, m in masks.items()}
    sgd = dict(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    variants: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
        "torch SGD heavy-ball": lambda m: torch.optim.SGD(m.parameters(), **sgd),
        "torch SGD heavy-ball, fused": lambda m: torch.optim.SGD(m.parameters(), fused=True, **sgd),
        "RepOptSGD heavy-ball": lambda m: RepOptSGD(m, **sgd),
        "RepOptSGD heavy-ball, per-tap masks only": lambda m: RepOptSGD(
            list(m.parameters()), grad_mults=_rekey(per_tap, reference, m), **sgd
        ),
        "RepOptSGD heavy-ball, no masks": lambda m: RepOptSGD(
            list(m.parameters()), grad_mults={}, **sgd
        ),
    }
    for mib in BLOCK_MIB:
        variants[f"RepOptSGD heavy-ball, {mib:g} MiB blocks"] = partial(_blocked, mib=mib, **sgd)
    subjects = []
    for make in variants.values():
        model = copy.deepcopy(reference)
        subjects.append((model, make(model)))
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 100, (args.batch_size,))
    rounds: list[list[float]] = [[] for _ in variants]
    for round_index in range(args.repeats + 2):
        for times, (model, optimizer) in zip(rounds, subjects):
            seconds = 0.0
            for _ in range(args.steps):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(images), labels).backward()
                start = time.perf_counter()
                optimizer.step()
                seconds += time.perf_counter() - start
            if round_index >= 2:  # warm-up rounds
                times.append(1e3 * seconds / args.steps)
    return {label: statistics.median(times) for label, times in zip(variants, rounds)}


def _blocked(model: nn.Module, mib: float, **sgd: float) -> RepOptSGD:
    optimizer = RepOptSGD(model, **sgd)
    optimizer.block_bytes = int(mib * MIB)
    return optimizer


def _rekey(masks: dict[Tensor, Tensor], source: nn.Module, target: nn.Module) -> dict:
    """``masks`` keyed by ``source``'s parameters -> keyed by ``target``'s (a deep copy)."""
    index = {id(p): i for i, p in enumerate(source.parameters())}
    params = list(target.parameters())
    return {params[index[id(p)]]: mask for p, mask in masks.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="repopt_vgg_a0,repopt_vgg_b1")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--training-model", default="repopt_vgg_a0", help="model of the in-training profile"
    )
    parser.add_argument("--record", help="write the results JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_info()
    models = {}
    for name in args.models.split(","):
        models[name] = result = profile_model(name, args)
        print(f"{name}: {result['parameters'] / 1e6:.2f}M parameters", file=sys.stderr)
        for label, ms in result["optimizer_step_ms"].items():
            mib = result["optimizer_state_mib"][label]
            print(f"  {label:<34} {ms:8.2f} ms/step {mib:8.1f} MiB state", file=sys.stderr)
    training = in_training(args.training_model, args)
    print(f"{args.training_model}, step() inside training:", file=sys.stderr)
    for label, ms in training.items():
        print(f"  {label:<42} {ms:8.2f} ms/step", file=sys.stderr)
    result = {
        "models": models,
        "in_training": {
            "model": args.training_model,
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "optimizer_step_ms": training,
        },
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": args.threads,
        "machine": machine | {"load_average_after": machine_info()["load_average"]},
        "command": shlex.join(
            [".venv/bin/python", "benchmarks/profile_optimizer.py", *sys.argv[1:]]
        ),
    }
    if args.record:
        write_json(result, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
