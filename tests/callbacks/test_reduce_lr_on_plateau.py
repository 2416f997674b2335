"""ReduceLROnPlateau driven by scripted metric sequences through a stand-in model, and in one real fit."""

from __future__ import annotations

import io
import math
import re
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from kerasish import EpochRunner, KerasModel
from kerasish.callbacks.reduce_lr_on_plateau import ReduceLROnPlateau
from tests.helpers import regression_batches, tagged_linear

NAN = math.nan


def fake_model(*lrs: float) -> SimpleNamespace:
    """A stand-in with an optimizer of one param group per learning rate."""
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs or (1.0,)]
    return SimpleNamespace(stop_training=False, optimizer=torch.optim.SGD(groups))


def lrs_of(model: SimpleNamespace) -> list[float]:
    return [group["lr"] for group in model.optimizer.param_groups]


def run_fit(plateau: ReduceLROnPlateau, values: list[float], model: SimpleNamespace | None = None) -> list[float]:
    """One simulated fit: the first group's learning rate after each epoch's end."""
    model = model or fake_model()
    plateau.on_fit_begin(model, {})
    seen = []
    for epoch, value in enumerate(values, start=1):
        plateau.on_epoch_end(model, {"epoch": epoch, "val_loss": value})
        seen.append(lrs_of(model)[0])
    return seen


@pytest.mark.parametrize(
    ("values", "kwargs", "lrs"),
    [
        pytest.param([1.0, 1.1, 1.2, 1.3, 1.4], {"patience": 2}, [1, 1, 0.5, 0.5, 0.25], id="patience-2"),
        pytest.param([1.0, 0.9, 0.8, 0.7], {"patience": 1}, [1, 1, 1, 1], id="improving"),
        pytest.param([1.0, 1.1, 0.9, 1.0, 1.1], {"patience": 2}, [1, 1, 1, 1, 0.5], id="improvement-resets-the-count"),
        pytest.param([1.0, 1.0, 1.0], {"patience": 2}, [1, 1, 0.5], id="ties-are-no-improvement"),
        pytest.param([NAN, NAN], {"patience": 2}, [1, 0.5], id="nan-is-no-improvement"),
        pytest.param([1.0, 0.95, 0.92], {"patience": 2, "min_delta": 0.1}, [1, 1, 0.5], id="min-delta"),
        pytest.param([0.5, 0.6, 0.55], {"patience": 1, "mode": "max"}, [1, 1, 0.5], id="max"),
        # The margin is 0.1 * |best| = 0.2: -2.1 is not enough, -2.3 is.
        pytest.param(
            [-2.0, -2.1, -2.3, -2.4],
            {"patience": 1, "min_delta": 0.1, "delta_mode": "rel"},
            [1, 0.5, 0.5, 0.25],
            id="relative-negative",
        ),
    ],
)
def test_reductions(values, kwargs, lrs):
    plateau = ReduceLROnPlateau("val_loss", factor=0.5, **kwargs)
    assert run_fit(plateau, values) == pytest.approx(lrs)


def test_cooldown_skips_epochs_after_a_reduction():
    plateau = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2)
    lrs = run_fit(plateau, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7])
    assert lrs == pytest.approx([1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125])


def test_the_best_is_tracked_during_cooldown():
    plateau = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=1)
    assert run_fit(plateau, [1.0, 1.1, 0.2, 0.3]) == pytest.approx([1, 0.5, 0.5, 0.25])
    assert (plateau.best.value, plateau.best.epoch) == (0.2, 3)


def test_min_lr_is_a_floor():
    plateau = ReduceLROnPlateau(factor=0.1, patience=1, min_lr=0.05)
    assert run_fit(plateau, [1.0, 2.0, 3.0, 4.0]) == pytest.approx([1, 0.1, 0.05, 0.05])


def test_min_lr_per_param_group():
    model = fake_model(1.0, 0.1)
    plateau = ReduceLROnPlateau(factor=0.1, patience=1, min_lr=[0.5, 0.0])
    run_fit(plateau, [1.0, 2.0, 3.0], model)
    assert lrs_of(model) == pytest.approx([0.5, 0.001])


def test_every_param_group_is_reduced():
    model = fake_model(1.0, 0.1, 0.01)
    run_fit(ReduceLROnPlateau(factor=0.5, patience=1), [1.0, 2.0], model)
    assert lrs_of(model) == pytest.approx([0.5, 0.05, 0.005])


def test_min_lr_list_of_the_wrong_length_fails_when_the_fit_begins():
    plateau = ReduceLROnPlateau(min_lr=[0.1, 0.2])
    message = "min_lr=[0.1, 0.2] has 2 values, but the optimizer has 3 param groups; give one per group"
    with pytest.raises(ValueError, match=re.escape(message)):
        plateau.on_fit_begin(fake_model(1.0, 1.0, 1.0), {})


def test_one_instance_serves_two_fits():
    plateau = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=5)
    assert run_fit(plateau, [1.0, 1.1]) == pytest.approx([1, 0.5])
    assert plateau.cooldown_left == 5

    plateau.on_fit_begin(fake_model(), {})
    assert (plateau.wait, plateau.cooldown_left, plateau.best.value, plateau.best.epoch) == (0, 0, None, None)
    # Worse than the first fit's best, and no cooldown left over: the second fit reduces on its own plateau.
    assert run_fit(plateau, [2.0, 2.1]) == pytest.approx([1, 0.5])


