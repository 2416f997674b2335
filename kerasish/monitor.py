"""The one definition of "improved" that every comparing callback uses, and of which direction is better.

A monitor's direction is never guessed from a column's name alone. With ``mode=None`` it comes from what produced
the column (:func:`direction`): the losses (``train_loss``, ``val_loss``, any ``*_loss`` column) are minimised; a
metric's own ``higher_is_better`` (every torchmetrics metric carries it; set it on a function or object of your own)
decides for its columns; anything else is an error that asks for ``mode="min"`` or ``"max"``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kerasish.metrics import higher_is_better

MODES = ("min", "max")
DELTA_MODES = ("abs", "rel")
STAGE_PREFIXES = ("train_", "val_")


def direction(column: str, metrics: Mapping[str, Any] | None = None) -> str | None:
    """``"min"`` or ``"max"``: which way a history column improves, or ``None`` when nothing says.

    Args:
        column: a history column such as ``"val_acc"``.
        metrics: the model's ``metrics_dict``, whose entries may carry ``higher_is_better``.

    Example:
        >>> from torchmetrics.classification import MulticlassAccuracy
        >>> metrics = {"acc": MulticlassAccuracy(num_classes=3), "f1": lambda preds, labels: preds.mean()}
        >>> direction("val_loss"), direction("train_acc", metrics), direction("val_f1", metrics), direction("lr")
        ('min', 'max', None, None)
    """
    metrics = metrics or {}
    for prefix in STAGE_PREFIXES:
        name = column[len(prefix) :] if column.startswith(prefix) else None
        if name in metrics:
            better = higher_is_better(metrics[name])
            if better is not None:
                return "max" if better else "min"
    return "min" if column.endswith("_loss") else None


def directions(columns: Iterable[str], metrics: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Each column's :func:`direction`, for the columns that have one."""
    known = {column: direction(column, metrics) for column in columns}
    return {column: mode for column, mode in known.items() if mode is not None}


def _unknown_direction(column: str, metrics: Mapping[str, Any]) -> str:
    """Why ``direction`` found none, for the error that asks for a mode."""
    for prefix in STAGE_PREFIXES:
        name = column[len(prefix) :] if column.startswith(prefix) else None
        if name in metrics:
            return f"metric {name!r} ({type(metrics[name]).__name__}) has no higher_is_better"
    return f"{column!r} is neither a loss nor a metric with higher_is_better"


