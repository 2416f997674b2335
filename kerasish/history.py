"""The per-epoch record of a fit, and the names of its columns."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd


def history_columns(metric_names: Iterable[str], *, has_val: bool) -> list[str]:
    """The columns a fit's history will have, in order, known before the first step."""
    metric_names = list(metric_names)
    columns = ["epoch", "train_loss", *(f"train_{m}" for m in metric_names)]
    if has_val:
        columns += ["val_loss", *(f"val_{m}" for m in metric_names)]
    return [*columns, "lr", "time"]


class History:
    """One row per finished epoch; :attr:`frame` is the pandas view of the rows so far."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = columns
        self.rows: list[dict] = []
        self.frame = pd.DataFrame(columns=columns)

    def append(self, logs: dict) -> None:
        """Records an epoch's logs; columns beyond the known ones (added by a custom runner) are kept after them."""
        self.rows.append(dict(logs))
        extra = [key for row in self.rows for key in row if key not in self.columns]
        self.frame = pd.DataFrame(self.rows, columns=self.columns + list(dict.fromkeys(extra)))
