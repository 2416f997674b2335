"""EarlyStopping driven by scripted metric sequences through a stand-in model, and in a few real fits."""

from __future__ import annotations

import io
import math
import re
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from kerasish import EarlyStopping, EpochRunner, KerasModel
from tests.helpers import EpochTag, regression_batches, tagged_linear

NAN = math.nan


def fake_model() -> SimpleNamespace:
    return SimpleNamespace(stop_training=False, net=None)


def run_fit(stop: EarlyStopping, values: list[float], column: str = "val_loss") -> int | None:
    """One simulated fit: the epoch at which ``stop`` asked to stop, or None when it ran out of values."""
    model = fake_model()
    stop.on_fit_begin(model, {})
    for epoch, value in enumerate(values, start=1):
        stop.on_epoch_end(model, {"epoch": epoch, "train_loss": 1.0, column: value})
        if model.stop_training:
            return epoch
    return None


@pytest.mark.parametrize(
    ("values", "patience", "mode", "min_delta", "expected_stop"),
    [
        pytest.param([0.5, 0.4, 0.45, 0.3], 2, "min", 0.0, None, id="one-bad-epoch-then-better"),
        pytest.param([0.5, 0.4, 0.45, 0.46, 0.3], 2, "min", 0.0, 4, id="two-bad-epochs"),
        pytest.param([0.5, 0.6], 1, "min", 0.0, 2, id="patience-1"),
        pytest.param([0.5, 0.4, 0.45, 0.44, 0.43, 0.2], 3, "min", 0.0, 5, id="patience-3"),
        pytest.param([0.5, 0.5, 0.5], 2, "min", 0.0, 3, id="ties-are-no-improvement"),
        pytest.param([0.8, 0.9, 0.85, 0.9, 0.95], 2, "max", 0.0, 4, id="max-tie-counts-as-bad"),
        pytest.param([0.1, 0.2, 0.3, 0.4], 1, "max", 0.0, None, id="max-improving"),
        pytest.param([0.1, 0.2, 0.3, 0.4], 1, "min", 0.0, 2, id="min-worsening"),
        pytest.param([NAN, NAN, NAN], 2, "min", 0.0, 2, id="all-nan"),
        pytest.param([0.5, NAN, NAN, 0.1], 2, "min", 0.0, 3, id="nan-after-best"),
        pytest.param([1.0, 0.95, 0.92, 0.5], 2, "min", 0.1, 3, id="min-delta-not-beaten"),
        pytest.param([1.0, 0.75], 1, "min", 0.25, 2, id="min-delta-exactly-is-not-more"),
        pytest.param([1.0, 0.8, 0.6, 0.4], 1, "min", 0.1, None, id="min-delta-beaten"),
        pytest.param([0.5, 0.55, 0.58, 0.7], 2, "max", 0.1, 3, id="max-min-delta"),
    ],
)
def test_stop_epoch(values, patience, mode, min_delta, expected_stop):
    stop = EarlyStopping("val_loss", mode=mode, min_delta=min_delta, patience=patience)
    assert run_fit(stop, values) == expected_stop
    assert stop.stopped_epoch == expected_stop


def test_wait_counts_epochs_since_the_best():
    stop = EarlyStopping("val_loss", patience=10)
    model = fake_model()
    stop.on_fit_begin(model, {})
    waits = []
    for epoch, value in enumerate([0.5, 0.6, 0.7, 0.4, 0.4], start=1):
        stop.on_epoch_end(model, {"epoch": epoch, "val_loss": value})
        waits.append(stop.wait)
    assert waits == [0, 1, 2, 0, 1]
    assert (stop.best.value, stop.best.epoch) == (0.4, 4)
    assert model.stop_training is False


def test_monitors_the_named_column_in_max_mode():
    stop = EarlyStopping("val_acc", mode="max", patience=2)
    assert run_fit(stop, [0.80, 0.90, 0.89, 0.88, 0.99], column="val_acc") == 4
    assert (stop.best.value, stop.best.epoch) == (0.90, 2)