@dataclass(frozen=True)
class Monitor:
    """A history column to watch and what counts as an improvement of it.

    A value improves on the best so far when it beats it by more than a margin in the direction of ``mode``. The
    margin is ``min_delta`` itself (``delta_mode="abs"``) or ``min_delta * abs(best)`` (``delta_mode="rel"``: a
    fraction of the best's size, which stays right for negative values such as log-likelihoods). A tie is not an
    improvement, and neither is NaN or an infinity; the first finite value always improves on "no best yet".

    ``mode=None`` (every default) means "from the column": :meth:`resolved` (called when a fit begins) takes it
    from :func:`direction`, and raises when nothing says which way the column improves.

    Example:
        >>> m = Monitor("val_acc", mode="max", min_delta=0.01)
        >>> m.improved(0.90, best=None), m.improved(0.905, best=0.90), m.improved(0.92, best=0.90)
        (True, False, True)
        >>> rel = Monitor("val_nll", mode="min", min_delta=0.1, delta_mode="rel")
        >>> rel.improved(-2.1, best=-2.0), rel.improved(-2.3, best=-2.0)
        (False, True)
    """

    name: str = "val_loss"
    mode: str | None = None
    min_delta: float = 0.0
    delta_mode: str = "abs"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"monitor={self.name!r} is not valid; use a history column such as 'val_loss'")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not valid; use 'min', 'max', or None (from the metric)")
        if isinstance(self.min_delta, bool) or not isinstance(self.min_delta, (int, float)) or not self.min_delta >= 0:
            raise ValueError(f"min_delta={self.min_delta!r} is not valid; use a number >= 0")
        if self.delta_mode not in DELTA_MODES:
            raise ValueError(f"delta_mode={self.delta_mode!r} is not valid; use 'abs' or 'rel'")

    def resolved(self, metrics: Mapping[str, Any] | None = None, owner: str = "fit") -> Monitor:
        """This monitor with its ``mode`` known: as given, else its column's :func:`direction`.

        Raises:
            ValueError: ``mode`` is ``None`` and nothing says which way the column improves; the message names
                ``owner`` (``fit`` or the callback) and asks for ``mode="min"`` or ``"max"``.
        """
        if self.mode is not None:
            return self
        mode = direction(self.name, metrics)
        if mode is None:
            raise ValueError(
                f"{owner}: monitor={self.name!r} with mode=None, but {_unknown_direction(self.name, metrics or {})}, "
                "so kerasish cannot tell whether higher or lower is better; pass mode='max' or mode='min'"
            )
        return dataclasses.replace(self, mode=mode)

    def for_fit(self, model: Any, owner: str) -> Monitor:
        """Checked against the fit's columns and resolved against its metrics; for callbacks' ``on_fit_begin``.

        ``model`` may lack a history or metrics (a stand-in in a test): what is missing is not checked.
        """
        columns = fit_columns(model)
        if columns is not None:
            self.check(columns, owner)
        return self.resolved(getattr(model, "metrics_dict", None), owner)

    def improved(self, value: float, best: float | None) -> bool:
        """Whether ``value`` improves on ``best`` (``None``: nothing seen yet)."""
        mode = self.mode or self.resolved().mode  # mode=None outside a fit: the losses' direction, else an error
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        margin = self.min_delta * abs(best) if self.delta_mode == "rel" else self.min_delta
        if mode == "min":
            return value < best - margin
        return value > best + margin

    def value_in(self, logs: dict) -> float:
        """The monitored value in an epoch's logs, with an error naming what is there when it is missing."""
        try:
            return float(logs[self.name])
        except KeyError:
            raise KeyError(f"monitor={self.name!r} is not in this epoch's logs; available: {', '.join(logs)}") from None

    def check(self, columns: Iterable[str], owner: str) -> None:
        """Raises, naming ``owner`` (the callback), when the fit's history will have no column ``name``.

        Callbacks call it in ``on_fit_begin``, where ``model.history`` already has the fit's columns, so a typo
        fails before the first step rather than at the first epoch's end.
        """
        columns = list(columns)
        if columns and self.name not in columns:
            raise ValueError(
                f"{owner}: monitor={self.name!r} is not a history column of this fit; available: {', '.join(columns)}"
            )


def fit_columns(model: Any) -> list[str] | None:
    """The columns of the fit ``model`` runs: its ``history_columns`` (no DataFrame built, so pandas stays unloaded
    until the history is read), or a stand-in's ``history.columns``; ``None`` when it has neither."""
    columns = getattr(model, "history_columns", None)
    if columns is None:
        history = getattr(model, "history", None)
        columns = None if history is None else history.columns
    return None if columns is None else [str(column) for column in columns]


def monitor_argument(monitor: str | Monitor, mode: str | None, min_delta: float, delta_mode: str) -> Monitor:
    """A callback's ``monitor`` argument as a :class:`Monitor`: a column name with the loose fields, or a Monitor."""
    if not isinstance(monitor, Monitor):
        return Monitor(monitor, mode, min_delta, delta_mode)
    if (mode, min_delta, delta_mode) != (None, 0.0, "abs"):
        raise ValueError(
            f"monitor={monitor!r} already carries mode, min_delta and delta_mode; leave those arguments out"
        )
    return monitor


class BestSoFar:
    """The best value of a :class:`Monitor` seen in a fit, and the epoch that produced it.

    Example:
        >>> best = BestSoFar(Monitor("val_loss"))
        >>> [best.update({"epoch": e, "val_loss": v}) for e, v in enumerate([0.5, 0.4, 0.4], start=1)]
        [True, True, False]
        >>> best.value, best.epoch
        (0.4, 2)
    """

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.reset()

    def reset(self) -> None:
        """Forgets everything seen, for a new fit."""
        self.value: float | None = None
        self.epoch: int | None = None

    def update(self, logs: dict) -> bool:
        """Takes an epoch's logs; returns whether its monitored value is the new best."""
        value = self.monitor.value_in(logs)
        if not self.monitor.improved(value, self.value):
            return False
        self.value, self.epoch = value, logs["epoch"]
        return True

    def state_dict(self) -> dict[str, Any]:
        """``{"value", "epoch"}`` of the best so far."""
        return {"value": self.value, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes back what :meth:`state_dict` returned."""
        self.value, self.epoch = state["value"], state["epoch"]
