"""Arguments that used to pass silently or fail deep inside torch: each a clear error before any training step."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import StepLR
from torchmetrics.classification import MulticlassAccuracy

from kerasish import EarlyStopping, KerasModel
from kerasish.checks import flag, integer
from tests.helpers import regression_batches

DATA = regression_batches(n=12, batch_size=4)


def test_an_optimizer_over_another_nets_parameters_is_an_error():
    net, other = nn.Linear(3, 1), nn.Linear(3, 1)
    with pytest.raises(
        ValueError,
        match=r"^optimizer updates none of net's parameters: its 2 parameter tensors belong to another module "
        r"\(built over a copy of the net, or over a net built twice\?\); build it over net.parameters\(\)$",
    ):
        KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(other.parameters(), lr=0.1))


def test_an_optimizer_over_frozen_parameters_only_is_an_error():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(net[0].parameters(), lr=0.1)
    net[0].requires_grad_(False)
    with pytest.raises(ValueError, match=r"^every one of net's parameters that the optimizer updates \(2 tensors\) is "
                       r"frozen \(requires_grad=False\), so nothing would train"):  # fmt: skip
        KerasModel(net, nn.MSELoss(), optimizer=optimizer)


def test_an_optimizer_over_part_of_the_net_is_fine():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    net[0].requires_grad_(False)  # fine-tuning the head only
    head = torch.optim.SGD(net[1].parameters(), lr=0.1)
    history = KerasModel(net, nn.MSELoss(), optimizer=head, device="cpu").fit(DATA, epochs=2, verbose=0)
    assert history["train_loss"].iloc[1] < history["train_loss"].iloc[0]


def _classes():
    net = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    return [
        ({"net": nn.Linear}, "net is the class Linear, not an instance of it; pass net=Linear(...)"),
        ({"loss_fn": nn.CrossEntropyLoss}, "loss_fn is the class CrossEntropyLoss, not an instance of it; pass "
         "loss_fn=CrossEntropyLoss()"),
        ({"optimizer": torch.optim.Adam}, "optimizer is the class Adam, not an instance of it; pass "
         "optimizer=Adam(net.parameters(), lr=...)"),
        ({"optimizer": optimizer, "lr_scheduler": StepLR}, "lr_scheduler is the class StepLR, not an instance of "
         "it; pass lr_scheduler=StepLR(optimizer, ...)"),
        ({"metrics_dict": {"acc": MulticlassAccuracy}}, "metrics_dict['acc'] is the class MulticlassAccuracy, not "
         "an instance of it; pass metrics_dict['acc']=MulticlassAccuracy(...)"),
    ]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "message"), _classes())
def test_a_class_where_an_instance_belongs_says_to_build_one(kwargs, message):
    kwargs = {"net": nn.Linear(3, 1), **kwargs}
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        KerasModel(**kwargs)


@pytest.mark.parametrize("value", ["no", 0, None, "False"])
def test_a_flag_must_be_a_bool(value):
    model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu")
    before = model.net.weight.detach().clone()
    message = f"^restore_best_weights={re.escape(repr(value))} is not valid; use True or False$"
    with pytest.raises(ValueError, match=message):
        model.fit(DATA, epochs=1, verbose=0, restore_best_weights=value)
    with pytest.raises(ValueError, match=message):
        EarlyStopping(restore_best_weights=value)
    assert torch.equal(model.net.weight, before)


def test_numpy_integers_are_valid_counts():
    net = nn.Linear(3, 1)
    model = KerasModel(
        net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.01), accumulate_grad_batches=np.int64(2)
    )
    history = model.fit(DATA, DATA, epochs=np.int64(3), patience=np.int64(2), verbose=0)
    assert history["epoch"].tolist() == [1, 2, 3]
    assert type(model.accumulate_grad_batches) is int


@pytest.mark.parametrize("bad", [2.0, "3", True, 0, np.float64(3.0)])
def test_counts_that_are_not_integers_are_named(bad):
    with pytest.raises(ValueError, match=rf"^epochs={re.escape(repr(bad))} is not valid; use an int >= 1$"):
        KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu").fit(DATA, epochs=bad, verbose=0)


def test_the_shared_checks():
    assert integer(np.int32(5), "n", minimum=0) == 5
    with pytest.raises(ValueError, match=r"^n=-1 is not valid; use an int >= 0 \(0: none\)$"):
        integer(-1, "n", minimum=0, hint="0: none")
    assert flag(False, "f") is False
