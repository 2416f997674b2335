"""Write the best weights to disk as they improve."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from kerasish.callbacks.base import Callback, Logs
from kerasish.checkpoint import atomic_save, check_writable
from kerasish.monitor import BestSoFar, Monitor

if TYPE_CHECKING:
    from kerasish.model import KerasModel


class ModelCheckpoint(Callback):
    """Saves the net's ``state_dict`` to ``path`` each time ``monitor`` improves, atomically.

    The file is written to a temporary name beside ``path`` and renamed into place, so an interrupted write never
    leaves a broken checkpoint. Read it back with :meth:`KerasModel.load_ckpt`. ``fit(ckpt_path=...)`` builds one.

    Args:
        path: the file to write; its directory must exist.
        monitor: a history column.
        mode: ``"min"`` or ``"max"``.
        min_delta: how much a value must beat the best by to count as an improvement.

    Example:
        >>> from kerasish import ModelCheckpoint
        >>> ckpt = ModelCheckpoint("best.pt", monitor="val_acc", mode="max")
    """

    def __init__(
        self, path: str | os.PathLike, monitor: str = "val_loss", mode: str = "min", min_delta: float = 0.0
    ) -> None:
        self.path = check_writable(path, "path")
        self.best = BestSoFar(Monitor(monitor, mode, min_delta))
        self.on_fit_begin(None, {})

    def on_fit_begin(self, model: KerasModel | None, logs: Logs) -> None:
        self.best.reset()

    def on_epoch_end(self, model: KerasModel, logs: Logs) -> None:
        if self.best.update(logs):
            atomic_save(model.net.state_dict(), self.path)
