"""2-process gloo DDP on CPU equals 1 process with the same global batch (float32, within 1e-5):
plain SGD, RepOptSGD (gradient multipliers under DDP) and an annealed activation (lambda
stepped on every rank).

The models have no BatchNorm: train-mode BN normalises with per-process batch statistics, which
is what DDP does by design (SyncBatchNorm is the cuda-only alternative), so only BN-free models
make the two runs mathematically equal.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from reparam.csla import Branch, CSLASpec, attach
from reparam.files import load_weights
from reparam.models.annealed import AnnealedActivation


def ddp_test_net(num_classes: int = 1000, drop_rate: float = 0.0) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(drop_rate),
        nn.Linear(16, num_classes),
    )


def ddp_repopt_net(num_classes: int = 1000, drop_rate: float = 0.0) -> nn.Module:
    """The second conv is the target of a CSLA block (3x3 + 1x1, per-channel scales): the
    engine trains it with RepOptSGD."""
    net = ddp_test_net(num_classes, drop_rate)
    attach(net[2], CSLASpec(8, 16, (Branch(torch.linspace(0.5, 1.5, 16), 3), Branch(0.7, 1))))
    return net


def ddp_annealed_net(num_classes: int = 1000, drop_rate: float = 0.0) -> nn.Module:
    """The first ReLU anneals to the identity over the run."""
    net = ddp_test_net(num_classes, drop_rate)
    net[1] = AnnealedActivation()
    return net


NETS = (ddp_test_net, ddp_repopt_net, ddp_annealed_net)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker(index: int, ports: list[int], root: str) -> None:
    """Processes 0 and 1 form the 2-process DDP runs; process 2 runs alone (one spawn, less
    start-up time). Each net trains in turn, on a port of its own."""
    world_size, rank = (2, index) if index < 2 else (1, 0)
    from reparam.models import register_model

    for net, port in zip(NETS, ports):
        register_model(net)
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        train(net.__name__, world_size, f"{root}/{net.__name__}/ws{world_size}")


def train(name: str, world_size: int, out: str) -> None:
    from reparam.app.train import TrainConfig, fit

    config = TrainConfig(
        model=name,
        data="synthetic:104",
        image_size=16,
        epochs=2,
        batch_size=16,
        crop_padding=0,
        lr=0.5,
        weight_decay=1e-3,
        warmup_epochs=1.0,
        optimizer="sgd",
        momentum=0.9,
        nesterov=True,
        label_smoothing=0.1,
        grad_clip=5.0,
        force_grad_clip=True,  # 1 vs 2 processes, not CSLA equivalence, is what is compared
        device="cpu",
        threads=1,
        out=out,
    )
    metrics = fit(config, progress=False)
    assert metrics["world_size"] == world_size


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path):
    mp.spawn(worker, args=([free_port() for _ in NETS], str(tmp_path)), nprocs=3, join=True)
    runs = {}
    for net in NETS:
        one, two = (
            load_weights(tmp_path / net.__name__ / ws / "last.safetensors") for ws in ("ws1", "ws2")
        )
        start = net(10).state_dict()
        assert one.keys() == two.keys()
        moved = max((one[k] - start[k]).abs().max().item() for k in one)
        assert moved > 1e-2  # the runs trained (10 steps), so agreement below means something
        for key in one:
            assert one[key].dtype == torch.float32
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5)
        runs[net.__name__] = one
    # the multipliers changed the training of the CSLA conv, and lambda reached 1 on every rank
    plain, repopt = runs["ddp_test_net"], runs["ddp_repopt_net"]
    assert (plain["2.weight"] - repopt["2.weight"]).abs().max() > 1e-3
    assert runs["ddp_annealed_net"]["1.lam"].item() == 1.0
    # rank 0 alone wrote the run folder
    folder = tmp_path / "ddp_test_net" / "ws2"
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("events"))
    assert names == [
        "best.safetensors",
        "config.json",
        "last.safetensors",
        "last.state.pt",
        "log.csv",
        "metrics.json",
    ]
