"""When the scheduler steps: per step for schedules defined in steps, per epoch otherwise, checked before training."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as schedulers

from kerasish import KerasModel
from kerasish.schedulers import interval_for
from tests.helpers import regression_batches

BATCHES = regression_batches(n=16, batch_size=4)  # 4 batches per epoch


def sgd(lr: float = 0.1) -> tuple[nn.Module, torch.optim.Optimizer]:
    net = nn.Linear(3, 1)
    return net, torch.optim.SGD(net.parameters(), lr=lr)


def lrs_after(make_scheduler, steps: list[int]) -> list[float]:
    """The first group's lr after each count of scheduler steps, from a twin optimizer and scheduler."""
    _, optimizer = sgd()
    scheduler = make_scheduler(optimizer)
    seen, done = [], 0
    for count in steps:
        for _ in range(count - done):
            optimizer.step()
            scheduler.step()
        done = count
        seen.append(optimizer.param_groups[0]["lr"])
    return seen


def one_cycle(optimizer):
    return schedulers.OneCycleLR(optimizer, max_lr=0.1, epochs=3, steps_per_epoch=4)


def test_one_cycle_steps_per_step_by_default_and_the_lr_column_follows_it():
    net, optimizer = sgd()
    scheduler = one_cycle(optimizer)
    model = KerasModel(net, nn.MSELoss(), optimizer=optimizer, lr_scheduler=scheduler, device="cpu")
    history = model.fit(BATCHES, epochs=3, verbose=0)
    assert model.scheduler_interval == "step"
    # Each epoch's lr is the schedule's after 0, 4 and 8 of its 12 steps; all 12 are taken.
    assert history["lr"].tolist() == pytest.approx(lrs_after(one_cycle, [0, 4, 8]))
    assert scheduler.last_epoch == 12


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (one_cycle, "step"),
        (lambda opt: schedulers.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=2), "step"),
        (lambda opt: schedulers.StepLR(opt, step_size=2), "epoch"),
        (lambda opt: schedulers.CosineAnnealingLR(opt, T_max=10), "epoch"),
        (lambda opt: schedulers.LambdaLR(opt, lambda step: 1.0), "epoch"),
    ],
)
def test_the_default_interval_comes_from_the_scheduler(make, expected):
    _, optimizer = sgd()
    assert interval_for(make(optimizer), None) == expected


def test_an_explicit_interval_wins():
    net, optimizer = sgd()
    model = KerasModel(
        net, nn.MSELoss(), optimizer=optimizer, lr_scheduler=one_cycle(optimizer), scheduler_interval="epoch"
    )
    assert model.scheduler_interval == "epoch"


def _linear_warmup(step: int, *, warmup: int) -> float:
    return min(1.0, step / warmup)


def test_a_hugging_face_warmup_schedule_steps_per_step():
    # transformers' get_linear_schedule_with_warmup is a LambdaLR over a function of transformers.optimization; a
    # stand-in function that says it lives there is recognised the same way, without transformers installed.
    def warmup(step):
        return _linear_warmup(step, warmup=4)

    warmup.__module__ = "transformers.optimization"
    _, optimizer = sgd()
    assert interval_for(schedulers.LambdaLR(optimizer, warmup), None) == "step"


def test_a_per_epoch_warmup_from_zero_is_warned_about_and_a_per_step_one_is_not():
    net, optimizer = sgd()
    warmup = schedulers.LambdaLR(optimizer, lambda step: _linear_warmup(step, warmup=8))
    model = KerasModel(net, nn.MSELoss(), optimizer=optimizer, lr_scheduler=warmup, device="cpu")
    with pytest.warns(UserWarning, match=r"steps once per epoch, and the learning rate is 0 now.*"
                      r"scheduler_interval='step'"):  # fmt: skip
        history = model.fit(BATCHES, epochs=2, verbose=0)
    assert history["lr"].tolist() == [0.0, pytest.approx(0.0125)]

    net, optimizer = sgd()
    warmup = schedulers.LambdaLR(optimizer, lambda step: _linear_warmup(step, warmup=8))
    model = KerasModel(net, nn.MSELoss(), optimizer=optimizer, lr_scheduler=warmup, scheduler_interval="step")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = model.fit(BATCHES, epochs=2, verbose=0)
    assert history["lr"].tolist() == [0.0, pytest.approx(0.05)]  # 4 of the 8 warm-up steps taken


@pytest.mark.parametrize(("accumulate", "needed"), [(1, 16), (3, 8)])
def test_a_one_cycle_too_short_for_the_fit_is_an_error_before_any_step(accumulate, needed):
    net, optimizer = sgd()
    before = [p.detach().clone() for p in net.parameters()]
    scheduler = schedulers.OneCycleLR(optimizer, max_lr=0.1, total_steps=6)
    model = KerasModel(
        net, nn.MSELoss(), optimizer=optimizer, lr_scheduler=scheduler, accumulate_grad_batches=accumulate
    )
    per_epoch = needed // 4
    with pytest.raises(
        ValueError,
        match=rf"^lr_scheduler is OneCycleLR\(total_steps=6\) with 6 steps left, but fit\(epochs=4\) takes up to "
        rf"4 x {per_epoch} = {needed} optimizer steps, and torch fails at step 7; build it with total_steps={needed} "
        rf"\(or epochs=4, steps_per_epoch={per_epoch}\)$",
    ):
        model.fit(BATCHES, epochs=4, verbose=0)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_a_one_cycle_that_fits_exactly_runs_to_its_last_step():
    net, optimizer = sgd()
    scheduler = schedulers.OneCycleLR(optimizer, max_lr=0.1, total_steps=8)
    model = KerasModel(net, nn.MSELoss(), optimizer=optimizer, lr_scheduler=scheduler, device="cpu")
    model.fit(BATCHES, epochs=2, verbose=0)
    assert scheduler.last_epoch == 8
    with pytest.raises(ValueError, match=r"OneCycleLR\(total_steps=8\) with 0 steps left"):
        model.fit(BATCHES, epochs=1, verbose=0)  # a second fit in the same process has no steps left
