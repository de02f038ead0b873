"""Depth re-parameterization on real data: ReduceNet vs the same deployed net trained directly.

Three runs through the training engine (``reparam.app.train.fit``, same recipe and seed):

- ``reducenet``: ReduceNet-20 (conv3x3-BN -> A_lambda -> conv1x1-BN + shortcut, kept ReLU),
  lambda annealed 0 -> 1 (cosine, per iteration) over ``--anneal-fraction`` of training;
- ``plain``: the deployed structure (one conv3x3-BN + shortcut -> ReLU per block) trained directly;
- ``all_linear``: ReduceNet-20 without kept ReLU (the stem's ReLU annealed too);
- ``plain_linear`` (optional): the same deployed structure with no activation at all, trained
  directly (a deep linear network).

For each: the final checkpoint (``last.safetensors``, lambda must be 1.0 there) is fused with
``reparameterize`` and the **fused** model is evaluated on the validation set (not the best epoch
during annealing). For ``all_linear`` the fused network is checked to be one affine map
(``f(a x + b y) = a f(x) + b f(y)`` for ``a + b = 1``, float64), the map ``x -> A x + c`` is
extracted explicitly and evaluated, and a multinomial logistic regression on the same pixels
(the best affine classifier by a standard fit) is given for context.
Numbers are from one seed: on 360 validation images one image is 0.28 points.

    python benchmarks/depth_reparam.py --record benchmarks/results/depth_reparam_digits.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from reparam import reparameterize
from reparam.app.bench.machine import machine_info
from reparam.app.dataspec import load_data
from reparam.app.train import TrainConfig, fit
from reparam.data import DataBundle
from reparam.extras import require
from reparam.files import load_weights, write_json
from reparam.models import create_model
from reparam.models.annealed import AnnealedActivation, fusion_macs
from reparam.models.summary import count_params

VARIANTS = {
    "reducenet": {},
    "plain": {"plain": True},
    "all_linear": {"keep_relu": False},
    "plain_linear": {"plain": True, "keep_relu": False},  # a deep linear net trained directly
}
DEFAULT_VARIANTS = "reducenet,plain,all_linear"


def weight_layers(model: nn.Module) -> int:
    """Convs + linear layers on the main path (projection shortcuts are parallel, not depth)."""
    return sum(
        isinstance(m, (nn.Conv2d, nn.Linear))
        for n, m in model.named_modules()
        if "shortcut" not in n
    )


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, dtype: torch.dtype = torch.float32) -> tuple:
    logits, labels = [], []
    for images, target in loader:
        logits.append(model(images.to(dtype)))
        labels.append(target)
    return torch.cat(logits), torch.cat(labels)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).double().mean().item()


@torch.no_grad()
def affine_map(model: nn.Module, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(x) = A x + c`` read off a (float64) affine ``f``: ``c = f(0)``, column ``i`` of ``A`` =
    ``f(e_i) - c``."""
    n = int(torch.tensor(shape).prod())
    c = model(torch.zeros(1, *shape, dtype=torch.float64))[0]
    columns = [
        model(torch.eye(n, dtype=torch.float64)[i : i + 512].reshape(-1, *shape)) - c
        for i in range(0, n, 512)
    ]
    return torch.cat(columns).T, c


@torch.no_grad()
def affinity_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor, a: float = 2.7) -> float:
    """``max |f(a x + (1-a) y) - a f(x) - (1-a) f(y)| / max |f(x)|`` (0 for an affine ``f``)."""
    fx, fy, fz = model(x), model(y), model(a * x + (1 - a) * y)
    return ((fz - a * fx - (1 - a) * fy).abs().max() / fx.abs().max()).item()


