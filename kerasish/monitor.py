"""The one definition of "improved" that every comparing callback uses."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MODES = ("min", "max")
DELTA_MODES = ("abs", "rel")


@dataclass(frozen=True)
class Monitor:
    """A history column to watch and what counts as an improvement of it.

    A value improves on the best so far when it beats it by more than a margin in the direction of ``mode``. The
    margin is ``min_delta`` itself (``delta_mode="abs"``) or ``min_delta * abs(best)`` (``delta_mode="rel"``: a
    fraction of the best's size, which stays right for negative values such as log-likelihoods). A tie is not an
    improvement, and neither is NaN or an infinity; the first finite value always improves on "no best yet".

    Example:
        >>> m = Monitor("val_acc", mode="max", min_delta=0.01)
        >>> m.improved(0.90, best=None), m.improved(0.905, best=0.90), m.improved(0.92, best=0.90)
        (True, False, True)
        >>> rel = Monitor("val_nll", mode="min", min_delta=0.1, delta_mode="rel")
        >>> rel.improved(-2.1, best=-2.0), rel.improved(-2.3, best=-2.0)
        (False, True)
    """

    name: str = "val_loss"
    mode: str = "min"
    min_delta: float = 0.0
    delta_mode: str = "abs"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"monitor={self.name!r} is not valid; use a history column such as 'val_loss'")
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not valid; use 'min' or 'max'")
        if isinstance(self.min_delta, bool) or not isinstance(self.min_delta, (int, float)) or not self.min_delta >= 0:
            raise ValueError(f"min_delta={self.min_delta!r} is not valid; use a number >= 0")
        if self.delta_mode not in DELTA_MODES:
            raise ValueError(f"delta_mode={self.delta_mode!r} is not valid; use 'abs' or 'rel'")

    def improved(self, value: float, best: float | None) -> bool:
        """Whether ``value`` improves on ``best`` (``None``: nothing seen yet)."""
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        margin = self.min_delta * abs(best) if self.delta_mode == "rel" else self.min_delta
        if self.mode == "min":
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
