"""Keep the best epoch's weights and put them back in the net when the fit ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kerasish.callbacks.base import Callback, Logs
from kerasish.monitor import BestSoFar, Monitor
from kerasish.progress import say

if TYPE_CHECKING:
    from kerasish.model import KerasModel


class BestWeights(Callback):
    """Copies the net's weights whenever ``monitor`` improves, and loads them back when the fit ends.

    The restore happens however the fit ends: epochs used up, an early stop, Ctrl-C, or an exception from a callback.
    The copy lives in host memory, so it costs no accelerator memory; loading it back copies into the net's own
    parameters, which stay on their device. ``fit`` always builds one of these.

    Args:
        monitor: a history column.
        mode: ``"min"`` or ``"max"``.
        min_delta: how much a value must beat the best by to count as an improvement.
        verbose: print a line when restoring.

    Example:
        >>> from kerasish import BestWeights
        >>> keep = BestWeights("val_acc", mode="max")
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "min", min_delta: float = 0.0, verbose: int = 0) -> None:
        self.best = BestSoFar(Monitor(monitor, mode, min_delta))
        self.verbose = verbose
        self.on_fit_begin(None, {})

    def on_fit_begin(self, model: KerasModel | None, logs: Logs) -> None:
        self.best.reset()
        self.weights: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, model: KerasModel, logs: Logs) -> None:
        if self.best.update(logs):
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.net.state_dict().items()}

    def on_fit_end(self, model: KerasModel, logs: Logs) -> None:
        if self.weights is None:
            return
        model.net.load_state_dict(self.weights)
        if self.verbose:
            say(f"restored the weights of epoch {self.best.epoch} ({self.best.monitor.name}={self.best.value:.4f})")
