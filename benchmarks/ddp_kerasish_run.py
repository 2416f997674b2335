"""The kerasish side of the two-process benchmark: the same job as :class:`ddp_hand_loop.HandDDPLoop`, as a user
writes it: the plain loaders of :func:`workloads.build` and ``strategy="auto"``, run under ``torchrun``.

kerasish sets up the process group, wraps the net and shards the loaders itself. Imported only by kerasish runs.
"""

from __future__ import annotations

import time

# kerasish_run puts the checkout next to this folder first on sys.path: the benchmark measures the code it ships with.
from kerasish_run import EpochClock
from workloads import Parts, RunResult

from kerasish import KerasModel


class EpochClocks(EpochClock):
    """:class:`~kerasish_run.EpochClock` that also stamps the main thread's CPU clock, as the hand loop does."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu_ends: list[float] = []

    def on_fit_begin(self, model: KerasModel, logs: dict) -> None:
        super().on_fit_begin(model, logs)
        self.cpu_ends = []

    def on_epoch_end(self, model: KerasModel, logs: dict) -> None:
        super().on_epoch_end(model, logs)
        self.cpu_ends.append(time.thread_time())


def fit_kerasish_ddp(parts: Parts, *, epochs: int, patience: int) -> tuple[RunResult, list[float]]:
    """Fits with early stopping and best-weight restore on ``val_acc`` under ``strategy="auto"``, timed like the
    hand loop; returns the result and the CPU stamps (the fit's start, then each epoch's end)."""
    model = KerasModel(
        parts.net,
        loss_fn=parts.loss_fn,
        metrics_dict={"acc": parts.metric},
        optimizer=parts.optimizer,
        device=parts.device,
        strategy="auto",
    )
    clock = EpochClocks()
    cpu_start, fit_start = time.thread_time(), time.perf_counter()
    frame = model.fit(
        parts.train_loader,
        parts.val_loader,
        epochs=epochs,
        monitor="val_acc",
        mode="max",
        patience=patience,
        verbose=0,
        callbacks=[clock],
    )
    fit_end = time.perf_counter()
    columns = ("train_loss", "train_acc", "val_loss", "val_acc", "time")
    history = {column: [float(value) for value in frame[column]] for column in columns}
    result = RunResult(history=history, fit_start=fit_start, epoch_ends=clock.ends, fit_end=fit_end)
    return result, [cpu_start, *clock.cpu_ends]
