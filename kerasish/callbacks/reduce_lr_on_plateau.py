"""Lower the learning rate once the monitored value has stopped improving."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from kerasish.callbacks.base import Callback, Logs
from kerasish.monitor import BestSoFar, Monitor, monitor_argument
from kerasish.progress import say

if TYPE_CHECKING:
    from kerasish.model import KerasModel


class ReduceLROnPlateau(Callback):
    """Multiplies each learning rate of ``model.optimizer`` by ``factor`` after ``patience`` epochs without improvement.

    After a reduction the count starts again from zero, and the next ``cooldown`` epochs are not counted at all. No
    learning rate goes below its ``min_lr``. ``fit`` records each epoch's ``lr`` at the epoch's start, so a reduction
    made at the end of epoch ``e`` shows in the ``lr`` column from epoch ``e + 1``.

    How it differs from passing ``torch.optim.lr_scheduler.ReduceLROnPlateau`` as ``lr_scheduler``: torch's scheduler
    has its own idea of "better" (by default a value must beat the best by a relative ``1e-4``) and reduces on the
    ``patience + 1``-th bad epoch. This callback uses :class:`~kerasish.Monitor`'s rule, the one early stopping, the
    best-weight restore and the checkpoint use, and reduces on the ``patience``-th epoch without improvement, counted
    as :class:`~kerasish.EarlyStopping` counts. So "has not improved for N epochs" means the same thing to all of them.
    Do not combine it with an ``lr_scheduler`` that also sets the learning rate each epoch: both would act.

    Args:
        monitor: a history column, checked against the fit's columns when the fit begins, or a
            :class:`~kerasish.Monitor` (which carries ``mode``, ``min_delta`` and ``delta_mode``).
        mode: ``"min"`` or ``"max"``; ``None`` (default): from the column, when the fit begins (see
            :func:`kerasish.monitor.direction`: losses are minimised, a metric's ``higher_is_better`` decides).
        min_delta: how much a value must beat the best by to count as an improvement.
        delta_mode: ``"abs"``: ``min_delta`` is an amount; ``"rel"``: a fraction of ``abs(best)``.
        factor: what each learning rate is multiplied by, in (0, 1).
        patience: epochs without improvement before a reduction, >= 1.
        cooldown: epochs after a reduction that are not counted, >= 0.
        min_lr: the floor of every learning rate, or a list with one floor per param group of the optimizer.
        verbose: print a line at each reduction.

    Attributes:
        best: the :class:`~kerasish.BestSoFar` of this fit.
        wait: counted epochs since the last improvement or reduction.
        cooldown_left: epochs still to skip after the last reduction.

    Example:
        With ``lr=1.0`` each step overshoots: the weight bounces between 0 and 4 around the best value 2, and the
        loss stays at 4. After two epochs without improvement the learning rate is halved at the end of epoch 3;
        epoch 4's step then lands on 2:

        >>> import torch
        >>> from torch import nn
        >>> from kerasish import KerasModel, ReduceLROnPlateau
        >>> net = nn.Linear(1, 1, bias=False)
        >>> _ = nn.init.zeros_(net.weight)
        >>> x = torch.ones(4, 1)
        >>> model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=1.0), device="cpu")
        >>> plateau = ReduceLROnPlateau("train_loss", factor=0.5, patience=2, verbose=1)
        >>> history = model.fit([(x, 2 * x)], epochs=5, callbacks=[plateau], verbose=0)
        epoch 3: train_loss has not improved for 2 epochs; lr 1 -> 0.5
        >>> history["train_loss"].tolist(), history["lr"].tolist(), net.weight.item()
        ([4.0, 4.0, 4.0, 4.0, 0.0], [1.0, 1.0, 1.0, 0.5, 0.5], 2.0)
    """

    def __init__(
        self,
        monitor: str | Monitor = "val_loss",
        mode: str | None = None,
        min_delta: float = 0.0,
        *,
        delta_mode: str = "abs",
        factor: float = 0.1,
        patience: int = 10,
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0.0,
        verbose: int = 0,
    ) -> None:
        _check_args(factor, patience, cooldown)
        self.monitor = monitor_argument(monitor, mode, min_delta, delta_mode)
        self.best = BestSoFar(self.monitor)
        self.factor = float(factor)
        self.patience = patience
        self.cooldown = cooldown
        self.min_lr = _check_min_lr(min_lr)
        self.verbose = verbose
        self._reset()

    def on_fit_begin(self, model: KerasModel | None, logs: Logs) -> None:
        self.best.monitor = self.monitor.for_fit(model, type(self).__name__)
        if model is not None and getattr(model, "optimizer", None) is not None:
            self._floors(model.optimizer)
        self._reset()

    def _reset(self) -> None:
        self.best.reset()
        self.wait = 0
        self.cooldown_left = 0

    def on_epoch_end(self, model: KerasModel, logs: Logs) -> None:
        improved = self.best.update(logs)
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            return
        if improved:
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self._reduce(model, logs["epoch"])
            self.wait = 0
            self.cooldown_left = self.cooldown

    def state_dict(self) -> dict[str, Any]:
        """``best``, ``wait`` and ``cooldown_left``; the learning rates themselves live in the optimizer's state."""
        return {"best": self.best.state_dict(), "wait": self.wait, "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes back what :meth:`state_dict` returned."""
        missing = {"best", "wait", "cooldown_left"} - set(state)
        if missing:
            raise ValueError(f"ReduceLROnPlateau state lacks {sorted(missing)}; got keys {sorted(state)}")
        self.best.load_state_dict(state["best"])
        self.wait, self.cooldown_left = state["wait"], state["cooldown_left"]

    def _reduce(self, model: KerasModel, epoch: int) -> None:
        optimizer = model.optimizer
        changes = []
        for group, floor in zip(optimizer.param_groups, self._floors(optimizer), strict=True):
            old = float(group["lr"])
            new = max(old * self.factor, floor)
            if new >= old:
                continue
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(new)  # a tensor lr (capturable optimizers) is updated in place, keeping its device
            else:
                group["lr"] = new
            changes.append(f"{old:.4g} -> {new:.4g}")
        if self.verbose and changes:
            say(
                f"epoch {epoch}: {self.best.monitor.name} has not improved for {self.wait} epochs; "
                f"lr {', '.join(changes)}",
                model,
            )

    def _floors(self, optimizer: torch.optim.Optimizer) -> list[float]:
        groups = len(optimizer.param_groups)
        if isinstance(self.min_lr, float):
            return [self.min_lr] * groups
        if len(self.min_lr) != groups:
            raise ValueError(
                f"min_lr={self.min_lr!r} has {len(self.min_lr)} values, but the optimizer has {groups} param groups; "
                "give one per group, or a single number"
            )
        return self.min_lr


def _check_args(factor: Any, patience: Any, cooldown: Any) -> None:
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 0 < factor < 1:
        raise ValueError(f"factor={factor!r} is not valid; use a number between 0 and 1 (exclusive), e.g. 0.1")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"patience={patience!r} is not valid; use an int >= 1")
    if isinstance(cooldown, bool) or not isinstance(cooldown, int) or cooldown < 0:
        raise ValueError(f"cooldown={cooldown!r} is not valid; use an int >= 0 (0: no cooldown)")


def _check_min_lr(min_lr: Any) -> float | list[float]:
    """``min_lr`` as a float or a list of floats, each finite and >= 0."""
    values = min_lr if isinstance(min_lr, Sequence) and not isinstance(min_lr, str) else [min_lr]
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"min_lr={min_lr!r} is not valid; use a number >= 0, or a list of them with one per param group"
            )
    if values is min_lr:
        return [float(value) for value in values]
    return float(min_lr)
