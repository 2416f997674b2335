"""EarlyStopping driven by scripted metric sequences through a stand-in model."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest

from kerasish import EarlyStopping

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
