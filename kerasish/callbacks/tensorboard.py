"""Write each epoch's numbers as TensorBoard scalars."""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kerasish.callbacks.base import Callback, Logs
from kerasish.checkpoint import nearest_existing
from kerasish.distributed import is_main_process
from kerasish.history import split_stage

if TYPE_CHECKING:
    from kerasish.model import KerasModel

# kerasish is on no package index, so `pip install "kerasish[tensorboard]"` fails; these work however it was installed.
INSTALL_HINT = 'pip install tensorboard (or, in a clone of kerasish: pip install -e ".[tensorboard]")'


class TensorBoard(Callback):
    """Writes every number of each epoch's history row to a TensorBoard event file, at step = the epoch.

    ``train_<name>`` and ``val_<name>`` become the tags ``<name>/train`` and ``<name>/val``, so TensorBoard draws the
    two curves in one chart (``loss/train`` and ``loss/val``, ``acc/train`` and ``acc/val``); other columns keep their
    names (``lr``, ``time``, and any a custom runner adds). Values that are not numbers are skipped. The file is
    flushed at each epoch's end, so a running TensorBoard shows the epoch at once, and closed when the fit ends.
    Data-parallel, rank 0 alone writes.

    Each fit writes a new event file into ``log_dir``; TensorBoard shows the event files of one directory as one run,
    so give each run a directory of its own (``runs/lr-1e-3``, ``runs/lr-1e-2``, ...) under a common parent and point
    ``tensorboard --logdir runs`` at the parent.

    TensorBoard is an optional dependency, needed only when this callback is built: ``pip install tensorboard`` (in a
    clone of kerasish, ``pip install -e ".[tensorboard]"``).

    Args:
        log_dir: the run's directory; created (with its parents) when the fit begins.

    Raises:
        ImportError: the ``tensorboard`` package is not installed.
        ValueError: ``log_dir`` is a file, or could not be created.

    Example:
        >>> import tempfile
        >>> import torch
        >>> from torch import nn
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> from kerasish import KerasModel, TensorBoard
        >>> net = nn.Linear(1, 1, bias=False)
        >>> _ = nn.init.zeros_(net.weight)
        >>> x = torch.ones(4, 1)
        >>> model = KerasModel(net, nn.MSELoss(), metrics_dict={"mae": lambda preds, y: (preds - y).abs().mean()},
        ...                    optimizer=torch.optim.SGD(net.parameters(), lr=0.125), device="cpu")
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = model.fit([(x, 2 * x)], [(x, x)], epochs=3, callbacks=[TensorBoard(tmp)], verbose=0)
        ...     events = EventAccumulator(tmp).Reload()
        >>> sorted(events.Tags()["scalars"])
        ['loss/train', 'loss/val', 'lr', 'mae/train', 'mae/val', 'time']
        >>> [(event.step, event.value) for event in events.Scalars("loss/val")]
        [(1, 0.25), (2, 0.015625), (3, 0.0244140625)]
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self._summary_writer = _summary_writer_class()
        self.log_dir = _check_log_dir(log_dir)
        self.writer: Any = None

    def on_fit_begin(self, model: KerasModel, logs: Logs) -> None:
        self._close()  # a fit that failed before its on_fit_end could have left one open

    def on_epoch_end(self, model: KerasModel, logs: Logs) -> None:
        if not is_main_process(model):
            return
        if self.writer is None:
            # Created with the first row, so a fit that fails before its first epoch leaves no empty event file.
            self.writer = self._summary_writer(log_dir=str(self.log_dir))
        epoch = logs["epoch"]
        for column, value in logs.items():
            if column != "epoch" and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(_scalar_tag(column), float(value), global_step=epoch)
        self.writer.flush()

    def on_fit_end(self, model: KerasModel, logs: Logs) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None


def _scalar_tag(column: str) -> str:
    """``train_acc`` -> ``acc/train``, ``val_acc`` -> ``acc/val``; any other column keeps its name."""
    split = split_stage(column)
    return column if split is None else f"{split[1]}/{split[0]}"


def _summary_writer_class() -> type:
    # Imported here, not at module level, so that `import kerasish` works without tensorboard installed.
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(f"the TensorBoard callback needs the tensorboard package: {INSTALL_HINT}") from err
    return SummaryWriter


def _check_log_dir(log_dir: str | os.PathLike) -> Path:
    """Fails early, naming ``log_dir``, when the directory could not be used at the fit's beginning."""
    path = Path(log_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"log_dir={str(path)!r} is a file; give a directory, such as {str(path.parent / 'runs')!r}")
    existing = nearest_existing(path)
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(f"log_dir={str(path)!r} cannot be created: {str(existing)!r} is not a writable directory")
    return path
