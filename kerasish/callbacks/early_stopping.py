"""Stop a fit once the monitored value has stopped improving."""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

from kerasish.callbacks.base import Callback, Logs
from kerasish.callbacks.best_weights import BestWeights
from kerasish.checks import flag, integer
from kerasish.monitor import BestSoFar, Monitor, monitor_argument
from kerasish.progress import say

if TYPE_CHECKING:
    from kerasish.model import KerasModel


class EarlyStopping(Callback):
    """Ends the fit after ``patience`` consecutive epochs without improvement of ``monitor``.

    What counts as an improvement is :class:`~kerasish.Monitor`'s rule, the same one the best-weight restore and the
    checkpoint use, so all three agree on the best epoch. ``fit(patience=...)`` builds one of these.

    The best is tracked from epoch 1 whatever ``baseline`` and ``start_from_epoch`` say: they only change which
    epochs count toward ``patience``, never which epoch is the best, so the epoch this callback reports (and restores,
    with ``restore_best_weights=True``) is the one the checkpoint and ``fit``'s own restore pick.

    Args:
        monitor: a history column, e.g. ``"val_loss"`` or ``"val_acc"``; checked against the fit's columns when the
            fit begins.
        mode: ``"min"`` or ``"max"``; ``None`` (default): from the column, when the fit begins (see
            :func:`kerasish.monitor.direction`: losses are minimised, a metric's ``higher_is_better`` decides).
        min_delta: how much a value must beat the best by to count as an improvement.
        delta_mode: ``"abs"``: ``min_delta`` is an amount; ``"rel"``: a fraction of ``abs(best)``.
        patience: how many epochs without improvement to allow; must be >= 1.
        baseline: a value the best must beat (by the same rule, ``min_delta`` included) before any epoch counts as an
            improvement; a fit that never gets there stops after ``patience`` counted epochs. ``None``: no baseline.
        start_from_epoch: epochs up to and including this one never count toward ``patience`` (a warm-up); 0 counts
            every epoch.
        restore_best_weights: also load the best epoch's weights back into the net when the fit ends, through a
            :class:`~kerasish.BestWeights` with the same rule. Useful with ``fit(..., restore_best_weights=False)``.
        verbose: print a line when stopping (and when restoring).

    Attributes:
        best: the :class:`~kerasish.BestSoFar` of this fit.
        wait: counted epochs since the last improvement.
        stopped_epoch: the epoch at which this callback stopped the fit, or ``None``.

    Example:
        The val loss is least at epoch 2, so with ``patience=2`` the fit stops after epoch 4, and ``fit``'s restore
        puts epoch 2's weight (0.875) back. ``fit``'s own ``patience`` is off, so this callback alone decides:

        >>> import torch
        >>> from torch import nn
        >>> from kerasish import EarlyStopping, KerasModel
        >>> net = nn.Linear(1, 1, bias=False)
        >>> _ = nn.init.zeros_(net.weight)
        >>> x = torch.ones(4, 1)
        >>> train, val = [(x, 2 * x)], [(x, x)]  # training pulls the weight toward 2; the val loss is least at 1
        >>> model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.125), device="cpu")
        >>> stop = EarlyStopping("val_loss", patience=2, verbose=1)
        >>> history = model.fit(train, val, epochs=20, patience=None, callbacks=[stop], verbose=0)
        early stop at epoch 4: val_loss has not improved for 2 epochs (best 0.0156 at epoch 2)
        >>> len(history), stop.stopped_epoch, stop.best.epoch, net.weight.item()
        (4, 4, 2, 0.875)
    """

    def __init__(
        self,
        monitor: str | Monitor = "val_loss",
        mode: str | None = None,
        min_delta: float = 0.0,
        *,
        delta_mode: str = "abs",
        patience: int = 5,
        baseline: float | None = None,
        start_from_epoch: int = 0,
        restore_best_weights: bool = False,
        verbose: int = 0,
    ) -> None:
        _check_args(patience, baseline, start_from_epoch, restore_best_weights)
        self.monitor = monitor_argument(monitor, mode, min_delta, delta_mode)
        self.best = BestSoFar(self.monitor)
        self.patience = int(patience)
        self.baseline = None if baseline is None else float(baseline)
        self.start_from_epoch = int(start_from_epoch)
        self.verbose = verbose
        self._restore = BestWeights(self.monitor, verbose=verbose) if restore_best_weights else None
        self._reset()

    @property
    def restore_best_weights(self) -> bool:
        """Whether the best epoch's weights are loaded back when the fit ends."""
        return self._restore is not None

    def on_fit_begin(self, model: KerasModel | None, logs: Logs) -> None:
        self.best.monitor = self.monitor.for_fit(model, type(self).__name__)
        self._reset()
        if self._restore is not None:
            self._restore.on_fit_begin(model, logs)

    def _reset(self) -> None:
        self.best.reset()
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, model: KerasModel, logs: Logs) -> None:
        if self._restore is not None:
            self._restore.on_epoch_end(model, logs)
        improved = self.best.update(logs) and self._beats_baseline()
        if improved:
            self.wait = 0
            return
        if logs["epoch"] <= self.start_from_epoch:
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = logs["epoch"]
            model.stop_training = True
            if self.verbose:
                self._say_stop(model)

    def on_fit_end(self, model: KerasModel, logs: Logs) -> None:
        if self._restore is not None:
            self._restore.on_fit_end(model, logs)

    def state_dict(self) -> dict[str, Any]:
        """``best``, ``wait``, ``stopped_epoch``, and with ``restore_best_weights`` the inner ``best_weights`` state."""
        state = {"best": self.best.state_dict(), "wait": self.wait, "stopped_epoch": self.stopped_epoch}
        if self._restore is not None:
            state["best_weights"] = self._restore.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes back what :meth:`state_dict` returned, from an instance built with the same arguments."""
        expected = {"best", "wait", "stopped_epoch"} | ({"best_weights"} if self._restore is not None else set())
        if set(state) != expected:
            raise ValueError(
                f"EarlyStopping(restore_best_weights={self.restore_best_weights}) state needs the keys "
                f"{sorted(expected)}; got {sorted(state)}"
            )
        self.best.load_state_dict(state["best"])
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        if self._restore is not None:
            self._restore.load_state_dict(state["best_weights"])

    def _beats_baseline(self) -> bool:
        # Bests only get better, so once the best beats the baseline every later best does too: no flag to keep.
        return self.baseline is None or self.best.monitor.improved(self.best.value, self.baseline)

    def _say_stop(self, model: KerasModel) -> None:
        best = "none" if self.best.value is None else f"{self.best.value:.4f} at epoch {self.best.epoch}"
        if self.best.value is not None and not self._beats_baseline():
            best += f"; baseline {self.baseline:.4f} not reached"
        name = self.best.monitor.name
        say(
            f"early stop at epoch {self.stopped_epoch}: {name} has not improved for {self.wait} epochs (best {best})",
            model,
        )


def _check_args(patience: Any, baseline: Any, start_from_epoch: Any, restore_best_weights: Any) -> None:
    integer(patience, "patience", minimum=1, hint="or patience=None in fit to not stop")
    if baseline is not None and (
        isinstance(baseline, bool) or not isinstance(baseline, numbers.Real) or not math.isfinite(baseline)
    ):
        raise ValueError(f"baseline={baseline!r} is not valid; use a finite number, or None for no baseline")
    integer(start_from_epoch, "start_from_epoch", minimum=0, hint="0: count every epoch")
    flag(restore_best_weights, "restore_best_weights")
