"""Write each epoch's history row to a CSV file as soon as the epoch ends."""

from __future__ import annotations

import csv
import os
from typing import IO, TYPE_CHECKING, Any

from kerasish.callbacks.base import Callback, Logs
from kerasish.checkpoint import check_writable
from kerasish.distributed import is_main_process
from kerasish.monitor import fit_columns

if TYPE_CHECKING:
    from kerasish.model import KerasModel


class CSVLogger(Callback):
    """Writes a header row, then one row per finished epoch, to a CSV file.

    The columns are the fit's history columns in order (``epoch``, ``train_loss``, ``train_<metric>``, ``val_loss``,
    ``val_<metric>``, ``lr``, ``time``), fixed when the fit begins. Each row is flushed as soon as it is written, so
    ``tail -f`` shows every finished epoch and a crash loses none of them. Floats are written in full (``repr``
    precision, so reading the file back gives the history's exact values); NaN is written as ``nan``.

    The file is opened when the first epoch ends (so a fit that fails before that leaves an existing file as it
    was) and closed when the fit ends, however it ends. Data-parallel, rank 0 alone reads and writes it.

    Args:
        path: the CSV file. Its directory is created when the first row is written, if it does not exist; here
            it is checked that it could be (the nearest existing directory must be writable).
        append: ``False`` (default) starts a fresh file at each fit's beginning, **replacing any file already at
            ``path``**. ``True`` adds this fit's rows after those already in the file, as a resumed run wants; the
            header is written only when the file is new or empty, and a file whose header differs from this fit's
            columns is an error when the fit begins, before any step.
        separator: the one character between fields.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> from torch import nn
        >>> from kerasish import CSVLogger, KerasModel
        >>> net = nn.Linear(1, 1, bias=False)
        >>> _ = nn.init.zeros_(net.weight)
        >>> x = torch.ones(4, 1)
        >>> model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.125), device="cpu")
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = Path(tmp) / "history.csv"
        ...     _ = model.fit([(x, 2 * x)], [(x, x)], epochs=3, callbacks=[CSVLogger(path)], verbose=0)
        ...     lines = path.read_text().splitlines()
        >>> for line in lines:
        ...     print(line.rsplit(",", 1)[0])  # all but the last column, the epoch's wall time
        epoch,train_loss,val_loss,lr
        1,4.0,0.25,0.125
        2,2.25,0.015625,0.125
        3,1.265625,0.0244140625,0.125
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False, separator: str = ",") -> None:
        self.path = check_writable(path, "path")
        if not isinstance(append, bool):
            raise TypeError(f"append={append!r} is not valid; use True or False")
        if not isinstance(separator, str) or len(separator) != 1 or separator in '\r\n"':
            raise ValueError(
                f"separator={separator!r} is not valid; use one character other than a quote or a line break, "
                "such as ',', ';' or '\\t'"
            )
        self.append = append
        self.separator = separator
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._columns: list[str] = []
        self._resume = False
        self._writes = True

    def on_fit_begin(self, model: KerasModel, logs: Logs) -> None:
        self._close()  # a fit that failed before its on_fit_end could have left one open
        self._columns = fit_columns(model) or []
        self._writes = is_main_process(model)
        self._resume = self._writes and self.append and self.path.exists() and self.path.stat().st_size > 0
        if self._resume:
            self._check_header()

    def on_epoch_end(self, model: KerasModel, logs: Logs) -> None:
        if not self._writes:
            return
        if self._writer is None:
            # Opened at the first row, not at fit begin: a fit that fails before its first epoch (another
            # callback's bad argument, say) leaves an existing file as it was.
            self._open()
        # Keys a custom runner adds beyond the fit's columns are left out: a CSV header cannot grow mid-file.
        self._write([_cell(logs.get(column)) for column in self._columns])

    def on_fit_end(self, model: KerasModel, logs: Logs) -> None:
        self._close()

    def _check_header(self) -> None:
        with open(self.path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f, delimiter=self.separator), [])
        if header != self._columns:
            raise ValueError(
                f"CSVLogger(path={str(self.path)!r}, append=True): the file's header is {header} but this fit's "
                f"columns are {self._columns}; log to another path, or pass append=False to replace the file"
            )

    def _open(self) -> None:
        if not self._columns:
            raise RuntimeError("CSVLogger writes rows only after on_fit_begin")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a" if self.append else "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.writer(self._file, delimiter=self.separator, lineterminator="\n")
        if not self._resume:
            self._write(self._columns)

    def _write(self, row: list[str]) -> None:
        self._writer.writerow(row)
        self._file.flush()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None


def _cell(value: Any) -> str:
    """A value as written to the file: floats at full precision (``nan``, ``inf``), nothing for a missing value."""
    if value is None:
        return ""
    if isinstance(value, float):  # numpy floats too
        return repr(float(value))
    return str(value)
