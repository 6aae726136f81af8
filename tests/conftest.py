import pytest
import torch
from torch import nn

from torchao_nb import measure


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
