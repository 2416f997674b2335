"""plot_history: a panel per metric, the history's own numbers as curves, and the epoch the fit restored marked."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import torch
from torch import nn

import kerasish
from kerasish import KerasModel, plot_history
from kerasish.plotting import best_epoch, best_rule
from tests.helpers import regression_batches

matplotlib.use("Agg")
from matplotlib import pyplot as plt


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def history_frame(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    return pd.DataFrame({"epoch": range(1, n + 1), **columns})


def curves(axes) -> dict[str, list[float]]:
    """Each labelled line's y values; the best-epoch line by its label, with its x values."""
    out = {}
    for line in axes.get_lines():
        label = line.get_label()
        out[label] = list(line.get_xdata()) if label.startswith("best") else [float(v) for v in line.get_ydata()]
    return out


def best_line_epoch(axes) -> int | None:
    found = [line for line in axes.get_lines() if line.get_label().startswith("best")]
    return int(found[0].get_xdata()[0]) if found else None


def test_one_panel_per_metric_with_the_histories_train_and_val_numbers():
    history = history_frame(
        train_loss=[0.9, 0.5, 0.3], train_acc=[0.6, 0.8, 0.9], val_loss=[0.8, 0.6, 0.7], val_acc=[0.5, 0.7, 0.7],
        lr=[1e-3] * 3, time=[0.1] * 3,
    )  # fmt: skip
    fig = plot_history(history)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "acc"]
    loss, acc = (curves(ax) for ax in fig.axes)
    assert loss["train"] == [0.9, 0.5, 0.3] and loss["val"] == [0.8, 0.6, 0.7]
    assert acc["train"] == [0.6, 0.8, 0.9] and acc["val"] == [0.5, 0.7, 0.7]
    # No fit to ask: the best epoch is the lowest val_loss, marked on every panel.
    assert [best_line_epoch(ax) for ax in fig.axes] == [2, 2]
    assert "best: epoch 2" in loss


def test_metrics_picks_panels_and_other_columns():
    history = history_frame(train_loss=[1.0, 0.5], train_acc=[0.1, 0.2], lr=[0.1, 0.01])
    fig = plot_history(history, metrics=["acc", "lr"])
    assert [ax.get_title() for ax in fig.axes] == ["acc", "lr"]
    assert curves(fig.axes[1])["lr"] == [0.1, 0.01]
    assert best_line_epoch(fig.axes[0]) == 2  # train_loss decides without val data


def test_panels_wrap_after_three_in_a_row():
    history = history_frame(train_loss=[1.0, 0.5], **{f"train_m{i}": [1.0, 2.0] for i in range(3)})
    fig = plot_history(history)
    rows = {round(ax.get_position().y0, 3) for ax in fig.axes}
    assert len(fig.axes) == 4 and len(rows) == 2


def test_fit_history_remembers_its_monitor_so_the_marked_epoch_is_the_restored_one():
    torch.manual_seed(0)
    batches = regression_batches(n=32, batch_size=8)
    net = nn.Linear(3, 1)
    model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.05), device="cpu")
    # A min_delta large enough that late, small improvements don't count: the restored epoch is not the minimum.
    history = model.fit(batches, batches, epochs=12, monitor="val_loss", min_delta=0.5, patience=None, verbose=0)
    assert history.attrs["monitor"] == {"name": "val_loss", "mode": "min", "min_delta": 0.5, "delta_mode": "abs"}
    marked = best_line_epoch(plot_history(history).axes[0])
    restored = model.evaluate(batches)["val_loss"]
    assert history.loc[history["epoch"] == marked, "val_loss"].item() == pytest.approx(restored, rel=1e-6)
    assert marked < int(history["val_loss"].idxmin()) + 1


