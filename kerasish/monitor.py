"""The one definition of "improved" that every comparing callback uses."""

from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("min", "max")


@dataclass(frozen=True)
class Monitor:
    """A history column to watch and what counts as an improvement of it.

    A value improves on the best so far when it beats it by more than ``min_delta`` in the direction of ``mode``; a tie
    is not an improvement, and neither is NaN. The first finite value always improves on "no best yet".

    Example:
        >>> m = Monitor("val_acc", mode="max", min_delta=0.01)
        >>> m.improved(0.90, best=None), m.improved(0.905, best=0.90), m.improved(0.92, best=0.90)
        (True, False, True)
    """

    name: str = "val_loss"
    mode: str = "min"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not valid; use 'min' or 'max'")
        if isinstance(self.min_delta, bool) or not isinstance(self.min_delta, (int, float)) or not self.min_delta >= 0:
            raise ValueError(f"min_delta={self.min_delta!r} is not valid; use a number >= 0")

    def improved(self, value: float, best: float | None) -> bool:
        """Whether ``value`` improves on ``best`` (``None``: nothing seen yet)."""
        if math.isnan(value):
            return False
        if best is None:
            return True
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta

    def value_in(self, logs: dict) -> float:
        """The monitored value in an epoch's logs, with an error naming what is there when it is missing."""
        try:
            return float(logs[self.name])
        except KeyError:
            raise KeyError(f"monitor={self.name!r} is not in this epoch's logs; available: {', '.join(logs)}") from None


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
