"""seed_everything(): same seed, same draws from every generator and the same fit; bad seeds rejected."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kerasish import KerasModel
from kerasish.seeding import seed_everything


@pytest.fixture(autouse=True)
def _restore_rng_and_env(monkeypatch):
    """Puts the global generators and PYTHONHASHSEED back as they were, so seeding here leaks into no other test."""
    # setenv records the value before (or its absence) and puts it back at teardown, whatever seed_everything wrote.
    monkeypatch.setenv("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED", "0"))
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), torch.rand(1).item()


def test_the_same_seed_gives_the_same_draws_from_every_generator():
    assert seed_everything(123) == 123
    first = draws()
    seed_everything(123)
    assert draws() == first


def test_different_seeds_give_different_draws():
    seed_everything(1)
    one = draws()
    seed_everything(2)
    two = draws()
    assert all(a != b for a, b in zip(one, two, strict=True))


def test_the_seed_is_exported_for_child_processes():
    seed_everything(2**32 - 1)
    assert os.environ["PYTHONHASHSEED"] == "4294967295"


def test_a_numpy_integer_is_accepted_and_returned_as_a_python_int():
    seed = seed_everything(np.int64(5))
    assert (seed, type(seed)) == (5, int)


def fit_once() -> tuple[list[float], dict[str, torch.Tensor]]:
    """Builds, shuffles and trains from the global generators only, so the seed decides everything."""
    seed_everything(0)
    x = torch.randn(24, 3)
    y = x.sum(dim=1, keepdim=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.1), device="cpu")
    history = model.fit(loader, epochs=3, verbose=0)
    return history["train_loss"].tolist(), {k: v.clone() for k, v in net.state_dict().items()}


def test_fitting_twice_after_the_same_seed_gives_the_same_losses_and_weights():
    losses, weights = fit_once()
    torch.manual_seed(999)  # disturb the generators in between
    again_losses, again_weights = fit_once()
    assert again_losses == losses
    assert losses[-1] < losses[0]  # it did train, so equal weights are not just the initial ones
    assert weights.keys() == again_weights.keys()
    assert all(torch.equal(weights[k], again_weights[k]) for k in weights)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.0, "7", True, None])
def test_bad_seeds_are_rejected_with_the_value(seed):
    with pytest.raises(ValueError, match=rf"seed must be an int in \[0, 2\*\*32 - 1\].*; got {seed!r}"):
        seed_everything(seed)
