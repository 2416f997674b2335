"""Write the net's weights to disk as they improve, or every few epochs, keeping as many files as asked."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kerasish.callbacks.base import Callback, Logs
from kerasish.checkpoint import atomic_save, check_writable
from kerasish.distributed import is_main_process
from kerasish.monitor import BestSoFar, Monitor, fit_columns, monitor_argument

if TYPE_CHECKING:
    from kerasish.model import KerasModel


class ModelCheckpoint(Callback):
    """Saves the net's ``state_dict`` when ``monitor`` improves, or every ``every_n_epochs`` epochs, atomically.

    Each file is written to a temporary name beside it and renamed into place, so an interrupted write never leaves
    a broken checkpoint. Read one back with :meth:`KerasModel.load_ckpt`. ``fit(ckpt_path=...)`` builds one of these.
    Data-parallel, rank 0 alone writes and deletes files; every rank keeps the same record of them (the attributes
    below), so all agree on :attr:`best_path`.
    What counts as an improvement is :class:`~kerasish.Monitor`'s rule, shared with early stopping and the restore.

    ``path`` may be a template filled in with the epoch's history row by ``str.format``, e.g.
    ``"ckpt/epoch{epoch:03d}-val_loss{val_loss:.4f}.pt"``: ``epoch`` is an int, the other columns are floats.
    Directories may hold fields too (``"ckpt/{epoch:03d}/weights.pt"``). Missing directories are created when a file
    is first written into them, not before; here the path is checked as far as its fixed part goes (the nearest
    existing directory must be writable). Write a literal brace as ``{{`` or ``}}``. A file at a name this callback
    writes is overwritten, as a plain path is.

    Args:
        path: the file to write, or a template of it.
        monitor: a history column, checked against the fit's columns when the fit begins (as are ``path``'s
            fields), or a :class:`~kerasish.Monitor` (which carries ``mode``, ``min_delta`` and ``delta_mode``).
        mode: ``"min"`` or ``"max"``; ``None`` (default): from the column, when the fit begins (see
            :func:`kerasish.monitor.direction`: losses are minimised, a metric's ``higher_is_better`` decides).
        min_delta: how much a value must beat the best by to count as an improvement.
        delta_mode: ``"abs"``: ``min_delta`` is an amount; ``"rel"``: a fraction of ``abs(best)``.
        every_n_epochs: ``None`` saves only when ``monitor`` improves; ``N`` saves at every epoch divisible by ``N``,
            improved or not (``monitor`` still picks :attr:`best_path`).
        keep_last: keep only the newest ``k`` files this callback wrote in this fit, deleting older ones it wrote; no
            other file is ever deleted, and files of an earlier fit of the same instance are left alone. Needs a
            template whose name changes between epochs: a plain path names one file that each save overwrites.
            ``None`` deletes nothing. A directory created for a deleted file is left in place.

    Attributes:
        path: ``path`` as given (the template, when it is one).
        best: the :class:`~kerasish.BestSoFar` of this fit.
        last_path: the file written most recently in this fit, or ``None``.
        best_path: the file holding the weights of this fit's best epoch so far, or ``None`` when that epoch was not
            saved (with ``every_n_epochs`` it may fall between saves), was overwritten by a later epoch's save, or
            was deleted by ``keep_last``. Without ``every_n_epochs`` it is :attr:`last_path`.
        written: the files this callback wrote in this fit and has not deleted, oldest first.

    Example:
        The val loss improves at epochs 1 and 2 only, so those two files are written; ``best_path`` names the
        second, and loading it brings back epoch 2's weight after the fit ended on epoch 4's:

        >>> import os, tempfile
        >>> import torch
        >>> from torch import nn
        >>> from kerasish import KerasModel, ModelCheckpoint
        >>> net = nn.Linear(1, 1, bias=False)
        >>> _ = nn.init.zeros_(net.weight)
        >>> x = torch.ones(4, 1)
        >>> train, val = [(x, 2 * x)], [(x, x)]  # training pulls the weight toward 2; the val loss is least at 1
        >>> model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.125), device="cpu")
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     ckpt = ModelCheckpoint(os.path.join(tmp, "epoch{epoch:02d}-val_loss{val_loss:.4f}.pt"))
        ...     _ = model.fit(train, val, epochs=4, restore_best_weights=False, callbacks=[ckpt], verbose=0)
        ...     files, last_weight = sorted(os.listdir(tmp)), net.weight.item()
        ...     model.load_ckpt(ckpt.best_path)
        >>> files, ckpt.best_path.name
        (['epoch01-val_loss0.2500.pt', 'epoch02-val_loss0.0156.pt'], 'epoch02-val_loss0.0156.pt')
        >>> last_weight, net.weight.item()
        (1.3671875, 0.875)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        monitor: str | Monitor = "val_loss",
        mode: str | None = None,
        min_delta: float = 0.0,
        *,
        delta_mode: str = "abs",
        every_n_epochs: int | None = None,
        keep_last: int | None = None,
    ) -> None:
        self._template, self.fields = _parse_template(path)
        self.path = check_writable(path, "path")
        _check_counts(every_n_epochs, keep_last)
        if keep_last is not None and not self.fields:
            raise ValueError(
                f"keep_last={keep_last!r} needs a path template whose name changes per epoch, such as "
                f"'epoch{{epoch:03d}}.pt'; path={self._template!r} has no fields, so every save overwrites that file"
            )
        self.monitor = monitor_argument(monitor, mode, min_delta, delta_mode)
        self.best = BestSoFar(self.monitor)
        self.every_n_epochs = every_n_epochs
        self.keep_last = keep_last
        self._reset()

    def on_fit_begin(self, model: KerasModel | None, logs: Logs) -> None:
        self.best.monitor = self.monitor.for_fit(model, type(self).__name__)
        columns = fit_columns(model)
        if columns is not None:
            self._check_fields(columns)
        self._reset()

    def _reset(self) -> None:
        self.best.reset()
        self.written: list[str] = []
        self.last_path: Path | None = None
        self.best_path: Path | None = None

    def on_epoch_end(self, model: KerasModel, logs: Logs) -> None:
        improved = self.best.update(logs)
        due = improved if self.every_n_epochs is None else logs["epoch"] % self.every_n_epochs == 0
        if not due:
            if improved:
                self.best_path = None
            return
        path = Path(self._template.format_map(logs))
        writes = is_main_process(model)
        if writes:
            atomic_save(model.net.state_dict(), path)
        self.last_path = path
        if improved:
            self.best_path = path
        elif path == self.best_path:
            self.best_path = None
        self._remember(path, delete=writes)

    def state_dict(self) -> dict[str, Any]:
        """``best``, ``written`` (file names, oldest first), ``last_path`` and ``best_path``, as strings."""
        return {
            "best": self.best.state_dict(),
            "written": list(self.written),
            "last_path": None if self.last_path is None else str(self.last_path),
            "best_path": None if self.best_path is None else str(self.best_path),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes back what :meth:`state_dict` returned, so a resumed fit goes on rotating the same files.

        The files named in ``written`` become this callback's own: ``keep_last`` may delete them.
        """
        missing = {"best", "written", "last_path", "best_path"} - set(state)
        if missing:
            raise ValueError(f"ModelCheckpoint state lacks {sorted(missing)}; got keys {sorted(state)}")
        self.best.load_state_dict(state["best"])
        self.written = [str(name) for name in state["written"]]
        self.last_path = None if state["last_path"] is None else Path(state["last_path"])
        self.best_path = None if state["best_path"] is None else Path(state["best_path"])

    def _remember(self, path: Path, *, delete: bool) -> None:
        """Records a write (a rewritten name becomes the newest) and forgets (with ``delete``, deletes) what falls
        outside ``keep_last``."""
        name = str(path)
        if name in self.written:
            self.written.remove(name)
        self.written.append(name)
        while self.keep_last is not None and len(self.written) > self.keep_last:
            oldest = Path(self.written.pop(0))
            if delete:
                oldest.unlink(missing_ok=True)
            if oldest == self.best_path:
                self.best_path = None

    def _check_fields(self, columns: list[str]) -> None:
        unknown = [field for field in self.fields if field not in columns]
        if columns and unknown:
            raise ValueError(
                f"ModelCheckpoint: path={self._template!r} has the field {{{unknown[0]}}}, which is not a history "
                f"column of this fit; available: {', '.join(columns)}"
            )


def _parse_template(path: Any) -> tuple[str, list[str]]:
    """``path`` as a string and the names of its fields, after checking it is a template an epoch's row can fill."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}: {path!r}")
    template = os.fspath(path)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(
            f"path={template!r} is not a valid template ({err}); write literal braces as {{{{ and }}}}"
        ) from None
    fields = list(dict.fromkeys(field for _, field, _, _ in parts if field is not None))
    for field in fields:
        if not field.isidentifier():
            raise ValueError(
                f"path={template!r} has the field {{{field}}}; fields must be history column names, "
                "such as {epoch:03d} or {val_loss:.4f}"
            )
    try:
        template.format_map({field: 1 if field == "epoch" else 0.5 for field in fields})
    except (ValueError, TypeError, KeyError, IndexError) as err:
        raise ValueError(
            f"path={template!r} cannot be filled in with an epoch's row ({type(err).__name__}: {err}); "
            "epoch is an int and the other columns are floats"
        ) from None
    return template, fields


def _check_counts(every_n_epochs: Any, keep_last: Any) -> None:
    for name, value in (("every_n_epochs", every_n_epochs), ("keep_last", keep_last)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r} is not valid; use an int >= 1, or None")
