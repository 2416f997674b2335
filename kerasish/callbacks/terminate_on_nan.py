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

    Data-parallel, each rank checks its own batches, and the train pass runs to its end (a rank leaving it early
    would leave the others waiting in their next gradient all-reduce); every rank then stops after that epoch.
    ``stopped_at`` is the batch this rank saw.

    Opt-in because it costs speed: checking a batch's loss reads it from the device, a host sync at every training
    step, which on a GPU keeps the host from queueing the next step ahead.

    Args:
        verbose: 1 or 2 print a line when stopping; 0 prints nothing.

    Attributes:
        stopped_at: ``(epoch, batch)`` of the batch that stopped this fit (1-based epoch, 0-based batch), or ``None``
            while no loss was NaN or inf. Reset when a fit begins.

    Example:
        With ``lr=8.0`` every step overshoots and the loss grows 225-fold per batch until it overflows to inf in
        epoch 5, at its first batch. That epoch still gets its row, and ``fit``'s restore brings back the best
        (finite) weights:

        >>> import math
        >>> import torch
        >>> from torch import nn
        >>> from kerasish import KerasModel, TerminateOnNaN
        >>> net = nn.Linear(1, 1, bias=False)
        >>> _ = nn.init.zeros_(net.weight)
        >>> x = torch.ones(4, 1)
        >>> model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=8.0), device="cpu")
        >>> stop = TerminateOnNaN(verbose=1)
        >>> history = model.fit([(x, 2 * x)] * 4, epochs=20, callbacks=[stop], verbose=0)
        loss=inf at epoch 5, batch 0: training stops (TerminateOnNaN)
        >>> stop.stopped_at, len(history), history["train_loss"].tolist()[-1], math.isfinite(net.weight.item())
        ((5, 0), 5, inf, True)
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
            say(f"loss={float(loss)} at epoch {epoch}, batch {batch}: training stops (TerminateOnNaN)", model)
