"""2-process gloo DDP on CPU equals 1 process with the same global batch (float32, within 1e-5).

The model has no BatchNorm: train-mode BN normalises with per-process batch statistics, which is
what DDP does by design (SyncBatchNorm is the cuda-only alternative), so only a BN-free model
makes the two runs mathematically equal.
"""

import os
import socket

import torch
import torch.multiprocessing as mp
from torch import nn

from reparam.checkpoint import load_weights

NAME = "ddp_test_net"


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker(index: int, port: int, root: str) -> None:
    """Processes 0 and 1 form the 2-process DDP run; process 2 runs alone (one spawn, less
    start-up time)."""
    world_size, rank = (2, index) if index < 2 else (1, 0)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from reparam.models import register_model
    from reparam.train import TrainConfig, fit

    register_model(ddp_test_net)
    config = TrainConfig(
        model=NAME,
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
        device="cpu",
        threads=1,
        out=f"{root}/ws{world_size}",
    )
    metrics = fit(config, progress=False)
    assert metrics["world_size"] == world_size


def test_two_process_ddp_equals_one_process(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=3, join=True)
    one, two = (
        load_weights(tmp_path / "ws1" / "last.safetensors"),
        load_weights(tmp_path / "ws2" / "last.safetensors"),
    )
    start = ddp_test_net(10)
    assert one.keys() == two.keys()
    moved = max((one[k] - start.state_dict()[k]).abs().max().item() for k in one)
    assert moved > 1e-2  # the runs trained (10 steps), so agreement below means something
    for key in one:
        assert one[key].dtype == torch.float32
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5)
    # rank 0 alone wrote the run folder
    names = sorted(p.name for p in (tmp_path / "ws2").iterdir() if not p.name.startswith("events"))
    assert names == [
        "best.safetensors",
        "config.json",
        "last.safetensors",
        "last.state.pt",
        "log.csv",
        "metrics.json",
    ]
