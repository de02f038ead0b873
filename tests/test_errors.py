"""The error types: one meaning each, and a base that says it."""

from __future__ import annotations

import pytest

from helpers import cli, make_run
from reparam.errors import CheckpointError, DeployError, ReparamError, ScaleError, UserError
from reparam.models.convert import convert_checkpoint


def test_a_deploy_error_is_not_a_checkpoint_error():
    """``except CheckpointError`` (a checkpoint or run folder) does not catch deployment faults."""
    assert DeployError.__mro__[1:] == (ReparamError, RuntimeError, Exception, BaseException, object)
    assert not issubclass(DeployError, CheckpointError)
    assert issubclass(ScaleError, CheckpointError)  # a scale file is a checkpoint of the scales
    with pytest.raises(DeployError):
        try:
            raise DeployError("model.onnx: not a loadable ONNX model")
        except CheckpointError:
            pytest.fail("a DeployError was caught as a CheckpointError")


def test_an_argument_the_library_cannot_use_is_a_user_error(tmp_path):
    """``UserError`` means an argument that cannot work, raised by the commands and the library
    alike (here ``convert_checkpoint``'s layout)."""
    make_run(tmp_path / "run", name="repvgg_a0")
    with pytest.raises(UserError, match="unknown layout 'nope'"):
        convert_checkpoint(tmp_path / "run" / "best.safetensors", "repvgg_a0", "nope")


def test_a_deploy_error_is_still_one_line_with_status_2(tmp_path, capsys):
    make_run(tmp_path / "run", name="vgg_a0", num_classes=3)
    code, err = cli(
        ["deploy", str(tmp_path / "run"), "--out", str(tmp_path / "d")] + ["--image-size", "0"],
        capsys,
    )
    assert code == 2
    assert err.strip().splitlines() == [
        "reparam deploy: error: image_size must be a positive number of pixels, got 0"
    ]