def test_verbose_prints_a_line_per_reduction(capsys):
    model = fake_model(1.0, 0.1)
    run_fit(ReduceLROnPlateau(factor=0.5, patience=2, verbose=1), [1.0, 1.1, 1.2], model)
    assert capsys.readouterr().out == "epoch 3: val_loss has not improved for 2 epochs; lr 1 -> 0.5, 0.1 -> 0.05\n"


def test_no_line_when_every_lr_is_at_its_floor(capsys):
    run_fit(ReduceLROnPlateau(patience=1, min_lr=1.0, verbose=1), [1.0, 1.1])
    assert capsys.readouterr().out == ""


# --- state_dict -----------------------------------------------------------------------------------------------------


def through_disk(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trips_through_weights_only_load():
    plateau = ReduceLROnPlateau(factor=0.5, patience=2, cooldown=3)
    run_fit(plateau, [1.0, 0.5, 0.6, 0.7, 0.8])
    assert through_disk(plateau.state_dict()) == {
        "best": {"value": 0.5, "epoch": 2},
        "wait": 0,
        "cooldown_left": 2,
    }


@pytest.mark.parametrize("cut", [2, 3, 4, 5, 7])  # epochs 4 and 7 end in a reduction, so the cut falls in cooldown
def test_a_resumed_instance_reduces_as_the_uninterrupted_one(cut):
    values = [1.0, 0.8, 0.9, 0.95, 0.85, 0.86, 0.87, 0.7, 0.75, 0.76]
    kwargs = {"factor": 0.5, "patience": 2, "cooldown": 1}
    expected = run_fit(ReduceLROnPlateau(**kwargs), values)

    first, first_model = ReduceLROnPlateau(**kwargs), fake_model()
    before = run_fit(first, values[:cut], first_model)
    # A resumed fit gets the optimizer's state (with its learning rates) and the callback's state back.
    model = fake_model()
    model.optimizer.load_state_dict(first_model.optimizer.state_dict())
    resumed = ReduceLROnPlateau(**kwargs)
    resumed.on_fit_begin(model, {})
    resumed.load_state_dict(through_disk(first.state_dict()))
    after = []
    for epoch, value in enumerate(values[cut:], start=cut + 1):
        resumed.on_epoch_end(model, {"epoch": epoch, "val_loss": value})
        after.append(lrs_of(model)[0])

    assert before + after == expected
    assert expected == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125])


def test_load_state_dict_names_the_missing_keys():
    with pytest.raises(
        ValueError, match=r"ReduceLROnPlateau state lacks \['cooldown_left'\]; got keys \['best', 'wait'\]"
    ):
        ReduceLROnPlateau().load_state_dict({"best": {"value": None, "epoch": None}, "wait": 0})


# --- argument checks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"factor": 1.0}, r"^factor=1.0 is not valid; use a number between 0 and 1 \(exclusive\)"),
        ({"factor": 0}, r"^factor=0 is not valid"),
        ({"factor": "0.5"}, r"^factor='0.5' is not valid"),
        ({"patience": 0}, r"^patience=0 is not valid; use an int >= 1"),
        ({"patience": 2.0}, r"^patience=2.0 is not valid"),
        ({"cooldown": -1}, r"^cooldown=-1 is not valid; use an int >= 0"),
        ({"cooldown": True}, r"^cooldown=True is not valid"),
        ({"min_lr": -0.1}, r"^min_lr=-0.1 is not valid; use a number >= 0, or a list of them with one per param group"),
        ({"min_lr": [0.1, NAN]}, r"^min_lr=\[0.1, nan\] is not valid"),
        ({"min_lr": "0.1"}, r"^min_lr='0.1' is not valid"),
        ({"mode": "avg"}, r"^mode='avg' is not valid"),
        ({"delta_mode": "pct"}, r"^delta_mode='pct' is not valid"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReduceLROnPlateau(**kwargs)


def test_options_after_min_delta_are_keyword_only():
    with pytest.raises(TypeError, match="positional"):
        ReduceLROnPlateau("val_loss", "min", 0.0, "abs")


def test_monitor_typo_fails_when_the_fit_begins():
    model = fake_model()
    model.history = pd.DataFrame(columns=["epoch", "train_loss", "lr", "time"])
    with pytest.raises(ValueError, match=r"^ReduceLROnPlateau: monitor='val_loss' is not a history column of this fit"):
        ReduceLROnPlateau().on_fit_begin(model, {})


# --- in a real fit --------------------------------------------------------------------------------------------------


def test_a_reduction_shows_in_the_next_epochs_lr_column():
    script = iter([1.0, 1.1, 1.2, 0.5, 0.6, 0.7])

    class ScriptedRunner(EpochRunner):
        def __call__(self, loader, **kwargs):
            logs = super().__call__(loader, **kwargs)
            if self.stage == "val":
                logs["val_loss"] = next(script)
            return logs

    class ScriptedModel(KerasModel):
        EpochRunner = ScriptedRunner

    net = tagged_linear()
    model = ScriptedModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.01), device="cpu")
    data = regression_batches()
    plateau = ReduceLROnPlateau(factor=0.5, patience=2)
    history = model.fit(data, data, epochs=6, patience=None, callbacks=[plateau], verbose=0)
    # Reduced at the end of epochs 3 and 6; fit records each epoch's lr at its start.
    assert history["lr"].tolist() == pytest.approx([0.01, 0.01, 0.01, 0.005, 0.005, 0.005])
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(0.0025)
