"""CSVLogger: the file after real fits, rows visible mid-fit, append across fits, header checks, value formatting."""

from __future__ import annotations

import csv
import math
import re
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from kerasish import Callback, EarlyStopping, KerasModel
from kerasish.callbacks.csv_logger import CSVLogger
from tests.helpers import Recorder, regression_batches


def mae(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (preds - labels).abs().mean()


def small_model() -> KerasModel:
    net = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    return KerasModel(net, nn.MSELoss(), metrics_dict={"mae": mae}, optimizer=optimizer, device="cpu")


def read_rows(path, separator: str = ",") -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f, delimiter=separator))


def as_history(rows: list[list[str]]) -> list[list[float]]:
    """Parses data rows back to numbers: the epoch as an int, every other cell as a float."""
    return [[int(row[0]), *map(float, row[1:])] for row in rows]


def history_values(history: pd.DataFrame) -> list[list[float]]:
    return [[int(row[0]), *row[1:]] for row in history.itertuples(index=False)]


class LineCounter(Callback):
    """Counts the lines of a file at each epoch end, as ``tail -f`` would see them."""

    def __init__(self, path) -> None:
        self.path = path
        self.lines: list[int] = []

    def on_epoch_end(self, model, logs):
        with open(self.path, encoding="utf-8") as f:
            self.lines.append(len(f.read().splitlines()))


class FailsAtEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, model, logs):
        if logs["epoch"] == self.epoch:
            raise RuntimeError(f"boom at epoch {self.epoch}")


def test_real_fit_writes_the_header_and_every_epochs_exact_values(tmp_path):
    path = tmp_path / "log.csv"
    batches = regression_batches(n=12)
    history = small_model().fit(batches, batches, epochs=3, callbacks=[CSVLogger(path)], verbose=0)
    header, *rows = read_rows(path)
    assert header == ["epoch", "train_loss", "train_mae", "val_loss", "val_mae", "lr", "time"]
    assert header == list(history.columns)
    assert [row[0] for row in rows] == ["1", "2", "3"]
    # repr precision: the file reads back to the history's floats exactly, not to a rounded copy
    assert as_history(rows) == history_values(history)


def test_each_row_is_in_the_file_when_its_epoch_ends(tmp_path):
    path = tmp_path / "log.csv"
    counter = LineCounter(path)
    batches = regression_batches()
    small_model().fit(batches, epochs=4, callbacks=[CSVLogger(path), counter], verbose=0)
    assert counter.lines == [2, 3, 4, 5]  # the header and each finished epoch, before the fit ends


def test_rows_written_before_a_failing_callback_stay_in_the_file(tmp_path):
    path = tmp_path / "log.csv"
    batches = regression_batches()
    with pytest.raises(RuntimeError, match="boom at epoch 2"):
        small_model().fit(batches, epochs=5, callbacks=[CSVLogger(path), FailsAtEpoch(2)], verbose=0)
    assert [row[0] for row in read_rows(path)] == ["epoch", "1", "2"]


def test_append_continues_the_log_of_an_earlier_fit(tmp_path):
    path = tmp_path / "log.csv"
    batches = regression_batches()
    first = small_model().fit(batches, batches, epochs=2, callbacks=[CSVLogger(path)], verbose=0)
    second = small_model().fit(batches, batches, epochs=3, callbacks=[CSVLogger(path, append=True)], verbose=0)
    header, *rows = read_rows(path)
    assert header == list(first.columns)
    assert [row[0] for row in rows] == ["1", "2", "1", "2", "3"]  # one header, both fits' rows
    assert as_history(rows) == history_values(first) + history_values(second)


def test_append_to_a_missing_or_empty_file_writes_the_header(tmp_path):
    batches = regression_batches()
    for path in (tmp_path / "new.csv", tmp_path / "empty.csv"):
        if path.name == "empty.csv":
            path.write_text("")
        history = small_model().fit(batches, epochs=1, callbacks=[CSVLogger(path, append=True)], verbose=0)
        assert read_rows(path)[0] == list(history.columns)
        assert len(read_rows(path)) == 2


def test_append_false_replaces_an_existing_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("old,stuff\n1,2\n3,4\n")
    batches = regression_batches()
    history = small_model().fit(batches, epochs=2, callbacks=[CSVLogger(path)], verbose=0)
    header, *rows = read_rows(path)
    assert header == list(history.columns)
    assert as_history(rows) == history_values(history)


