"""End a fit at the first training batch whose loss is NaN or infinite."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kerasish.arguments import check_verbose
from kerasish.callbacks.base import Callback, Logs
from kerasish.progress import say

if TYPE_CHECKING:
    from kerasish.model import KerasModel


class TerminateOnNaN(Callback):
    """Stops training right after the first training batch whose loss is NaN or ±inf.

    The train pass ends after that batch; the val pass and ``on_epoch_end`` still run, so the epoch gets its history
    row (with a NaN or inf ``train_loss``), and then the fit ends. That batch's optimizer step has already run, so
    the net's weights are usually NaN by then: with ``fit``'s best-weight restore (on by default) they are replaced
    by those of the best earlier epoch when the fit ends, since a NaN or inf value never counts as the best.

    Opt-in because it costs speed: checking a batch's loss reads it from the device, a host sync at every training
    step, which on a GPU keeps the host from queueing the next step ahead.

    Args:
        verbose: 1 or 2 print a line when stopping; 0 prints nothing.

    Attributes:
        stopped_at: ``(epoch, batch)`` of the batch that stopped this fit (1-based epoch, 0-based batch), or ``None``
            while no loss was NaN or inf. Reset when a fit begins.

    Example:
        >>> from types import SimpleNamespace
        >>> import torch
        >>> from kerasish.callbacks.terminate_on_nan import TerminateOnNaN
        >>> model = SimpleNamespace(stop_training=False)
        >>> stop = TerminateOnNaN()
        >>> stop.on_fit_begin(model, {})
        >>> for batch, loss in enumerate([0.7, 0.5, float("inf")]):
        ...     stop.on_train_batch_end(model, {"epoch": 3, "batch": batch, "loss": torch.tensor(loss)})
        ...     if model.stop_training:
        ...         break
        >>> model.stop_training, stop.stopped_at
        (True, (3, 2))
    """

    def __init__(self, *, verbose: int = 0) -> None:
        check_verbose(verbose)
        self.verbose = verbose
        self.stopped_at: tuple[int, int] | None = None

    def on_fit_begin(self, model: KerasModel, logs: Logs) -> None:
        self.stopped_at = None

    def on_train_batch_end(self, model: KerasModel, logs: Logs) -> None:
        loss = torch.as_tensor(logs["loss"])
        if bool(torch.isfinite(loss).all()):  # sync point: the reason this callback is opt-in
            return
        self.stopped_at = (logs["epoch"], logs["batch"])
        model.stop_training = True
        if self.verbose:
            epoch, batch = self.stopped_at
            say(f"loss={float(loss)} at epoch {epoch}, batch {batch}: training stops (TerminateOnNaN)")
