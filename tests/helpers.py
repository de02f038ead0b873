"""Shared test helpers (``from helpers import ...``; pytest puts ``tests/`` on ``sys.path``).

- :func:`make_run`: a run folder as ``reparam train`` writes it;
- :func:`tiny_config`: a seconds-long :class:`~reparam.app.train.TrainConfig`;
- :func:`tiny_target` / :func:`imaginary_twin`: a 6-block RepOpt-VGG and its CSLA model;
- :func:`write_cifar` / :func:`write_folder`: tiny CIFAR pickle batches and ImageFolder trees.
"""

from __future__ import annotations

import copy
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import reparam
from reparam.app.train import TrainConfig
from reparam.csla import CSLABlock
from reparam.files import save_weights, write_json
from reparam.models.repopt_vgg import RepOptVGGBlock, repopt_vgg
from reparam.models.vggnet import VGGArch, VGGNet
from reparam.testing import Batch, randomize_batchnorm_

DT = torch.float64

# --- the command line ------------------------------------------------------------------------


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of ``reparam ARGV``, whether it returns or the parser exits."""
    from reparam.app.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


# --- run folders and training configs ---------------------------------------------------------


def make_run(
    folder: Path,
    name: str = "repvgg_a0",
    num_classes: int = 10,
    image_size: int = 16,
    data: str = "synthetic:60",
) -> nn.Module:
    """A run folder as ``reparam train`` writes it: ``config.json`` + ``best.safetensors`` of a
    fresh ``name`` with random BN statistics. Returns that model in eval mode."""
    model = randomize_batchnorm_(reparam.create_model(name, num_classes=num_classes))
    save_weights(model.state_dict(), folder / "best.safetensors")
    write_json(
        {
            "model": name,
            "num_classes": num_classes,
            "model_kwargs": {},
            "image_size": image_size,
            "data": data,
        },
        folder / "config.json",
    )
    return model.eval()


def tiny_config(out: Path, **overrides) -> TrainConfig:
    """2 epochs x 4 steps of a ResNet-RS-tiny on 64 random 16x16 images (seconds on one core),
    run folder ``out``; ``overrides`` replace any field."""
    values = dict(
        model="resnet_rs_tiny",
        data="synthetic:80",
        image_size=16,
        epochs=2,
        batch_size=16,
        crop_padding=0,
        workers=0,
        threads=1,
        out=str(out),
    )
    values.update(overrides)
    return TrainConfig(**values)


# --- a tiny RepOpt-VGG and its CSLA model ------------------------------------------------------

TINY_DEPTHS, TINY_WIDTHS = (1, 2, 2, 1), (4, 4, 8, 8)  # stem 4; stages 1,2,2,1 x 4,4,8,8


def labelled_images(n: int) -> Batch:
    """Batches of ``n`` random float64 3x16x16 images and labels of :func:`tiny_target`'s 3
    classes (images drawn first), for :func:`reparam.testing.train_together` with
    ``F.cross_entropy``."""

    def draw(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, 3, 16, 16, generator=gen, dtype=DT)
        return x, torch.randint(0, 3, (n,), generator=gen)

    return draw


def tiny_target(**kwargs) -> VGGNet:
    """A 6-block RepOpt-VGG (stem 4, stages 1,2,2,1 x 4,4,8,8, 3 classes) whose scale files are
    made for the model name ``"tiny"``; takes ``repopt_vgg``'s kwargs."""
    return repopt_vgg(VGGArch(TINY_DEPTHS, TINY_WIDTHS), num_classes=3, name="tiny", **kwargs)


def imaginary_twin(target: VGGNet) -> tuple[nn.Module, dict[str, CSLABlock]]:
    """The CSLA model of ``target``: each block -> ``ReLU(BN(CSLABlock(x)))`` with the block's
    constant scales; the target's conv gets the equivalent weight."""
    imaginary = copy.deepcopy(target)
    blocks = {}
    for name, block in list(imaginary.named_modules()):
        if isinstance(block, RepOptVGGBlock):
            csla = CSLABlock(block.csla_spec(), stride=block.conv.conv.stride[0], dtype=DT)
            twin = nn.Sequential(OrderedDict(csla=csla, bn=block.conv.bn, act=nn.ReLU()))
            parent, _, child = name.rpartition(".")
            setattr(imaginary.get_submodule(parent) if parent else imaginary, child, twin)
            target.get_submodule(name).conv.conv.weight.data.copy_(csla.equivalent_weight())
            blocks[name] = csla
    return imaginary, blocks


# --- data fixtures -----------------------------------------------------------------------------


def write_cifar(root, classes: int, per_file: int = 6):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    key = b"labels" if classes == 10 else b"fine_labels"
    names = (
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        if classes == 10
        else ["train", "test"]
    )
    for name in names:
        batch = {
            b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            key: rng.integers(0, classes, per_file).tolist(),
        }
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    return root


def write_folder(root, classes=("cat", "dog"), per_class=3, size=(10, 7)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


# --- the fast subset (pytest -m "not slow") ----------------------------------------------------

#: the smallest model of each family: the fast subset checks these, the suite every model
ONE_PER_FAMILY = (
    "reducenet20",
    "repghostnet_0_5x",
    "repopt_ghostnet_0_5x",
    "repopt_ghostnet_0_5x_hs",
    "repopt_vgg_a0",
    "repopt_vgg_a0_hs",
    "repvgg_a0",
    "resnet_rs_tiny",
    "vanillanet_5",
    "vgg_a0",
)


def slow_except(values, fast) -> list:
    """``values`` as ``pytest.param`` s, each marked ``slow`` unless it is in ``fast``."""
    return [pytest.param(v, marks=() if v in fast else pytest.mark.slow) for v in values]
