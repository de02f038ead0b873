import pytest
import torch

import helpers

# `make test` runs two pytest workers on two cores: one intra-op thread each avoids
# oversubscription (OpenMP threads spinning against each other).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_config(tmp_path):
    """``tiny_config(name="run", **overrides)``: :func:`helpers.tiny_config` with the run folder
    ``tmp_path / name``."""

    def make(name: str = "run", **overrides):
        return helpers.tiny_config(tmp_path / name, **overrides)

    return make