def test_one_instance_serves_two_fits():
    stop = EarlyStopping("val_loss", patience=2)
    assert run_fit(stop, [0.4, 0.5, 0.6]) == 3
    assert (stop.wait, stop.stopped_epoch, stop.best.value) == (2, 3, 0.4)

    stop.on_fit_begin(fake_model(), {})
    assert (stop.wait, stop.stopped_epoch, stop.best.value, stop.best.epoch) == (0, None, None, None)

    # Every value is worse than the first fit's best; only a reset lets them count as improvements.
    assert run_fit(stop, [0.9, 0.8, 0.7, 0.6]) is None
    assert (stop.best.value, stop.best.epoch, stop.wait) == (0.6, 4, 0)


@pytest.mark.parametrize("patience", [0, -1, 1.5, True, "3", None])
def test_bad_patience_raises(patience):
    with pytest.raises(ValueError, match=f"^patience={re.escape(repr(patience))} is not valid; use an int >= 1"):
        EarlyStopping(patience=patience)


@pytest.mark.parametrize(("kwargs", "match"), [({"mode": "avg"}, r"mode='avg'"), ({"min_delta": -1}, r"min_delta=-1")])
def test_bad_monitor_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


def test_missing_column_raises_key_error_listing_logs():
    stop = EarlyStopping("val_acc", mode="max")
    with pytest.raises(KeyError, match=r"monitor='val_acc' .* available: epoch, train_loss, val_loss"):
        run_fit(stop, [0.5])


def test_verbose_prints_the_stop_line(capsys):
    stop = EarlyStopping("val_loss", patience=2, verbose=1)
    assert run_fit(stop, [0.5, 0.4, 0.45, 0.46]) == 4
    assert capsys.readouterr().out == (
        "early stop at epoch 4: val_loss has not improved for 2 epochs (best 0.4000 at epoch 2)\n"
    )


def test_verbose_with_no_best_says_none(capsys):
    stop = EarlyStopping("val_loss", patience=1, verbose=1)
    assert run_fit(stop, [NAN]) == 1
    assert capsys.readouterr().out == "early stop at epoch 1: val_loss has not improved for 1 epochs (best none)\n"


def test_verbose_0_prints_nothing(capsys):
    stop = EarlyStopping("val_loss", patience=2, verbose=0)
    assert run_fit(stop, [0.5, 0.4, 0.45, 0.46]) == 4
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")


# --- delta_mode, baseline, start_from_epoch -------------------------------------------------------------------------


def waits_of(stop: EarlyStopping, values: list[float], model: SimpleNamespace | None = None) -> list[int]:
    """``stop.wait`` after each epoch of one simulated fit, until it asks to stop."""
    model = model or fake_model()
    stop.on_fit_begin(model, {})
    waits = []
    for epoch, value in enumerate(values, start=1):
        stop.on_epoch_end(model, {"epoch": epoch, "val_loss": value})
        waits.append(stop.wait)
        if model.stop_training:
            break
    return waits


@pytest.mark.parametrize(
    ("values", "mode", "waits", "best"),
    [
        # The margin is 0.1 * |best| = 0.2: -2.1 is not enough, -2.3 is.
        pytest.param([-2.0, -2.1, -2.3], "min", [0, 1, 0], (-2.3, 3), id="min-negative"),
        pytest.param([-2.0, -1.9, -1.7], "max", [0, 1, 0], (-1.7, 3), id="max-negative"),
        pytest.param([-2.0, -2.1, -2.15], "min", [0, 1, 2], (-2.0, 1), id="min-never-by-enough"),
    ],
)
def test_relative_min_delta_with_negative_values(values, mode, waits, best):
    stop = EarlyStopping("val_loss", mode=mode, min_delta=0.1, delta_mode="rel", patience=5)
    assert waits_of(stop, values) == waits
    assert (stop.best.value, stop.best.epoch) == best