def test_one_instance_serves_two_fits(tmp_path):
    path = tmp_path / "log.csv"
    logger = CSVLogger(path)
    batches = regression_batches()
    small_model().fit(batches, epochs=3, callbacks=[logger], verbose=0)
    second = small_model().fit(batches, epochs=2, callbacks=[logger], verbose=0)
    assert as_history(read_rows(path)[1:]) == history_values(second)


def test_append_to_a_file_with_other_columns_fails_before_any_step(tmp_path):
    path = tmp_path / "log.csv"
    batches = regression_batches()
    small_model().fit(batches, batches, epochs=1, callbacks=[CSVLogger(path)], verbose=0)
    before = path.read_text()
    recorder = Recorder()
    model = small_model()
    weights = model.net.weight.detach().clone()
    message = (
        r"CSVLogger\(path='.*log\.csv', append=True\): the file's header is "
        r"\['epoch', 'train_loss', 'train_mae', 'val_loss', 'val_mae', 'lr', 'time'\] but this fit's columns are "
        r"\['epoch', 'train_loss', 'train_mae', 'lr', 'time'\]; log to another path, or pass append=False"
    )
    with pytest.raises(ValueError, match=message):
        model.fit(batches, epochs=2, callbacks=[CSVLogger(path, append=True), recorder], verbose=0)
    assert recorder.calls == []
    assert torch.equal(model.net.weight, weights)
    assert path.read_text() == before


def test_floats_at_full_precision_nan_inf_and_missing_cells(tmp_path):
    path = tmp_path / "log.csv"
    logger = CSVLogger(path, separator=";")
    model = SimpleNamespace(history=pd.DataFrame(columns=["epoch", "train_loss", "val_loss", "lr", "time"]))
    logger.on_fit_begin(model, {})
    logger.on_epoch_end(model, {"epoch": 1, "train_loss": 0.1 + 0.2, "val_loss": math.nan, "lr": 1e-3, "time": 2.5})
    logger.on_epoch_end(model, {"epoch": 2, "train_loss": math.inf, "lr": 1e-3, "time": 0.25})
    logger.on_fit_end(model, {})
    assert path.read_text().splitlines() == [
        "epoch;train_loss;val_loss;lr;time",
        "1;0.30000000000000004;nan;0.001;2.5",
        "2;inf;;0.001;0.25",
    ]


def test_bad_path_fails_at_construction(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ValueError, match=r"path='.*taken/log\.csv': '.*taken' is a file, not a directory"):
        CSVLogger(tmp_path / "taken" / "log.csv")
    with pytest.raises(ValueError, match=r"path='.*' is a directory"):
        CSVLogger(tmp_path)


def test_a_missing_directory_is_created_with_the_first_row(tmp_path):
    path = tmp_path / "runs" / "a" / "history.csv"
    logger = CSVLogger(path)
    model = SimpleNamespace(history=pd.DataFrame(columns=["epoch", "train_loss"]))
    logger.on_fit_begin(model, {})
    assert list(tmp_path.iterdir()) == []
    logger.on_epoch_end(model, {"epoch": 1, "train_loss": 0.5})
    logger.on_fit_end(model, {})
    assert read_rows(path) == [["epoch", "train_loss"], ["1", "0.5"]]


@pytest.mark.parametrize("separator", ["", ";;", '"', "\n", 1])
def test_bad_separator_raises(tmp_path, separator):
    with pytest.raises(ValueError, match=re.escape(f"separator={separator!r} is not valid; use one character")):
        CSVLogger(tmp_path / "log.csv", separator=separator)


def test_append_must_be_a_bool(tmp_path):
    with pytest.raises(TypeError, match=r"append='yes' is not valid; use True or False"):
        CSVLogger(tmp_path / "log.csv", append="yes")


def test_options_are_keyword_only(tmp_path):
    with pytest.raises(TypeError):
        CSVLogger(tmp_path / "log.csv", True)


def test_a_fit_that_fails_before_its_first_epoch_leaves_an_existing_log_as_it_was(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("an earlier run's log\n")
    data = regression_batches()
    bad_monitor = EarlyStopping("val_accuracy", patience=2)  # fails in on_fit_begin, after CSVLogger's
    with pytest.raises(ValueError, match="monitor='val_accuracy' is not a history column"):
        small_model().fit(data, data, epochs=2, callbacks=[CSVLogger(path), bad_monitor], verbose=0)
    assert path.read_text() == "an earlier run's log\n"
