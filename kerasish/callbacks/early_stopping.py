"""Stop a fit once the monitored value has stopped improving."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kerasish.callbacks.base import Callback, Logs
from kerasish.monitor import BestSoFar, Monitor
from kerasish.progress import say

if TYPE_CHECKING:
    from kerasish.model import KerasModel


class EarlyStopping(Callback):
    """Ends the fit after ``patience`` consecutive epochs without improvement of ``monitor``.

    What counts as an improvement is :class:`~kerasish.Monitor`'s rule, the same one the best-weight restore and the
    checkpoint use, so all three agree on the best epoch. ``fit(patience=...)`` builds one of these.

    Args:
        monitor: a history column, e.g. ``"val_loss"`` or ``"val_acc"``.
        mode: ``"min"`` or ``"max"``.
        min_delta: how much a value must beat the best by to count as an improvement.
        patience: how many epochs without improvement to allow; must be >= 1.
        verbose: print a line when stopping.

    Example:
        >>> from kerasish import EarlyStopping
        >>> stop = EarlyStopping("val_acc", mode="max", patience=3)
    """

    def __init__(
        self, monitor: str = "val_loss", mode: str = "min", min_delta: float = 0.0, patience: int = 5, verbose: int = 0
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(
                f"patience={patience!r} is not valid; use an int >= 1 (or patience=None in fit to not stop)"
            )
        self.best = BestSoFar(Monitor(monitor, mode, min_delta))
        self.patience = patience
        self.verbose = verbose
        self.on_fit_begin(None, {})

    def on_fit_begin(self, model: KerasModel | None, logs: Logs) -> None:
        self.best.reset()
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, model: KerasModel, logs: Logs) -> None:
        if self.best.update(logs):
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = logs["epoch"]
            model.stop_training = True
            if self.verbose:
                best = "none" if self.best.value is None else f"{self.best.value:.4f} at epoch {self.best.epoch}"
                name = self.best.monitor.name
                say(
                    f"early stop at epoch {self.stopped_epoch}: {name} has not improved "
                    f"for {self.wait} epochs (best {best})"
                )