@pytest.mark.parametrize(
    ("values", "mode", "min_delta", "waits", "stopped"),
    [
        # New bests that do not beat the baseline count as epochs without improvement.
        pytest.param([0.9, 0.85, 0.8, 0.7], "min", 0.0, [1, 2, 3], 3, id="never-reached"),
        pytest.param([0.9, 0.7, 0.72, 0.71, 0.73], "min", 0.0, [1, 0, 1, 2, 3], 5, id="reached-at-epoch-2"),
        pytest.param([0.75, 0.74], "min", 0.0, [1, 0], None, id="tie-with-baseline-is-not-enough"),
        pytest.param([0.74, 0.72], "min", 0.05, [1, 2], None, id="min-delta-applies-to-baseline"),
        pytest.param([0.5, 0.6, 0.85], "max", 0.0, [1, 2, 0], None, id="max"),
    ],
)
def test_baseline(values, mode, min_delta, waits, stopped):
    baseline = 0.8 if mode == "max" else 0.75
    stop = EarlyStopping("val_loss", mode=mode, min_delta=min_delta, patience=3, baseline=baseline)
    assert waits_of(stop, values) == waits
    assert stop.stopped_epoch == stopped


def test_baseline_does_not_change_the_best_epoch():
    stop = EarlyStopping("val_loss", patience=2, baseline=0.1)
    assert run_fit(stop, [0.5, 0.3, 0.4]) == 2
    assert (stop.best.value, stop.best.epoch) == (0.3, 2)


def test_verbose_says_the_baseline_was_not_reached(capsys):
    stop = EarlyStopping("val_loss", patience=1, baseline=0.25, verbose=1)
    assert run_fit(stop, [0.5]) == 1
    assert capsys.readouterr().out == (
        "early stop at epoch 1: val_loss has not improved for 1 epochs (best 0.5000 at epoch 1; "
        "baseline 0.2500 not reached)\n"
    )


@pytest.mark.parametrize(
    ("values", "start_from_epoch", "waits", "stopped", "best_epoch"),
    [
        pytest.param([0.5, 0.6, 0.7, 0.8, 0.9], 2, [0, 0, 1, 2], 4, 1, id="warm-up-epochs-not-counted"),
        pytest.param([0.5, 0.6, 0.7, 0.8, 0.9], 0, [0, 1, 2], 3, 1, id="no-warm-up"),
        pytest.param([0.9, 0.5, 0.6, 0.7], 3, [0, 0, 0, 1], None, 2, id="best-tracked-during-warm-up"),
    ],
)
def test_start_from_epoch(values, start_from_epoch, waits, stopped, best_epoch):
    stop = EarlyStopping("val_loss", patience=2, start_from_epoch=start_from_epoch)
    assert waits_of(stop, values) == waits
    assert stop.stopped_epoch == stopped
    assert stop.best.epoch == best_epoch


# --- restore_best_weights -------------------------------------------------------------------------------------------


def tagged_model() -> SimpleNamespace:
    return SimpleNamespace(stop_training=False, net=tagged_linear())


def run_tagged(stop: EarlyStopping, model: SimpleNamespace, values: list[float], first_epoch: int = 1) -> None:
    """Epochs from ``first_epoch`` whose weights say their epoch number, then the fit's end."""
    for epoch, value in enumerate(values, start=first_epoch):
        with torch.no_grad():
            for tensor in model.net.state_dict().values():
                tensor.fill_(epoch)
        stop.on_epoch_end(model, {"epoch": epoch, "val_loss": value})
        if model.stop_training:
            break
    stop.on_fit_end(model, {})


@pytest.mark.parametrize(("restore", "tag"), [(True, 2), (False, 4)])
def test_restore_best_weights(restore, tag):
    model = tagged_model()
    stop = EarlyStopping("val_loss", patience=2, restore_best_weights=restore)
    stop.on_fit_begin(model, {})
    run_tagged(stop, model, [0.5, 0.3, 0.4, 0.45, 0.1])
    assert stop.stopped_epoch == 4
    assert model.net.tag.item() == tag
    assert torch.equal(model.net.weight, torch.full((1, 3), float(tag)))


