import os

import pytest
import torch
from torch import nn

from torchao_nb import measure

# Under pytest-xdist (scripts/test.sh: two workers on CI's two cores) each worker's torch, and every process a test
# starts (sweep workers, CLI runs, notebook kernels, SLURM jobs), takes one thread: two workers with two OpenMP
# threads each would be four spinning threads on two cores. A sweep's default `threads` follows, so rows say 1.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Under xdist each file is one unit of work, handed out in collection order (scripts/test.sh): the longest files go
# first, so that none of them starts last and leaves one worker running it alone. Seconds each took in one worker
# of a 2-worker run on the 2-core CI machine: test_slurm ~210 (mostly waiting on the cluster), test_models ~170,
# test_own_model ~165, test_compile_cache ~150, test_isolation ~95; every other file is under 80.
LONGEST_FIRST = ("test_slurm.py", "test_repro.py", "test_models.py", "test_own_model.py", "test_compile_cache.py",
                 "test_isolation.py")


def pytest_collection_modifyitems(items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


class TwoLinear(nn.Module):
    """Small enough for fast tests, shaped so every CPU mode (int4 group 128 included) fits."""

    def __init__(self, dim=128, hidden=256):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, scale=1.0):
        return self.fc2(torch.relu(self.fc1(x))) * scale


class NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture(autouse=True)
def _autoquant_cache_in_tmp(tmp_path_factory, monkeypatch):
    """autoquant's timing cache never touches ~/.cache during tests, and no test sees another's timings."""
    monkeypatch.setenv("TORCHAO_NB_CACHE_DIR", str(tmp_path_factory.mktemp("torchao_nb_cache")))
    # A wrong or crashed cell spends up to a minute finding its repro script (repro.py): only tests/test_repro.py asks.
    monkeypatch.setenv("TORCHAO_NB_REPRO_S", "0")


@pytest.fixture
def two_linear():
    torch.manual_seed(0)
    return TwoLinear()


@pytest.fixture
def fast():
    return measure.FAST_POLICY


@pytest.fixture
def ran(monkeypatch):
    """The modes whose cells really ran (not re-used), in order."""
    from torchao_nb import cell as cell_mod

    seen = []
    real = cell_mod.prepare_cell
    monkeypatch.setattr(cell_mod, "prepare_cell", lambda cfg, ref, mode, *a: seen.append(mode) or real(cfg, ref, mode, *a))
    return seen
