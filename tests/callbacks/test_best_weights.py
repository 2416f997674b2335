"""BestWeights: the weights record the epoch that produced them, so a restore shows which epoch came back."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from kerasish import BestWeights
from tests.helpers import tagged_linear

NAN = math.nan


def mark_epoch(net: torch.nn.Module, epoch: int) -> None:
    """Makes every tensor of the net's state say ``epoch``, as if that epoch's training had produced it."""
    with torch.no_grad():
        for tensor in net.state_dict().values():
            tensor.fill_(epoch)


def run_epochs(keep: BestWeights, model: SimpleNamespace, values: list[float], column: str = "val_loss") -> None:
    keep.on_fit_begin(model, {})
    for epoch, value in enumerate(values, start=1):
        mark_epoch(model.net, epoch)
        keep.on_epoch_end(model, {"epoch": epoch, column: value})


@pytest.fixture
def model() -> SimpleNamespace:
    return SimpleNamespace(stop_training=False, net=tagged_linear())


@pytest.mark.parametrize(
    ("values", "mode", "best_epoch"),
    [
        ([0.5, 0.4, 0.45, 0.3, 0.35], "min", 4),
        ([0.5, 0.4, 0.4, 0.41], "min", 2),  # a tie keeps the earlier epoch's weights
        ([NAN, 0.7, NAN], "min", 2),
        ([0.7, 0.9, 0.8, 0.9], "max", 2),
    ],
)
def test_fit_end_restores_the_best_epoch(model, values, mode, best_epoch):
    keep = BestWeights("val_loss", mode=mode)
    run_epochs(keep, model, values)
    assert model.net.tag.item() == len(values)
    keep.on_fit_end(model, {})
    assert model.net.tag.item() == best_epoch
    assert torch.equal(model.net.weight, torch.full_like(model.net.weight, best_epoch))
    assert torch.equal(model.net.bias, torch.full_like(model.net.bias, best_epoch))


def test_min_delta_decides_the_best_epoch(model):
    keep = BestWeights("val_loss", min_delta=0.1)
    run_epochs(keep, model, [1.0, 0.95, 0.85, 0.8])
    keep.on_fit_end(model, {})
    assert model.net.tag.item() == 3


def test_nothing_restored_when_no_epoch_finished(model):
    keep = BestWeights()
    keep.on_fit_begin(model, {})
    mark_epoch(model.net, 7)
    keep.on_fit_end(model, {})
    assert keep.weights is None
    assert model.net.tag.item() == 7


def test_nothing_restored_when_no_value_was_finite(model):
    keep = BestWeights()
    run_epochs(keep, model, [NAN, NAN])
    keep.on_fit_end(model, {})
    assert keep.weights is None
    assert model.net.tag.item() == 2


def test_the_stored_copy_is_on_cpu_and_independent_of_the_net(model):
    keep = BestWeights()
    run_epochs(keep, model, [0.5, 0.4, 0.6])
    assert set(keep.weights) == {"weight", "bias", "tag"}
    assert {t.device.type for t in keep.weights.values()} == {"cpu"}
    state = model.net.state_dict()
    assert all(keep.weights[k].data_ptr() != state[k].data_ptr() for k in state)
    mark_epoch(model.net, 99)
    assert keep.weights["tag"].item() == 2
    assert torch.equal(keep.weights["weight"], torch.full((1, 3), 2.0))


def test_one_instance_serves_two_fits(model):
    keep = BestWeights()
    run_epochs(keep, model, [0.1, 0.5])
    keep.on_fit_end(model, {})
    assert model.net.tag.item() == 1

    keep.on_fit_begin(model, {})
    assert keep.weights is None
    assert (keep.best.value, keep.best.epoch) == (None, None)
    mark_epoch(model.net, 5)
    keep.on_fit_end(model, {})
    assert model.net.tag.item() == 5  # the first fit's weights are not put back

    # Every value is worse than the first fit's best; the second fit picks its own best.
    run_epochs(keep, model, [0.9, 0.8, 0.85])
    keep.on_fit_end(model, {})
    assert model.net.tag.item() == 2


def test_restore_keeps_the_parameter_objects_and_device(model):
    net = model.net
    params = list(net.parameters())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    keep = BestWeights()
    run_epochs(keep, model, [0.3, 0.4])
    keep.on_fit_end(model, {})

    assert all(a is b for a, b in zip(params, net.parameters(), strict=True))
    assert {p.device.type for p in net.parameters()} == {"cpu"}
    assert torch.equal(net.weight, torch.ones(1, 3))

    # The optimizer built before the restore still updates the net's parameters.
    optimizer.zero_grad()
    net(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    assert torch.equal(net.weight, torch.full((1, 3), 1.0 - 0.5 * 2))
    assert torch.equal(net.bias, torch.full((1,), 1.0 - 0.5 * 2))


def test_verbose_prints_the_restore_line(model, capsys):
    keep = BestWeights("val_acc", mode="max", verbose=1)
    run_epochs(keep, model, [0.5, 0.75, 0.6], column="val_acc")
    keep.on_fit_end(model, {})
    assert capsys.readouterr().out == "restored the weights of epoch 2 (val_acc=0.7500)\n"


def test_verbose_0_prints_nothing(model, capsys):
    keep = BestWeights(verbose=0)
    run_epochs(keep, model, [0.5, 0.4])
    keep.on_fit_end(model, {})
    assert capsys.readouterr().out == ""
    assert model.net.tag.item() == 2


@pytest.mark.parametrize(("values", "best_epoch"), [([-2.0, -2.1, -2.3], 3), ([-2.0, -2.1, -2.15], 1)])
def test_relative_min_delta_with_negative_values(model, values, best_epoch):
    keep = BestWeights("val_loss", min_delta=0.1, delta_mode="rel")  # the margin is 0.1 * |best| = 0.2
    run_epochs(keep, model, values)
    keep.on_fit_end(model, {})
    assert model.net.tag.item() == best_epoch


def test_monitor_typo_fails_when_the_fit_begins(model):
    model.history = pd.DataFrame(columns=["epoch", "train_loss", "val_loss", "lr", "time"])
    keep = BestWeights("val_acc", mode="max")
    message = "BestWeights: monitor='val_acc' is not a history column of this fit; available: epoch, train_loss"
    with pytest.raises(ValueError, match=f"^{message}"):
        keep.on_fit_begin(model, {})


def test_options_after_min_delta_are_keyword_only():
    with pytest.raises(TypeError, match="positional"):
        BestWeights("val_loss", "min", 0.0, "abs")


def through_disk(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trips_through_weights_only_load(model):
    keep = BestWeights()
    assert through_disk(keep.state_dict()) == {"best": {"value": None, "epoch": None}, "weights": None}
    run_epochs(keep, model, [0.5, 0.3, 0.4])
    state = through_disk(keep.state_dict())
    assert state["best"] == {"value": 0.3, "epoch": 2}
    assert set(state["weights"]) == {"weight", "bias", "tag"}
    assert torch.equal(state["weights"]["weight"], torch.full((1, 3), 2.0))


@pytest.mark.parametrize(
    ("values", "best_epoch"),
    [([0.5, 0.3, 0.4, 0.35, 0.45], 2), ([0.5, 0.3, 0.4, 0.2, 0.25], 4), ([NAN, NAN, 0.4, NAN, 0.5], 3)],
)
def test_a_resumed_instance_restores_what_the_uninterrupted_one_does(values, best_epoch):
    whole_model = SimpleNamespace(net=tagged_linear())
    whole = BestWeights()
    run_epochs(whole, whole_model, values)
    whole.on_fit_end(whole_model, {})

    first = BestWeights()
    run_epochs(first, SimpleNamespace(net=tagged_linear()), values[:3])
    resumed_model = SimpleNamespace(net=tagged_linear())
    resumed = BestWeights()
    resumed.on_fit_begin(resumed_model, {})
    resumed.load_state_dict(through_disk(first.state_dict()))
    for epoch, value in enumerate(values[3:], start=4):
        mark_epoch(resumed_model.net, epoch)
        resumed.on_epoch_end(resumed_model, {"epoch": epoch, "val_loss": value})
    resumed.on_fit_end(resumed_model, {})

    assert whole_model.net.tag.item() == resumed_model.net.tag.item() == best_epoch
    assert (resumed.best.value, resumed.best.epoch) == (whole.best.value, whole.best.epoch)


def test_a_state_dict_taken_earlier_keeps_its_epochs_weights(model):
    keep = BestWeights()
    run_epochs(keep, model, [0.5])
    state = keep.state_dict()
    mark_epoch(model.net, 2)
    keep.on_epoch_end(model, {"epoch": 2, "val_loss": 0.1})
    assert state["weights"]["tag"].item() == 1
    assert keep.weights["tag"].item() == 2


def test_load_state_dict_names_the_missing_keys():
    with pytest.raises(ValueError, match=r"BestWeights state lacks \['weights'\]; got keys \['best'\]"):
        BestWeights().load_state_dict({"best": {"value": None, "epoch": None}})