def test_restore_picks_the_best_epoch_even_below_the_baseline():
    model = tagged_model()
    stop = EarlyStopping("val_loss", patience=2, baseline=0.1, restore_best_weights=True)
    stop.on_fit_begin(model, {})
    run_tagged(stop, model, [0.5, 0.3, 0.4])
    assert model.net.tag.item() == 2


def test_verbose_restore_prints_both_lines(capsys):
    model = tagged_model()
    stop = EarlyStopping("val_loss", patience=1, restore_best_weights=True, verbose=1)
    stop.on_fit_begin(model, {})
    run_tagged(stop, model, [0.5, 0.6])
    assert capsys.readouterr().out == (
        "early stop at epoch 2: val_loss has not improved for 1 epochs (best 0.5000 at epoch 1)\n"
        "restored the weights of epoch 1 (val_loss=0.5000)\n"
    )


def test_restore_in_a_real_fit_without_fits_own_restore():
    data = regression_batches()
    model = scripted_model([0.5, 0.2, 0.4, 0.6, 0.1])
    stop = EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    history = model.fit(
        data, data, epochs=5, patience=None, restore_best_weights=False, callbacks=[EpochTag(), stop], verbose=0
    )
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert model.net.tag.item() == 2


def test_reuse_with_restore_restores_each_fits_own_best():
    model = tagged_model()
    stop = EarlyStopping("val_loss", patience=1, restore_best_weights=True)
    stop.on_fit_begin(model, {})
    run_tagged(stop, model, [0.1, 0.5])
    assert model.net.tag.item() == 1

    model.stop_training = False  # as fit does
    stop.on_fit_begin(model, {})
    assert stop.state_dict()["best_weights"] == {"best": {"value": None, "epoch": None}, "weights": None}
    # Every value is worse than the first fit's best; the second fit restores its own best epoch.
    run_tagged(stop, model, [0.9, 0.8, 0.85])
    assert (stop.stopped_epoch, model.net.tag.item()) == (3, 2)


# --- state_dict -----------------------------------------------------------------------------------------------------


