"""The kerasish side: the same job as :class:`hand_loop.HandLoop`, written the way a user writes it.

Imported only by kerasish runs, so a hand-written run never even imports kerasish.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The checkout next to this folder, installed or not: the benchmark measures the code it ships with.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workloads import Parts, RunResult

from kerasish import Callback, KerasModel


class EpochClock(Callback):
    """Stamps the end of every epoch.

    User callbacks run after the built-in ones, so the stamp comes after the best-weight copy and the early-stopping
    check, like the hand loop's. It overrides no batch hook, so the steps run exactly as without it; its cost is one
    Python call per epoch.
    """

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_fit_begin(self, model: KerasModel, logs: dict) -> None:
        self.ends = []

    def on_epoch_end(self, model: KerasModel, logs: dict) -> None:
        self.ends.append(time.perf_counter())


def fit_kerasish(
    parts: Parts,
    *,
    epochs: int,
    patience: int,
    verbose: int,
    model_class: type[KerasModel] = KerasModel,
    clock: EpochClock | None = None,
    options: Mapping[str, Any] | None = None,
) -> RunResult:
    """Fits with early stopping and best-weight restore on ``val_acc``, as a user would; times it like the hand loop.

    ``model_class`` lets a caller plug in a ``KerasModel`` subclass (``cuda_sync_check.py`` plugs in a step runner
    that checks for host syncs); ``clock`` one that stamps more (the two-process benchmark's CPU clock); ``options``
    more ``KerasModel`` keyword arguments (``precision``, ``accumulate_grad_batches``, ``prefetch``, ...).
    """
    model = model_class(
        parts.net,
        loss_fn=parts.loss_fn,
        metrics_dict={"acc": parts.metric},
        optimizer=parts.optimizer,
        device=parts.device,
        **(options or {}),
    )
    clock = clock or EpochClock()
    fit_start = time.perf_counter()
    frame = model.fit(
        parts.train_loader,
        parts.val_loader,
        epochs=epochs,
        monitor="val_acc",
        mode="max",
        patience=patience,
        verbose=verbose,
        callbacks=[clock],
    )
    fit_end = time.perf_counter()
    columns = ("train_loss", "train_acc", "val_loss", "val_acc", "time")
    history = {column: [float(value) for value in frame[column]] for column in columns}
    return RunResult(history=history, fit_start=fit_start, epoch_ends=clock.ends, fit_end=fit_end)
