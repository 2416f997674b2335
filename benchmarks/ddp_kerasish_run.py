"""The kerasish side of the two-process benchmark: the same job as :class:`ddp_hand_loop.HandDDPLoop`, as a user
writes it: the plain loaders of :func:`workloads.build` and ``strategy="auto"`` (the default), run under ``torchrun``.

kerasish sets up the process group, wraps the net and shards the loaders itself, so the fit is the one-process
benchmark's own :func:`kerasish_run.fit_kerasish`, with a clock that also stamps CPU time. Imported only by kerasish
runs.
"""

from __future__ import annotations

import time

# kerasish_run puts the checkout next to this folder first on sys.path: the benchmark measures the code it ships with.
from kerasish_run import EpochClock, fit_kerasish
from workloads import Parts, RunResult

from kerasish import KerasModel


class EpochClocks(EpochClock):
    """:class:`~kerasish_run.EpochClock` that also stamps the main thread's CPU clock, as the hand loop does: when the
    fit begins and at each epoch's end. Only the intervals after epoch 1 are measured, so the first stamp's exact
    place (here after the loaders are sharded, in the hand loop before) does not count."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu_stamps: list[float] = []

    def on_fit_begin(self, model: KerasModel, logs: dict) -> None:
        super().on_fit_begin(model, logs)
        self.cpu_stamps = [time.thread_time()]

    def on_epoch_end(self, model: KerasModel, logs: dict) -> None:
        super().on_epoch_end(model, logs)
        self.cpu_stamps.append(time.thread_time())


def fit_kerasish_ddp(parts: Parts, *, epochs: int, patience: int) -> tuple[RunResult, list[float]]:
    """Fits with early stopping and best-weight restore on ``val_acc``, timed like the hand loop; returns the result
    and the CPU stamps (the fit's start, then each epoch's end)."""
    clock = EpochClocks()
    result = fit_kerasish(parts, epochs=epochs, patience=patience, verbose=0, clock=clock)
    return result, clock.cpu_stamps
