"""The history's curves while a fit runs: redrawn in place in a notebook, written to an image file outside one."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kerasish import plotting
from kerasish.callbacks.base import Callback, Logs
from kerasish.checkpoint import check_directory, check_writable
from kerasish.distributed import is_main_process
from kerasish.monitor import fit_columns
from kerasish.progress import say

if TYPE_CHECKING:
    import pandas as pd

    from kerasish.model import KerasModel

DEFAULT_NAME = "history.png"


class LivePlot(Callback):
    """Draws :func:`~kerasish.plot_history`'s figure as the fit runs; ``fit(plot=...)`` builds one.

    In a Jupyter kernel (notebook, JupyterLab, VS Code, Colab) the figure appears when the first epoch ends and is
    redrawn in place after each epoch: one output, updated, not one per epoch. A redraw costs matplotlib 0.1-0.3 s;
    when epochs are quicker than that, epochs are skipped so that drawing takes at most a fifth of the fit's time,
    and the figure is redrawn with every epoch when the fit ends. Outside a notebook nothing is drawn during the
    fit; when it ends, however it ends, the final figure is written to an image file and, with ``verbose``, its
    path printed. Data-parallel, rank 0 alone draws and writes.

    Args:
        path: where the final figure goes. A file path (its suffix picks the format: ``.png``, ``.pdf``, ``.svg``,
            ...) is written, replacing a file already there. A directory (one that exists, or a path ending in
            ``/``) gets a new ``history.png`` (``history-2.png``, ... when taken: an earlier plot is never
            replaced). Missing directories are created when the figure is written. ``None``: no file in a
            notebook; a new ``history.png`` in the current directory outside one.
        metrics: the panels, as in :func:`~kerasish.plot_history`; ``None``: every metric. Checked against the
            fit's columns before the first step.
        live: ``None`` redraws live only in a Jupyter kernel; ``True`` / ``False`` decides for it.
        verbose: ``1`` or ``2`` prints where the file was written.

    Raises:
        ImportError: matplotlib is not installed (the message names the extra), here rather than after training.
        ValueError: the path's directory could not be created or written, or its suffix is not an image format
            matplotlib writes.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> from torch import nn
        >>> from kerasish import KerasModel, LivePlot
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(32, 3)
        >>> batches = [(x, x.sum(1, keepdim=True))]
        >>> model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu")
        >>> with tempfile.TemporaryDirectory() as tmp:  # doctest: +ELLIPSIS
        ...     _ = model.fit(batches, batches, epochs=3, callbacks=[LivePlot(tmp, live=False)], verbose=0)
        ...     written = sorted(p.name for p in Path(tmp).iterdir())
        history plot written to /.../history.png
        >>> written
        ['history.png']
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        metrics: Sequence[str] | None = None,
        live: bool | None = None,
        verbose: int = 1,
    ) -> None:
        plotting.require_matplotlib()
        if live is not None and not isinstance(live, bool):
            raise TypeError(f"live={live!r} is not valid; use True, False or None (live only in a notebook)")
        self.path, self._into_directory = (None, False) if path is None else _check_path(path)
        self.metrics = None if metrics is None else list(metrics)
        self.live = plotting.in_notebook() if live is None else live
        self.verbose = verbose
        self.written: Path | None = None
        self._panels: list[str] = []
        self._figure: Any = None
        self._display: Any = None
        self._next_draw = 0.0
        self._shown_epochs = 0

    def on_fit_begin(self, model: KerasModel, logs: Logs) -> None:
        import pandas as pd  # plotting needs the history as a DataFrame at each draw anyway

        self._panels = plotting.panels_of(pd.DataFrame(columns=fit_columns(model)), self.metrics)
        self.written, self._figure, self._display = None, None, None
        self._next_draw, self._shown_epochs = 0.0, 0

    def on_epoch_end(self, model: KerasModel, logs: Logs) -> None:
        if self.live and is_main_process(model) and time.perf_counter() >= self._next_draw:
            self._show(model.history)

    def on_fit_end(self, model: KerasModel, logs: Logs) -> None:
        history = model.history
        if history.empty or not is_main_process(model):
            return
        if self.live and self._shown_epochs != len(history):
            self._show(history)
        if self.live and self.path is None:
            return
        target = self._target()
        target.parent.mkdir(parents=True, exist_ok=True)
        self._draw(history).savefig(target)
        self.written = target
        if self.verbose:
            say(f"history plot written to {target}", model)

    def _draw(self, history: pd.DataFrame) -> Any:
        # A bare Figure, not pyplot's: the notebook's inline backend would show a pyplot figure a second time
        # at the end of the cell, and a script's GUI backend would open a window.
        from matplotlib.figure import Figure

        if self._figure is None:
            self._figure = Figure(figsize=plotting.figure_size(len(self._panels)), layout="constrained")
        plotting.draw_history(self._figure, history, self._panels, plotting.best_rule(history))
        return self._figure

    def _show(self, history: pd.DataFrame) -> None:
        from IPython.display import Image, display

        start = time.perf_counter()
        png = io.BytesIO()
        self._draw(history).savefig(png, format="png")
        image = Image(data=png.getvalue(), format="png")
        if self._display is None:
            self._display = display(image, display_id=True)
        else:
            self._display.update(image)
        self._shown_epochs = len(history)
        # Drawing takes at most a fifth of the time: wait four times as long as this draw took.
        now = time.perf_counter()
        self._next_draw = now + 4 * (now - start)

    def _target(self) -> Path:
        if self.path is not None and not self._into_directory and not self.path.is_dir():
            return self.path
        directory = self.path or Path.cwd()
        stem, suffix = os.path.splitext(DEFAULT_NAME)
        candidates = (directory / (DEFAULT_NAME if n == 1 else f"{stem}-{n}{suffix}") for n in range(1, 10_000))
        return next(path for path in candidates if not path.exists())


def plot_callbacks(plot: Any, ckpt_path: str | os.PathLike | None, verbose: int) -> list[LivePlot]:
    """The callback ``fit(plot=...)`` asks for, if any: drawn live in a notebook, else written beside the run."""
    if plot is False:
        return []
    if plot is True:
        parent = None if ckpt_path is None else str(Path(ckpt_path).parent)
        # The separator marks a directory, which may not exist until the fit writes its first checkpoint.
        beside = None if parent is None or "{" in parent else os.path.join(parent, "")
        return [LivePlot(None if plotting.in_notebook() else beside, verbose=verbose)]
    if not isinstance(plot, (str, os.PathLike)):
        raise TypeError(f"plot={plot!r} is not valid; use True, False or an image file path such as 'history.png'")
    return [LivePlot(plot, verbose=verbose)]


def _check_path(path: str | os.PathLike) -> tuple[Path, bool]:
    """``path`` and whether it names a directory, after checking that it can be written (or created).

    A directory is one that exists, or a path ending in a separator; anything else must end in an image format.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    text = os.fspath(path)
    if Path(text).is_dir() or text.endswith(("/", os.sep)):
        return check_directory(Path(text), "path", text), True
    formats = FigureCanvasBase.get_supported_filetypes()
    if Path(text).suffix.lower().lstrip(".") not in formats:
        raise ValueError(
            f"path={text!r} does not end in an image format matplotlib writes; use one of "
            f"{', '.join('.' + name for name in sorted(formats))}, or a directory (one that exists, or a path "
            "ending in '/')"
        )
    return check_writable(text, "path"), False