def through_disk(state: dict) -> dict:
    """``state`` after ``torch.save`` and a weights-only ``torch.load``, as a resumed fit would read it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


CONFIGS = [
    pytest.param({}, id="plain"),
    pytest.param({"baseline": 0.35}, id="baseline"),
    pytest.param({"start_from_epoch": 3}, id="start_from_epoch"),
    pytest.param({"min_delta": 0.1, "delta_mode": "rel"}, id="relative"),
    pytest.param({"restore_best_weights": True}, id="restore"),
]
VALUES = [0.5, 0.3, 0.4, 0.45, 0.29, 0.31, 0.32, 0.33, 0.34]


def record(stop: EarlyStopping, model: SimpleNamespace, values: list[float], first_epoch: int) -> list[tuple]:
    """``(wait, stop?)`` after each epoch from ``first_epoch``; the weights say their epoch."""
    decisions = []
    for epoch, value in enumerate(values, start=first_epoch):
        model.net.tag.fill_(epoch)
        stop.on_epoch_end(model, {"epoch": epoch, "val_loss": value})
        decisions.append((stop.wait, model.stop_training))
        if model.stop_training:
            break
    stop.on_fit_end(model, {})
    return decisions


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("cut", [2, 4])
def test_a_resumed_instance_decides_as_the_uninterrupted_one(kwargs, cut):
    whole = EarlyStopping("val_loss", patience=3, **kwargs)
    model = tagged_model()
    whole.on_fit_begin(model, {})
    expected = record(whole, model, VALUES, 1)

    first = EarlyStopping("val_loss", patience=3, **kwargs)
    first.on_fit_begin(tagged_model(), {})
    before = record(first, tagged_model(), VALUES[:cut], 1)
    resumed = EarlyStopping("val_loss", patience=3, **kwargs)
    resumed_model = tagged_model()
    resumed.on_fit_begin(resumed_model, {})
    resumed.load_state_dict(through_disk(first.state_dict()))
    after = record(resumed, resumed_model, VALUES[cut:], cut + 1)

    assert before + after == expected
    assert resumed.state_dict().keys() == whole.state_dict().keys()
    assert (resumed.stopped_epoch, resumed.best.epoch, resumed.wait) == (
        whole.stopped_epoch,
        whole.best.epoch,
        whole.wait,
    )
    assert resumed_model.net.tag.item() == model.net.tag.item()


def test_state_dict_round_trips_through_weights_only_load():
    stop = EarlyStopping("val_loss", patience=5, restore_best_weights=True)
    model = tagged_model()
    stop.on_fit_begin(model, {})
    record(stop, model, [0.5, 0.3, 0.4], 1)
    state = through_disk(stop.state_dict())
    assert state["best"] == {"value": 0.3, "epoch": 2}
    assert (state["wait"], state["stopped_epoch"]) == (1, None)
    assert state["best_weights"]["weights"]["tag"].item() == 2


def test_load_state_dict_names_the_keys_it_needs():
    state = EarlyStopping().state_dict()
    with pytest.raises(ValueError, match=r"restore_best_weights=True\) state needs the keys .*'best_weights'"):
        EarlyStopping(restore_best_weights=True).load_state_dict(state)


# --- argument checks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"baseline": "0.5"}, r"^baseline='0.5' is not valid; use a finite number, or None"),
        ({"baseline": NAN}, r"^baseline=nan is not valid"),
        ({"baseline": True}, r"^baseline=True is not valid"),
        ({"start_from_epoch": -1}, r"^start_from_epoch=-1 is not valid; use an int >= 0"),
        ({"start_from_epoch": 1.5}, r"^start_from_epoch=1.5 is not valid"),
        ({"restore_best_weights": 1}, r"^restore_best_weights=1 is not valid; use True or False"),
        ({"delta_mode": "pct"}, r"^delta_mode='pct' is not valid; use 'abs' or 'rel'"),
    ],
)
def test_bad_new_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


def test_options_after_min_delta_are_keyword_only():
    with pytest.raises(TypeError, match="positional"):
        EarlyStopping("val_loss", "min", 0.0, 3)


def test_monitor_typo_fails_when_the_fit_begins():
    model = SimpleNamespace(stop_training=False, history=pd.DataFrame(columns=["epoch", "train_loss", "lr"]))
    stop = EarlyStopping("val_loss")
    with pytest.raises(ValueError, match=r"^EarlyStopping: monitor='val_loss' is not a history column of this fit; "):
        stop.on_fit_begin(model, {})


def test_monitor_typo_fails_before_the_first_step_of_a_real_fit():
    data = regression_batches()
    net = nn.Linear(3, 1)
    before = net.weight.detach().clone()
    model = KerasModel(net, nn.MSELoss(), device="cpu")
    with pytest.raises(ValueError, match=r"available: epoch, train_loss, val_loss, lr, time"):
        model.fit(data, data, epochs=2, callbacks=[EarlyStopping("val_acc", mode="max")], verbose=0)
    assert torch.equal(net.weight, before)


def scripted_model(val_losses: list[float]) -> KerasModel:
    """A model whose val_loss per epoch is read from ``val_losses``; its net has a ``tag`` buffer."""
    script = iter(val_losses)

    class ScriptedRunner(EpochRunner):
        def __call__(self, loader, **kwargs):
            logs = super().__call__(loader, **kwargs)
            if self.stage == "val":
                logs["val_loss"] = next(script)
            return logs

    class ScriptedModel(KerasModel):
        EpochRunner = ScriptedRunner

    net = tagged_linear()
    return ScriptedModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.01), device="cpu")
