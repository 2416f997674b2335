"""The epoch line, the progress bar's throttled read of the running loss, and where bars are drawn at all."""

from __future__ import annotations

import io
import itertools
import math
import sys
import time
import types

import pytest
import torch
import tqdm.auto
from torch import nn

from kerasish import KerasModel, progress
from kerasish.progress import REFRESH_SECONDS, PassProgress, bars_wanted, format_logs


class FakeTerminal(io.StringIO):
    """A stderr that says it is a terminal and keeps what is written to it."""

    def isatty(self) -> bool:
        return True


def on_a_terminal(monkeypatch) -> FakeTerminal:
    """stderr replaced by a :class:`FakeTerminal`, so bars are wanted.

    Called in the test's body: pytest puts its own capturing stderr back when the test's call begins.
    """
    stream = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_format_logs_shows_every_number_but_the_epoch_and_the_time_last():
    logs = {"epoch": 3, "train_loss": 0.123456, "val_acc": 0.96, "lr": 1e-4, "extra": math.nan, "time": 0.0421}
    assert format_logs(logs) == "train_loss=0.1235  val_acc=0.9600  lr=0.0001  extra=nan  (42 ms)"
    assert format_logs({"train_loss": 1.0, "time": 12.34}) == "train_loss=1.0000  (12.3 s)"


def test_a_disabled_bar_prints_nothing_and_never_reads_the_loss(capsys):
    reads = []
    bar = PassProgress(enabled=False, description="train", total=3, read_loss=lambda: reads.append(1) or 0.0)
    for _ in range(3):
        bar.step()
    bar.close()
    assert reads == []
    assert capsys.readouterr() == ("", "")


def test_the_bar_reads_the_loss_at_most_once_per_refresh_interval(monkeypatch):
    on_a_terminal(monkeypatch)
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    reads = []
    bar = PassProgress(enabled=True, description="train", total=None, read_loss=lambda: reads.append(clock[0]) or 0.5)
    for _ in range(48):  # 48 steps, 1/16 s apart (exact in binary): 3 s in all
        clock[0] += 1 / 16
        bar.step()
    bar.close()
    assert len(reads) == 3 / REFRESH_SECONDS
    assert all(later - earlier >= REFRESH_SECONDS - 1e-9 for earlier, later in itertools.pairwise(reads))


def test_bars_come_from_tqdm_auto_so_they_render_as_widgets_in_notebooks(monkeypatch):
    on_a_terminal(monkeypatch)
    bar = PassProgress(enabled=True, description="train", total=3, read_loss=None)
    try:
        assert isinstance(bar.bar, tqdm.auto.tqdm)
    finally:
        bar.close()


def run_pass(steps: int, pause: float = 0.0) -> None:
    bar = PassProgress(enabled=True, description="epoch 1/1 train", total=steps, read_loss=None)
    for _ in range(steps):
        time.sleep(pause)
        bar.step()
    bar.close()


def test_a_pass_shorter_than_the_delay_draws_no_bar(monkeypatch):
    terminal = on_a_terminal(monkeypatch)
    run_pass(3)
    assert terminal.getvalue() == ""


def test_a_pass_longer_than_the_delay_draws_its_bar_and_erases_it(monkeypatch):
    terminal = on_a_terminal(monkeypatch)
    monkeypatch.setattr(progress, "BAR_DELAY_SECONDS", 0.05)
    run_pass(2, pause=0.12)  # tqdm redraws at most every 0.1 s
    err = terminal.getvalue()
    assert "epoch 1/1 train:  50%" in err or "epoch 1/1 train: 100%" in err
    assert err.endswith("\r")  # leave=False: the line is cleared, the cursor back at its start


def fit_with_verbose_1() -> None:
    x = torch.ones(4, 1)
    model = KerasModel(nn.Linear(1, 1), nn.MSELoss(), optimizer=None, device="cpu")
    model.fit([(x, x)], [(x, x)], epochs=2, verbose=1)


def test_into_a_pipe_or_a_file_verbose_1_prints_the_epoch_lines_and_no_bar_frames(capsys, monkeypatch):
    monkeypatch.setattr(progress, "BAR_DELAY_SECONDS", 0.0)  # a terminal would get frames even from these passes
    assert not sys.stderr.isatty()  # capsys's stream, as a pipe or a file would be
    fit_with_verbose_1()
    out, err = capsys.readouterr()
    assert [line.split()[:2] for line in out.splitlines()[:2]] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert err == ""


def test_in_a_terminal_verbose_1_draws_the_bars(capsys, monkeypatch):
    terminal = on_a_terminal(monkeypatch)
    monkeypatch.setattr(progress, "BAR_DELAY_SECONDS", 0.0)
    fit_with_verbose_1()
    assert "epoch 1/2 train" in terminal.getvalue()
    assert "epoch 2/2 val" in terminal.getvalue()
    assert "\r" in terminal.getvalue()
    assert capsys.readouterr().out.startswith("epoch 1/2  train_loss=")


def fake_ipython(config: dict | None) -> types.ModuleType:
    """An ``IPython`` module whose ``get_ipython()`` is a shell with ``config``, or ``None`` for no shell."""
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: None if config is None else types.SimpleNamespace(config=config)
    return module


@pytest.mark.parametrize(
    ("ipython", "wanted"),
    [
        (fake_ipython({"IPKernelApp": {"connection_file": "kernel-1.json"}}), True),  # a notebook's kernel
        (fake_ipython({}), False),  # the IPython shell in a terminal whose stderr is piped
        (fake_ipython(None), False),  # IPython imported by a script, no shell running
        (None, False),  # IPython not importable
    ],
    ids=["kernel", "terminal-shell", "no-shell", "no-ipython"],
)
def test_a_notebook_kernel_wants_bars_though_its_stderr_is_no_terminal(monkeypatch, ipython, wanted):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    assert bars_wanted() is wanted


@pytest.mark.parametrize("stream", [None, io.StringIO()], ids=["none", "closed"])
def test_no_stderr_or_a_closed_one_wants_no_bars(monkeypatch, stream):
    if stream is not None:
        stream.close()
    monkeypatch.setattr(sys, "stderr", stream)
    assert bars_wanted() is False
