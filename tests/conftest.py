import pytest
import torch

# `make test` runs two pytest workers on two cores: one intra-op thread each avoids
# oversubscription (OpenMP threads spinning against each other).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
