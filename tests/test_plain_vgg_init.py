"""Plain VGG's conv init: the kernel a fresh RepVGG block fuses to (default), or torch's."""

import math

import pytest
import torch
from torch import nn

import reparam
from reparam.app.cli import main
from reparam.kernels import identity_kernel
from reparam.models.layers import RepVGGBlock, VGGBlock
from reparam.models.repvgg import init_plain_conv
from reparam.testing import rel_err

DT = torch.float64


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize(
    "in_channels, out_channels, stride, groups",
    [(8, 8, 1, 1), (8, 8, 1, 2), (4, 8, 1, 1), (8, 8, 2, 1), (3, 8, 2, 1)],
)
def test_repvgg_init_is_the_kernel_of_a_fresh_repvgg_block(
    float64_default, in_channels, out_channels, stride, groups
):
    conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=False)
    torch.manual_seed(3)
    block = RepVGGBlock(in_channels, out_channels, stride, groups)
    for bn in (m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.eps = 0.0  # BN at its init is then exactly the identity
    torch.manual_seed(3)  # the same draws for W3 and W1
    init_plain_conv(conv, "repvgg")
    assert rel_err(conv.weight, block.kernel().weight) <= 1e-10


def _noise_bound(conv: nn.Conv2d) -> float:
    """The largest |W3 + pad(W1)| tap: Kaiming-uniform (a = sqrt 5) bounds 1/sqrt(fan_in)."""
    per_group = conv.in_channels // conv.groups
    return 1 / math.sqrt(9 * per_group) + 1 / math.sqrt(per_group)


def test_vgg_default_starts_every_identity_block_at_identity():
    model = reparam.create_model("vgg_a0", num_classes=10)
    convs = [b.conv.conv for b in model.modules() if isinstance(b, VGGBlock)]
    with_identity = [c for c in convs if c.stride == (1, 1) and c.in_channels == c.out_channels]
    assert len(convs) == 22 and len(with_identity) == 17
    for conv in convs:
        dirac = identity_kernel(conv.out_channels, 3, conv.groups) if conv in with_identity else 0
        assert (conv.weight - dirac).abs().max() <= _noise_bound(conv)


def test_vgg_torch_init_keeps_torch_default():
    torch.manual_seed(0)
    plain = reparam.create_model("vgg_a0", num_classes=10, init="torch")
    torch.manual_seed(0)
    # RepOpt-VGG without its eq. 14 init: the same blocks as torch builds them
    no_reinit = reparam.create_model("repopt_vgg_a0", num_classes=10, scales="ones", reinit=False)
    for name, weight in plain.state_dict().items():
        if name.endswith("conv.conv.weight"):
            assert torch.equal(weight, no_reinit.state_dict()[name])
            fan_in = math.prod(weight.shape[1:])
            assert weight.abs().max() <= 1 / math.sqrt(fan_in)


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match=r"init must be one of \['repvgg', 'kaiming', 'torch'\]"):
        reparam.create_model("vgg_a0", num_classes=10, init="dirac")


def test_cli_names_a_bad_init_in_one_line(tmp_path, capsys):
    argv = ["train", "--model", "vgg_a0", "--data", "synthetic:8", "--image-size", "16"]
    argv += ["--set", "model_kwargs={init: dirac}", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "reparam train: error: model 'vgg_a0' with model_kwargs {'init': 'dirac'}: "
        "init must be one of ['repvgg', 'kaiming', 'torch'], got 'dirac'"
    )
