"""The epoch line, and the progress bar's throttled read of the running loss."""

from __future__ import annotations

import itertools
import math
import time

import tqdm.auto

from kerasish import progress
from kerasish.progress import REFRESH_SECONDS, PassProgress, format_logs


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


def test_bars_come_from_tqdm_auto_so_they_render_as_widgets_in_notebooks():
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


def test_a_pass_shorter_than_the_delay_draws_no_bar(capsys):
    run_pass(3)
    assert capsys.readouterr() == ("", "")


def test_a_pass_longer_than_the_delay_draws_its_bar_and_erases_it(capsys, monkeypatch):
    monkeypatch.setattr(progress, "BAR_DELAY_SECONDS", 0.05)
    run_pass(2, pause=0.12)  # tqdm redraws at most every 0.1 s
    err = capsys.readouterr().err
    assert "epoch 1/1 train:  50%" in err or "epoch 1/1 train: 100%" in err
    assert err.endswith("\r")  # leave=False: the line is cleared, the cursor back at its start
