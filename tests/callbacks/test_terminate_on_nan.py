"""TerminateOnNaN: a real fit whose loss turns NaN at a known batch stops there and restores the best earlier epoch."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kerasish import Callback, KerasModel
from kerasish.callbacks.terminate_on_nan import TerminateOnNaN
from tests.helpers import Recorder, regression_batches


class PoisonedLoader:
    """Yields the same batches each epoch, except that one batch of one epoch has a NaN in its inputs."""

    def __init__(self, batches: list, *, epoch: int, batch: int) -> None:
        self.batches = batches
        self.poison = (epoch, batch)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        self.epoch += 1
        for index, (x, y) in enumerate(self.batches):
            if (self.epoch, index) == self.poison:
                x = x.clone()
                x[0, 0] = math.nan
            yield x, y


class Snapshots(Callback):
    """A copy of the net's weights at each epoch's end."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, model, logs):
        self.weights[logs["epoch"]] = {k: v.clone() for k, v in model.net.state_dict().items()}


def small_model() -> KerasModel:
    net = nn.Linear(3, 1)
    return KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.05), device="cpu")


def train_batches_per_epoch(recorder: Recorder) -> dict[int, list[int]]:
    ended: dict[int, list[int]] = {}
    for hook, *where in recorder.calls:
        if hook == "on_train_batch_end":
            ended.setdefault(where[0], []).append(where[1])
    return ended


def test_a_nan_loss_stops_the_fit_after_its_batch_and_restores_the_best_earlier_epoch():
    batches = regression_batches(n=12)  # 3 batches
    train = PoisonedLoader(batches, epoch=3, batch=1)
    stop, recorder, snapshots = TerminateOnNaN(), Recorder(), Snapshots()
    model = small_model()
    history = model.fit(train, batches, epochs=6, callbacks=[stop, recorder, snapshots], verbose=0)

    assert stop.stopped_at == (3, 1)
    assert train_batches_per_epoch(recorder) == {1: [0, 1, 2], 2: [0, 1, 2], 3: [0, 1]}
    assert ("on_val_batch_end", 3, 0) in recorder.calls  # the stopped epoch still gets its val pass and row
    assert history["epoch"].tolist() == [1, 2, 3]
    assert math.isnan(history["train_loss"].iloc[2])
    assert math.isnan(history["val_loss"].iloc[2])  # the poisoned step made the weights NaN
    assert not torch.isfinite(snapshots.weights[3]["weight"]).all()

    best = int(history.loc[history["val_loss"].idxmin(), "epoch"])
    assert best in (1, 2)
    state = model.net.state_dict()
    assert all(torch.isfinite(tensor).all() for tensor in state.values())
    assert all(torch.equal(state[k], snapshots.weights[best][k]) for k in state)


def test_finite_losses_never_stop_the_fit():
    stop = TerminateOnNaN()
    batches = regression_batches()
    history = small_model().fit(batches, epochs=3, callbacks=[stop], verbose=0)
    assert stop.stopped_at is None
    assert history["epoch"].tolist() == [1, 2, 3]


def test_one_instance_serves_two_fits():
    stop = TerminateOnNaN()
    batches = regression_batches(n=12)
    small_model().fit(PoisonedLoader(batches, epoch=1, batch=2), epochs=3, callbacks=[stop], verbose=0)
    assert stop.stopped_at == (1, 2)
    history = small_model().fit(batches, epochs=2, callbacks=[stop], verbose=0)
    assert stop.stopped_at is None
    assert len(history) == 2


@pytest.mark.parametrize("loss", [math.inf, -math.inf, math.nan])
def test_any_non_finite_loss_stops(loss):
    model = SimpleNamespace(stop_training=False)
    stop = TerminateOnNaN()
    stop.on_fit_begin(model, {})
    stop.on_train_batch_end(model, {"epoch": 2, "batch": 0, "loss": torch.tensor(1e30)})
    assert not model.stop_training
    stop.on_train_batch_end(model, {"epoch": 2, "batch": 1, "loss": torch.tensor(loss)})
    assert model.stop_training
    assert stop.stopped_at == (2, 1)


def test_verbose_prints_where_it_stopped(capsys):
    model = SimpleNamespace(stop_training=False)
    stop = TerminateOnNaN(verbose=2)
    stop.on_fit_begin(model, {})
    stop.on_train_batch_end(model, {"epoch": 4, "batch": 7, "loss": torch.tensor(math.inf)})
    assert capsys.readouterr().out == "loss=inf at epoch 4, batch 7: training stops (TerminateOnNaN)\n"


def test_verbose_0_prints_nothing(capsys):
    model = SimpleNamespace(stop_training=False)
    stop = TerminateOnNaN()
    stop.on_fit_begin(model, {})
    stop.on_train_batch_end(model, {"epoch": 1, "batch": 0, "loss": torch.tensor(math.nan)})
    assert model.stop_training
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("verbose", [3, -1, True, "1"])
def test_bad_verbose_raises(verbose):
    with pytest.raises(ValueError, match=rf"verbose={verbose!r} is not valid; use 0"):
        TerminateOnNaN(verbose=verbose)
