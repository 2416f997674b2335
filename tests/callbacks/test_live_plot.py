"""LivePlot and fit(plot=...): one figure redrawn in place in a notebook, one file written outside, nothing unasked."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from kerasish import KerasModel, LivePlot
from kerasish.callbacks import live_plot
from tests.helpers import regression_batches

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_model() -> KerasModel:
    net = nn.Linear(3, 1)
    return KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.05), device="cpu")


class FakeDisplay:
    """Stands in for IPython.display: records each image shown and each in-place update."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def display(self, image, display_id=False):
        assert display_id is True
        self.events.append("display")
        assert image.data.startswith(PNG_MAGIC)
        return types.SimpleNamespace(update=lambda image: self.events.append("update"))


@pytest.fixture
def notebook(monkeypatch):
    """A process that looks like a Jupyter kernel, with IPython's display recorded."""
    import IPython.display

    fake = FakeDisplay()
    monkeypatch.setattr(IPython.display, "display", fake.display)
    monkeypatch.setattr("kerasish.plotting.in_notebook", lambda: True)
    return fake


def test_outside_a_notebook_plot_true_writes_one_png_in_the_current_directory_and_says_where(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    batches = regression_batches()
    history = make_model().fit(batches, batches, epochs=3, plot=True, verbose=2)
    assert [p.name for p in tmp_path.iterdir()] == ["history.png"]
    assert (tmp_path / "history.png").read_bytes().startswith(PNG_MAGIC)
    assert f"history plot written to {tmp_path / 'history.png'}" in capsys.readouterr().out
    assert len(history) == 3


def test_a_second_run_never_replaces_an_earlier_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    batches = regression_batches()
    (tmp_path / "history.png").write_bytes(b"an earlier plot")
    make_model().fit(batches, epochs=1, plot=True, verbose=0)
    make_model().fit(batches, epochs=1, plot=True, verbose=0)
    assert (tmp_path / "history.png").read_bytes() == b"an earlier plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history-2.png", "history-3.png", "history.png"]
    assert capsys.readouterr().out == ""  # verbose=0 prints nothing, not even the path


