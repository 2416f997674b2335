"""Monitor: the one rule for "improved"; BestSoFar: the best value and its epoch over scripted sequences."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torchmetrics import MeanMetric, MeanSquaredError
from torchmetrics.classification import MulticlassAccuracy

from kerasish import BestSoFar, Monitor
from kerasish.monitor import direction, monitor_argument

NAN = math.nan


@pytest.mark.parametrize(
    ("mode", "value", "best", "expected"),
    [
        ("min", 0.4, 0.5, True),
        ("min", 0.5, 0.5, False),  # a tie is not an improvement
        ("min", 0.6, 0.5, False),
        ("max", 0.6, 0.5, True),
        ("max", 0.5, 0.5, False),
        ("max", 0.4, 0.5, False),
        ("min", -math.inf, 0.5, False),  # an infinity is a diverged run, never a best epoch
        ("max", math.inf, 0.5, False),
    ],
)
def test_improved_follows_the_mode(mode, value, best, expected):
    assert Monitor("val_loss", mode).improved(value, best) is expected


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("min", 0.45, False),  # better, but by less than min_delta
        ("min", 0.25, False),  # better by exactly min_delta: still not more than it
        ("min", 0.2, True),
        ("max", 0.55, False),
        ("max", 0.75, False),
        ("max", 0.8, True),
    ],
)
def test_improved_must_beat_the_best_by_more_than_min_delta(mode, value, expected):
    best = 0.5
    assert Monitor("val_loss", mode, min_delta=0.25).improved(value, best) is expected


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("best", [None, 0.5, math.inf, -math.inf])
def test_nan_never_improves(mode, best):
    assert Monitor("val_loss", mode).improved(NAN, best) is False


@pytest.mark.parametrize(("mode", "value"), [("min", 1e9), ("max", -1e9), ("min", 0.0), ("max", 0.0)])
def test_first_finite_value_improves_on_none(mode, value):
    assert Monitor("val_loss", mode, min_delta=10.0).improved(value, None) is True


def test_defaults():
    monitor = Monitor()
    assert (monitor.name, monitor.mode, monitor.min_delta) == ("val_loss", None, 0.0)
    assert monitor.resolved().mode == "min"


@pytest.mark.parametrize("mode", ["MIN", "auto", ""])
def test_bad_mode_raises(mode):
    with pytest.raises(
        ValueError,
        match=f"^mode={re.escape(repr(mode))} is not valid; use 'min', 'max', or None \\(from the metric\\)$",
    ):
        Monitor("val_loss", mode)


def plain_fn(preds, labels):
    return preds.mean()


def scored_fn(preds, labels):
    return preds.mean()


scored_fn.higher_is_better = True

METRICS = {
    "acc": MulticlassAccuracy(num_classes=3),
    "mse": MeanSquaredError(),
    "mean": MeanMetric(),
    "f1": plain_fn,
    "score": scored_fn,
    "nll_loss": plain_fn,
}


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("train_loss", "min"),
        ("val_loss", "min"),
        ("val_acc", "max"),  # torchmetrics: higher_is_better=True
        ("train_mse", "min"),  # higher_is_better=False
        ("val_score", "max"),  # a function that says so itself
        ("val_nll_loss", "min"),  # a *_loss column
        ("val_f1", None),  # a plain function: unknown
        ("val_mean", None),  # MeanMetric's higher_is_better is None
        ("lr", None),
        ("time", None),
        ("val_acc_typo", None),
    ],
)
def test_direction_comes_from_the_metric_never_from_the_name(column, expected):
    assert direction(column, METRICS) == expected


def test_direction_without_metrics_knows_only_the_losses():
    assert (direction("val_loss"), direction("val_acc"), direction("val_accuracy")) == ("min", None, None)


def test_given_mode_wins_over_the_metric():
    assert Monitor("val_acc", "min").resolved(METRICS).mode == "min"
    assert Monitor("val_loss", "max").resolved(METRICS).mode == "max"


@pytest.mark.parametrize(
    ("column", "why"),
    [
        ("val_f1", "metric 'f1' \\(function\\) has no higher_is_better"),
        ("val_mean", "metric 'mean' \\(MeanMetric\\) has no higher_is_better"),
        ("lr", "'lr' is neither a loss nor a metric with higher_is_better"),
    ],
)
def test_unknown_direction_is_an_error_naming_the_owner_and_the_fix(column, why):
    with pytest.raises(
        ValueError,
        match=f"^EarlyStopping: monitor='{column}' with mode=None, but {why}, so kerasish cannot tell whether "
        "higher or lower is better; pass mode='max' or mode='min'$",
    ):
        Monitor(column).resolved(METRICS, owner="EarlyStopping")


def test_unresolved_monitor_compares_losses_but_refuses_other_columns():
    assert Monitor("val_loss").improved(0.4, best=0.5) is True
    with pytest.raises(ValueError, match="monitor='val_acc' with mode=None"):
        Monitor("val_acc").improved(0.4, best=0.5)


def test_monitor_argument_takes_a_monitor_or_loose_fields():
    watched = Monitor("val_acc", "max", 0.1)
    assert monitor_argument(watched, None, 0.0, "abs") is watched
    assert monitor_argument("val_acc", "max", 0.1, "abs") == watched
    with pytest.raises(ValueError, match="already carries mode, min_delta and delta_mode; leave those arguments out"):
        monitor_argument(watched, "min", 0.0, "abs")


@pytest.mark.parametrize("min_delta", [-0.1, NAN, "0.1", None])
def test_bad_min_delta_raises(min_delta):
    with pytest.raises(ValueError, match=r"min_delta=.* is not valid; use a number >= 0"):
        Monitor("val_loss", "min", min_delta)


def test_bool_min_delta_raises():
    with pytest.raises(ValueError, match=r"min_delta=True is not valid"):
        Monitor("val_loss", "min", True)


@pytest.mark.parametrize("value", [0.25, torch.tensor(0.25), 1 / 4])
def test_value_in_reads_the_column_as_a_float(value):
    got = Monitor("val_loss").value_in({"epoch": 1, "val_loss": value})
    assert type(got) is float
    assert got == 0.25


def test_value_in_missing_column_lists_available_keys():
    logs = {"epoch": 1, "train_loss": 0.3, "val_loss": 0.4}
    with pytest.raises(
        KeyError, match=r"monitor='val_acc' is not in this epoch's logs; available: epoch, train_loss, val_loss"
    ):
        Monitor("val_acc", "max").value_in(logs)


def _feed(best: BestSoFar, values: list[float], column: str = "val_loss") -> list[bool]:
    return [best.update({"epoch": epoch, column: value}) for epoch, value in enumerate(values, start=1)]


@pytest.mark.parametrize(
    ("mode", "values", "updates", "best_value", "best_epoch"),
    [
        ("min", [0.5, 0.4, 0.45, 0.3], [True, True, False, True], 0.3, 4),
        ("min", [0.5, 0.4, 0.4, 0.45], [True, True, False, False], 0.4, 2),  # the tie keeps the earlier epoch
        ("max", [0.7, 0.9, 0.8, 0.9], [True, True, False, False], 0.9, 2),
        ("min", [NAN, 0.7, NAN, 0.8], [False, True, False, False], 0.7, 2),
        ("max", [NAN, NAN], [False, False], None, None),
    ],
)
def test_best_so_far_tracks_value_and_epoch(mode, values, updates, best_value, best_epoch):
    best = BestSoFar(Monitor("val_loss", mode))
    assert _feed(best, values) == updates
    assert (best.value, best.epoch) == (best_value, best_epoch)


def test_best_so_far_uses_min_delta():
    best = BestSoFar(Monitor("val_loss", "min", min_delta=0.1))
    assert _feed(best, [1.0, 0.95, 0.85, 0.8]) == [True, False, True, False]
    assert (best.value, best.epoch) == (0.85, 3)


def test_best_so_far_reset_forgets_the_best():
    best = BestSoFar(Monitor("val_loss"))
    _feed(best, [0.5, 0.2])
    assert (best.value, best.epoch) == (0.2, 2)
    best.reset()
    assert (best.value, best.epoch) == (None, None)
    # A value worse than the forgotten best is the new best.
    assert best.update({"epoch": 1, "val_loss": 0.9}) is True
    assert (best.value, best.epoch) == (0.9, 1)


def test_best_so_far_missing_column_raises_key_error():
    best = BestSoFar(Monitor("val_acc", "max"))
    with pytest.raises(KeyError, match=r"monitor='val_acc' .* available: epoch, train_loss"):
        best.update({"epoch": 1, "train_loss": 0.3})
    assert (best.value, best.epoch) == (None, None)
