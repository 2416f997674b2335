"""Keep the best epoch's weights and put them back in the net when the fit ends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from kerasish.callbacks.base import Callback, Logs
from kerasish.monitor import BestSoFar, Monitor, monitor_argument
from kerasish.progress import say

if TYPE_CHECKING:
    from kerasish.model import KerasModel


class BestWeights(Callback):
    """Copies the net's weights whenever ``monitor`` improves, and loads them back when the fit ends.

    The restore happens however the fit ends: epochs used up, an early stop, Ctrl-C, or an exception from a callback.
    The copy lives in host memory, so it costs no accelerator memory; loading it back copies into the net's own
    parameters, which stay on their device (an optimizer built over them keeps working). ``fit`` builds one of these
    unless ``restore_best_weights=False``. What counts as an improvement is :class:`~kerasish.Monitor`'s rule, shared
    with early stopping and the checkpoint.

    Args:
        monitor: a history column, checked against the fit's columns when the fit begins, or a
            :class:`~kerasish.Monitor` (which carries ``mode``, ``min_delta`` and ``delta_mode``).
        mode: ``"min"`` or ``"max"``; ``None`` (default): from the column, when the fit begins (see
            :func:`kerasish.monitor.direction`: losses are minimised, a metric's ``higher_is_better`` decides).
        min_delta: how much a value must beat the best by to count as an improvement.
        delta_mode: ``"abs"``: ``min_delta`` is an amount; ``"rel"``: a fraction of ``abs(best)``.
        verbose: print a line when restoring.

    Attributes:
        best: the :class:`~kerasish.BestSoFar` of this fit (value and epoch).
        weights: the host copy of the best epoch's ``state_dict``, or ``None`` before any epoch improved.

    Example:
        The weight goes 0.5, 0.875, 1.15625, 1.3671875 over four epochs; the val loss is least at epoch 2. With
        ``fit``'s own restore off, this callback alone puts epoch 2's weight back:

        >>> import torch
        >>> from torch import nn
        >>> from kerasish import BestWeights, KerasModel
        >>> net = nn.Linear(1, 1, bias=False)
        >>> _ = nn.init.zeros_(net.weight)
        >>> x = torch.ones(4, 1)
        >>> train, val = [(x, 2 * x)], [(x, x)]  # training pulls the weight toward 2; the val loss is least at 1
        >>> model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.125), device="cpu")
        >>> keep = BestWeights("val_loss", verbose=1)
        >>> history = model.fit(train, val, epochs=4, restore_best_weights=False, callbacks=[keep], verbose=0)
        restored the weights of epoch 2 (val_loss=0.0156)
        >>> history["val_loss"].tolist(), net.weight.item()
        ([0.25, 0.015625, 0.0244140625, 0.13482666015625], 0.875)
    """

    def __init__(
        self,
        monitor: str | Monitor = "val_loss",
        mode: str | None = None,
        min_delta: float = 0.0,
        *,
        delta_mode: str = "abs",
        verbose: int = 0,
    ) -> None:
        self.monitor = monitor_argument(monitor, mode, min_delta, delta_mode)
        self.best = BestSoFar(self.monitor)
        self.verbose = verbose
        self._reset()

    def on_fit_begin(self, model: KerasModel | None, logs: Logs) -> None:
        self.best.monitor = self.monitor.for_fit(model, type(self).__name__)
        self._reset()

    def _reset(self) -> None:
        self.best.reset()
        self.weights: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, model: KerasModel, logs: Logs) -> None:
        if self.best.update(logs):
            # A new dict each time, never filled in place: a state_dict handed out earlier keeps its epoch's weights.
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.net.state_dict().items()}

    def on_fit_end(self, model: KerasModel, logs: Logs) -> None:
        if self.weights is None:
            return
        model.net.load_state_dict(self.weights)
        if self.verbose:
            say(
                f"restored the weights of epoch {self.best.epoch} ({self.best.monitor.name}={self.best.value:.4f})",
                model,
            )

    def state_dict(self) -> dict[str, Any]:
        """``{"best": BestSoFar state, "weights": the host copy or None}``."""
        return {"best": self.best.state_dict(), "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes back what :meth:`state_dict` returned; the weights stay on the host, whatever device they came on."""
        missing = {"best", "weights"} - set(state)
        if missing:
            raise ValueError(f"BestWeights state lacks {sorted(missing)}; got keys {sorted(state)}")
        self.best.load_state_dict(state["best"])
        weights = state["weights"]
        self.weights = None if weights is None else {k: v.detach().to("cpu") for k, v in weights.items()}