def test_plot_true_writes_beside_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    batches = regression_batches()
    make_model().fit(batches, batches, epochs=2, ckpt_path=tmp_path / "run" / "best.pt", plot=True, verbose=0)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "history.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_plot_true_writes_beside_a_checkpoint_whose_directory_the_fit_creates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    batches = regression_batches()
    make_model().fit(batches, batches, epochs=2, ckpt_path=tmp_path / "a" / "b" / "best.pt", plot=True, verbose=0)
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["best.pt", "history.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


@pytest.mark.parametrize("given", ["plots/", "plots/curves.svg"])
def test_a_missing_directory_is_created_when_the_figure_is_written(tmp_path, monkeypatch, given):
    monkeypatch.chdir(tmp_path)
    plot = LivePlot(given, verbose=0)
    assert list(tmp_path.iterdir()) == []
    make_model().fit(regression_batches(), epochs=1, callbacks=[plot], verbose=0)
    assert plot.written == Path("plots") / ("history.png" if given.endswith("/") else "curves.svg")
    assert [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")] == ["plots", str(plot.written)]


def test_a_path_names_the_file_and_its_format(tmp_path):
    batches = regression_batches()
    make_model().fit(batches, batches, epochs=2, plot=tmp_path / "curves.svg", verbose=0)
    assert (tmp_path / "curves.svg").read_text().lstrip().startswith("<?xml")


def test_nothing_is_drawn_or_written_unless_asked(tmp_path, monkeypatch, notebook):
    monkeypatch.chdir(tmp_path)
    batches = regression_batches()
    make_model().fit(batches, batches, epochs=2, verbose=0)
    assert list(tmp_path.iterdir()) == [] and notebook.events == []


def test_in_a_notebook_one_figure_is_redrawn_in_place_and_no_file_is_written(tmp_path, monkeypatch, notebook):
    monkeypatch.chdir(tmp_path)
    # A clock that stands still: drawing takes no time, so every epoch redraws.
    monkeypatch.setattr(live_plot, "time", types.SimpleNamespace(perf_counter=lambda: 0.0))
    batches = regression_batches()
    make_model().fit(batches, batches, epochs=4, plot=True, verbose=0)
    assert notebook.events == ["display", "update", "update", "update"]
    assert list(tmp_path.iterdir()) == []


def test_when_drawing_is_slower_than_epochs_some_are_skipped_and_the_last_draw_shows_them_all(monkeypatch, notebook):
    now = [0.0]

    def perf_counter():  # each call is 1 s later: a draw "takes" 1 s, so the next may start 4 s after it ends
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(live_plot, "time", types.SimpleNamespace(perf_counter=perf_counter))
    plot = LivePlot()
    batches = regression_batches()
    history = make_model().fit(batches, epochs=12, callbacks=[plot], verbose=0)
    assert 2 <= notebook.events.count("update") < len(history) - 1
    assert notebook.events[0] == "display" and notebook.events.count("display") == 1
    assert plot._shown_epochs == len(history) == 12


def test_a_path_in_a_notebook_is_written_too(tmp_path, notebook):
    batches = regression_batches()
    make_model().fit(batches, epochs=2, plot=tmp_path / "run.png", verbose=0)
    assert (tmp_path / "run.png").read_bytes().startswith(PNG_MAGIC)
    assert notebook.events[0] == "display"


def test_a_fit_that_finishes_no_epoch_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def broken_loss(preds, labels):
        raise RuntimeError("boom")

    model = KerasModel(nn.Linear(3, 1), broken_loss, device="cpu")
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(regression_batches(), epochs=2, plot=True, verbose=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("plot", "error", "message"),
    [
        ("curves.txt", ValueError, "path='curves.txt' does not end in an image format matplotlib writes; use one of"),
        ("/dev/null/curves.png", ValueError, "path='/dev/null/curves.png': '/dev/null' is a file, not a directory"),
        ("curves", ValueError, "or a directory (one that exists, or a path ending in '/')"),
        (1, TypeError, "plot=1 is not valid; use True, False or an image file path such as 'history.png'"),
    ],
)
def test_a_bad_plot_argument_fails_before_any_step(tmp_path, monkeypatch, plot, error, message):
    monkeypatch.chdir(tmp_path)
    model = make_model()
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    with pytest.raises(error, match=re.escape(message)):
        model.fit(regression_batches(), epochs=2, plot=plot, verbose=0)
    assert all(torch.equal(before[k], v) for k, v in model.net.state_dict().items())


def test_unknown_metrics_fail_when_the_fit_begins(tmp_path):
    model = make_model()
    before = model.net.weight.detach().clone()
    with pytest.raises(ValueError, match=re.escape("'acc' not in the history; available: loss, lr, time")):
        model.fit(regression_batches(), epochs=2, callbacks=[LivePlot(tmp_path, metrics=["acc"])], verbose=0)
    assert torch.equal(model.net.weight, before)


def test_live_must_be_a_bool_or_none():
    with pytest.raises(TypeError, match=re.escape("live='yes' is not valid; use True, False or None")):
        LivePlot(live="yes")


def test_missing_matplotlib_fails_at_construction_saying_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(
        ImportError, match=re.escape('pip install matplotlib (or, in a clone of kerasish: pip install -e ".[plot]")')
    ):
        make_model().fit(regression_batches(), epochs=1, plot=True, verbose=0)


def test_one_instance_serves_several_fits(tmp_path):
    plot = LivePlot(tmp_path, live=False, verbose=0)
    batches = regression_batches()
    make_model().fit(batches, epochs=1, callbacks=[plot], verbose=0)
    first = plot.written
    make_model().fit(batches, epochs=2, callbacks=[plot], verbose=0)
    assert (first.name, plot.written.name) == ("history.png", "history-2.png")