def run_variant(
    name: str,
    kwargs: dict,
    args: argparse.Namespace,
    workdir: Path,
    data: DataBundle,
    val_loader: DataLoader,
) -> dict:
    """Train one variant with the engine, fuse its final weights, evaluate the fused model."""
    config = TrainConfig(
        model=args.model,
        model_kwargs=kwargs,
        data=args.data,
        num_classes=data.num_classes,
        epochs=args.epochs,
        image_size=args.image_size,
        batch_size=args.batch_size,
        seed=args.seed,
        anneal_kind="cosine",
        anneal_fraction=args.anneal_fraction,
        anneal_per="iteration",
        amp=False,  # the recorded table's path, FP32 NCHW
        channels_last=False,
        out=str(workdir / name),
    )
    start = time.perf_counter()
    metrics = fit(config, progress=False)
    seconds = time.perf_counter() - start
    model = create_model(args.model, num_classes=config.num_classes, **kwargs)
    model.load_state_dict(load_weights(Path(config.out) / "last.safetensors"))
    model.eval()
    lambdas = sorted({m.value for m in model.modules() if isinstance(m, AnnealedActivation)})
    fused = reparameterize(model)  # raises FusionError unless every lambda is 1.0
    logits, labels = predict(model, val_loader)
    fused_logits, _ = predict(fused, val_loader)
    macs = fusion_macs(model, args.image_size)
    result = {
        "model_kwargs": kwargs,
        "train_depth": weight_layers(model),
        "deploy_depth": weight_layers(fused),
        "params_train": count_params(model),
        "params_deploy": count_params(fused),
        **macs,
        "final_lambdas": lambdas,
        "top1_engine_last_epoch": metrics["top1"],
        "top1_unfused": top1(logits, labels),
        "top1_fused": top1(fused_logits, labels),
        "fused_vs_unfused_max_rel_err_fp32": (
            (fused_logits - logits).abs().max() / logits.abs().max()
        ).item(),
        "train_seconds": seconds,
    }
    if kwargs.get("keep_relu") is False:  # nothing nonlinear left: check and extract the map
        fused64 = fused.double()
        images = torch.cat([x for x, _ in val_loader]).double()
        half = len(images) // 2
        result["affinity_rel_err_fp64"] = affinity_error(
            fused64, images[:half], images[half : 2 * half]
        )
        weight, bias = affine_map(fused64, tuple(images.shape[1:]))
        map_logits = images.flatten(1) @ weight.T + bias
        reference = fused64(images)
        result["affine_map_shape"] = list(weight.shape)
        result["affine_map_vs_network_max_rel_err_fp64"] = (
            (map_logits - reference).abs().max() / reference.abs().max()
        ).item()
        result["top1_affine_map"] = top1(map_logits, labels)
    return result


def tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.tensor(labels)


def logistic_regression_top1(data: DataBundle) -> float:
    """Multinomial logistic regression on the same normalized pixels (no augmentation): a
    standard fit of the best affine classifier, for context."""
    LogisticRegression = require("sklearn.linear_model", extra="bench").LogisticRegression
    x_train, y_train = tensors(data.train)
    x_val, y_val = tensors(data.val)
    clf = LogisticRegression(max_iter=1000).fit(x_train.flatten(1).numpy(), y_train.numpy())
    return float(clf.score(x_val.flatten(1).numpy(), y_val.numpy()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reducenet20")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--anneal-fraction", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"from {', '.join(VARIANTS)}")
    parser.add_argument(
        "--record",
        default="benchmarks/results/depth_reparam_digits.json",
        help="write the results JSON here",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = load_data(args.data, args.image_size)  # eval transform on both splits
    val_loader = DataLoader(data.val, batch_size=256)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            results[name] = run_variant(name, VARIANTS[name], args, Path(tmp), data, val_loader)
            print(f"{name}: {json.dumps(results[name])}", file=sys.stderr)
    report = {
        "command": "python " + shlex.join(sys.argv),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "recipe": "TrainConfig defaults (basic) + cosine per-iteration lambda schedule",
        "results": results,
        "logistic_regression_top1": logistic_regression_top1(data),
        "torch": torch.__version__,
        "machine": machine_info(),
        "threads": torch.get_num_threads(),
        "total_seconds": time.perf_counter() - start,
    }
    write_json(report, args.record)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
