"""history_columns and History: the column order known before training, and the frame built row by row."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pandas as pd
import pytest
import torch
from torch import nn

from kerasish import KerasModel, TerminateOnNaN
from kerasish.history import History, history_columns


def test_columns_with_val():
    assert history_columns(["acc", "f1"], has_val=True) == [
        "epoch",
        "train_loss",
        "train_acc",
        "train_f1",
        "val_loss",
        "val_acc",
        "val_f1",
        "lr",
        "time",
    ]


def test_columns_without_val():
    assert history_columns(["acc", "f1"], has_val=False) == [
        "epoch",
        "train_loss",
        "train_acc",
        "train_f1",
        "lr",
        "time",
    ]


@pytest.mark.parametrize(
    ("has_val", "expected"),
    [(True, ["epoch", "train_loss", "val_loss", "lr", "time"]), (False, ["epoch", "train_loss", "lr", "time"])],
)
def test_columns_without_metrics(has_val, expected):
    assert history_columns([], has_val=has_val) == expected


def test_columns_take_any_iterable_of_names():
    metrics = {"acc": object(), "mae": object()}
    assert history_columns(metrics, has_val=False) == ["epoch", "train_loss", "train_acc", "train_mae", "lr", "time"]
    assert history_columns(iter(["acc"]), has_val=True) == [
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "time",
    ]


def row(epoch: int, **extra) -> dict:
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 2.0 / epoch, "lr": 0.1, "time": 0.5, **extra}


COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "time"]


def test_new_history_is_an_empty_frame_with_the_columns():
    history = History(COLUMNS)
    assert list(history.frame.columns) == COLUMNS
    assert len(history.frame) == 0
    assert history.rows == []


def test_append_builds_the_frame():
    history = History(COLUMNS)
    history.append(row(1))
    history.append(row(2))
    assert list(history.frame.columns) == COLUMNS
    assert history.frame["epoch"].tolist() == [1, 2]
    assert history.frame["train_loss"].tolist() == [1.0, 0.5]
    assert history.frame["val_loss"].tolist() == [2.0, 1.0]


def test_append_takes_keys_in_any_order():
    history = History(COLUMNS)
    history.append({"time": 0.5, "lr": 0.1, "val_loss": 2.0, "train_loss": 1.0, "epoch": 1})
    assert list(history.frame.columns) == COLUMNS
    assert history.frame.iloc[0].tolist() == [1, 1.0, 2.0, 0.1, 0.5]


def test_append_keeps_extra_columns_after_the_known_ones():
    history = History(COLUMNS)
    history.append({"grad_norm": 3.0, **row(1)})
    history.append(row(2, grad_norm=4.0, tokens=100))
    assert list(history.frame.columns) == [*COLUMNS, "grad_norm", "tokens"]
    assert history.frame["grad_norm"].tolist() == [3.0, 4.0]
    tokens = history.frame["tokens"].tolist()
    assert math.isnan(tokens[0])
    assert tokens[1] == 100


def test_append_copies_the_logs():
    history = History(COLUMNS)
    logs = row(1)
    history.append(logs)
    logs["train_loss"] = 99.0
    logs["late"] = 1.0
    assert history.rows == [row(1)]
    assert history.frame["train_loss"].tolist() == [1.0]
    history.append(row(2))
    assert list(history.frame.columns) == COLUMNS


def test_a_missing_known_column_is_nan():
    history = History(COLUMNS)
    history.append({"epoch": 1, "train_loss": 0.5, "lr": 0.1, "time": 0.2})
    assert math.isnan(history.frame["val_loss"].iloc[0])


def test_the_frame_is_built_once_per_read_after_an_append(monkeypatch):
    history = History(COLUMNS)
    built = []
    real = pd.DataFrame
    monkeypatch.setattr(pd, "DataFrame", lambda *a, **k: built.append(1) or real(*a, **k))
    for epoch in range(1, 6):
        history.append(row(epoch))
    assert built == []  # appending builds nothing
    first = history.frame
    assert history.frame is first
    assert len(built) == 1
    history.append(row(6))
    assert history.frame["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert len(built) == 2


def test_a_non_finite_epoch_loss_is_warned_about_once_per_fit():
    x = torch.randn(8, 3)
    data = [(x, torch.full((8, 1), float("nan")))]  # a NaN label: every loss is NaN
    model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(data, data, epochs=3, verbose=0)
    nan_warnings = [w for w in caught if issubclass(w.category, RuntimeWarning) and "not finite" in str(w.message)]
    assert len(nan_warnings) == 1
    assert str(nan_warnings[0].message).startswith("epoch 1: train_loss=nan, val_loss=nan; a batch's loss was not")
    assert "TerminateOnNaN()" in str(nan_warnings[0].message)
    assert nan_warnings[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with TerminateOnNaN the fit already answers a NaN loss: no warning
        model.fit(data, data, epochs=3, verbose=0, callbacks=[TerminateOnNaN()])


FIT_WITHOUT_PANDAS = """
import sys
import torch
from torch import nn
from kerasish import Callback, CSVLogger, KerasModel, ModelCheckpoint

class Watch(Callback):
    def on_epoch_end(self, model, logs):
        seen.append("pandas" in sys.modules)

seen = ["pandas" in sys.modules]
x = torch.randn(16, 3)
data = [(x, x.sum(1, keepdim=True))]
model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu")
history = model.fit(data, data, epochs=2, ckpt_path=sys.argv[1] + "/{epoch}.pt", verbose=0,
                    callbacks=[ModelCheckpoint(sys.argv[1] + "/last.pt"), CSVLogger(sys.argv[1] + "/h.csv"), Watch()])
seen.append(type(history).__name__)
print(seen)
"""


def test_a_fit_loads_pandas_only_when_it_returns_the_history(tmp_path):
    # pandas costs a process about 28 MB (benchmarks/memory.py): kerasish imports it when a history is first read
    # as a DataFrame, after training, never during it, whatever the built-in callbacks check in on_fit_begin.
    code = [sys.executable, "-c", FIT_WITHOUT_PANDAS, str(tmp_path)]
    result = subprocess.run(code, capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[False, False, False, 'DataFrame']"
