"""The per-epoch record of a fit, and the names of its columns."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

from kerasish.checks import user_stacklevel
from kerasish.monitor import Monitor

if TYPE_CHECKING:
    import pandas as pd


def history_columns(metric_names: Iterable[str], *, has_val: bool) -> list[str]:
    """The columns a fit's history will have, in order, known before the first step."""
    metric_names = list(metric_names)
    columns = ["epoch", "train_loss", *(f"train_{m}" for m in metric_names)]
    if has_val:
        columns += ["val_loss", *(f"val_{m}" for m in metric_names)]
    return [*columns, "lr", "time"]


def split_stage(column: object) -> tuple[str, str] | None:
    """``"val_acc"`` -> ``("val", "acc")``: a ``train_<name>`` / ``val_<name>`` column's stage and name; else ``None``.

    Example:
        >>> split_stage("train_loss"), split_stage("lr"), split_stage("val_")
        (('train', 'loss'), None, None)
    """
    if isinstance(column, str):
        for stage in ("train", "val"):
            prefix = f"{stage}_"
            if column.startswith(prefix) and len(column) > len(prefix):
                return stage, column[len(prefix) :]
    return None


def warn_non_finite(logs: dict) -> bool:
    """Warns when an epoch's loss is NaN or infinite (returns whether it did), so a fit never trains on silently.

    One non-finite batch loss makes the epoch's mean non-finite, and the weights usually follow; the fit goes on
    (the best finite epoch's weights still come back), and ``fit`` warns once.
    """
    bad = [
        f"{name}={value}"
        for name, value in logs.items()
        if name.endswith("_loss") and isinstance(value, float) and not math.isfinite(value)
    ]
    if bad:
        warnings.warn(
            f"epoch {logs.get('epoch')}: {', '.join(bad)}; a batch's loss was not finite, so the weights are probably "
            "not finite from here on. TerminateOnNaN() ends a fit at the first such batch (the best earlier epoch's "
            "weights come back)",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )
    return bool(bad)


class History:
    """One row per finished epoch; :attr:`frame` is the pandas view of the rows so far.

    The frame is built when it is read, not at every epoch: building a DataFrame costs about 0.2 ms, which a fit
    would otherwise pay each epoch whether anyone looks or not. Reading it twice without an epoch in between gives
    the same object.

    The frame remembers the fit's :class:`~kerasish.Monitor` in ``frame.attrs["monitor"]`` (a dict of its fields),
    so :func:`~kerasish.plot_history` marks the epoch that early stopping and best-weight restore chose, and in
    ``frame.attrs["directions"]`` which way each column improves (``"min"``/``"max"``, where known), so any other
    column can be marked by the rule the fit would have used.
    """

    def __init__(
        self, columns: list[str], monitor: Monitor | None = None, directions: dict[str, str] | None = None
    ) -> None:
        self.columns = list(columns)
        self.monitor = monitor
        self.directions = dict(directions or {})
        self.rows: list[dict] = []
        self._known = set(self.columns)
        self._extra: dict[str, None] = {}  # columns beyond the known ones, in the order they first appeared
        self._frame: pd.DataFrame | None = None

    def append(self, logs: dict) -> None:
        """Records an epoch's logs; columns beyond the known ones (added by a custom runner) are kept after them."""
        row = dict(logs)
        self.rows.append(row)
        self._extra.update((key, None) for key in row if key not in self._known)
        self._frame = None

    @property
    def all_columns(self) -> list[str]:
        """The known columns, then any a custom runner added, in the order they first appeared."""
        return [*self.columns, *self._extra]

    @property
    def frame(self) -> pd.DataFrame:
        """The rows so far as a DataFrame with the known columns first; empty (with the columns) before any."""
        if self._frame is None:
            import pandas as pd  # here, not at import: pandas costs a process about 28 MB

            self._frame = pd.DataFrame(self.rows, columns=self.all_columns)
            if self.monitor is not None:
                self._frame.attrs["monitor"] = dataclasses.asdict(self.monitor)
            if self.directions:
                self._frame.attrs["directions"] = dict(self.directions)
        return self._frame
