"""BestWeights: the weights record the epoch that produced them, so a restore shows which epoch came back."""

from __future__ import annotations

import math
from types import SimpleNamespace

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