def test_max_mode_monitor_from_the_fit_and_explicit_override():
    history = history_frame(train_loss=[1.0, 0.9, 0.8], val_loss=[1.0, 0.5, 0.9], val_acc=[0.2, 0.6, 0.9])
    history.attrs["monitor"] = {"name": "val_acc", "mode": "max", "min_delta": 0.0, "delta_mode": "abs"}
    assert best_line_epoch(plot_history(history).axes[0]) == 3
    assert best_line_epoch(plot_history(history, monitor="val_loss", mode="min").axes[0]) == 2
    # The star sits on the monitored curve's best value.
    acc_panel = plot_history(history).axes[1]
    stars = [line for line in acc_panel.get_lines() if line.get_marker() == "*"]
    assert [(list(s.get_xdata()), list(s.get_ydata())) for s in stars] == [([3], [0.9])]


def test_another_column_is_marked_by_the_direction_the_fit_knew_and_an_unknown_one_is_an_error():
    history = history_frame(train_loss=[1.0, 0.9, 0.8], val_loss=[1.0, 0.5, 0.9], val_acc=[0.2, 0.6, 0.9])
    history.attrs["directions"] = {"train_loss": "min", "val_loss": "min", "val_acc": "max"}
    assert best_epoch(history, best_rule(history, monitor="val_acc")) == 3
    assert best_epoch(history, best_rule(history, monitor="val_loss")) == 2
    del history.attrs["directions"]  # a frame that did not come from fit: the loss still has its direction
    assert best_epoch(history, best_rule(history, monitor="val_loss")) == 2
    with pytest.raises(ValueError, match=r"^plot_history: monitor='val_acc' with mode=None, but .* pass mode='max'"):
        best_rule(history, monitor="val_acc")


def test_best_epoch_follows_the_early_stopping_rule():
    history = history_frame(val_loss=[0.5, float("nan"), 0.5, 0.45, 0.44])
    assert best_epoch(history, best_rule(history)) == 5
    flat = history_frame(val_loss=[0.5, 0.5, 0.5])
    assert best_epoch(flat, best_rule(flat)) == 1  # a tie never improves
    history.attrs["monitor"] = {"name": "val_loss", "mode": "min", "min_delta": 0.02, "delta_mode": "abs"}
    assert best_epoch(history, best_rule(history)) == 4


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda h: plot_history(h.to_dict()), TypeError, "history must be the pandas DataFrame that fit returns"),
        (lambda h: plot_history(h.iloc[:0]), ValueError, "history has no epochs to plot yet"),
        (lambda h: plot_history(h, ["accuracy"]), ValueError,
         "metrics=['accuracy']: 'accuracy' not in the history; available: loss, acc, lr"),
        (lambda h: plot_history(h, "acc"), TypeError, "metrics must be a list of names, e.g. ['acc']"),
        (lambda h: plot_history(h, monitor="val_acc"), ValueError, "monitor='val_acc' is not a history column"),
        (lambda h: plot_history(h, monitor="train_acc", mode="best"), ValueError, "mode='best' is not valid"),
    ],
)  # fmt: skip
def test_bad_input_is_named(call, error, message):
    history = history_frame(train_loss=[1.0, 0.5], train_acc=[0.1, 0.2], lr=[0.1, 0.01])
    with pytest.raises(error, match=re.escape(message)):
        call(history)


def test_missing_matplotlib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    hint = 'plotting needs matplotlib: pip install matplotlib (or, in a clone of kerasish: pip install -e ".[plot]")'
    with pytest.raises(ImportError, match=re.escape(hint)):
        plot_history(history_frame(train_loss=[1.0]))


def test_kerasish_imports_matplotlib_and_ipython_only_when_asked_to_draw():
    # At run time torchmetrics imports matplotlib whenever it is installed, so look at kerasish's own imports:
    # none of its modules may import these at module level.
    optional = ("matplotlib", "IPython")
    offenders = []
    for path in Path(kerasish.__file__).parent.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] in optional]
    assert offenders == []
    code = "import sys, kerasish; print([m for m in ('IPython', 'tqdm.auto') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
