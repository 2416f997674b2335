"""Pictures of a fit: a panel per metric with its train and val curves and the best epoch marked.

matplotlib is optional (``pip install matplotlib``; in a clone of kerasish, ``pip install -e ".[plot]"``); it is
imported only when a picture is asked for, so ``import kerasish`` never pays for it.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kerasish.history import split_stage
from kerasish.monitor import BestSoFar, Monitor

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

# kerasish is on no package index, so `pip install "kerasish[plot]"` fails; these work however it was installed.
INSTALL_HINT = 'pip install matplotlib (or, in a clone of kerasish: pip install -e ".[plot]")'
STAGES = ("train", "val")
# Panels per row before the figure wraps to a new row.
COLUMNS = 3


def require_matplotlib() -> Any:
    """The ``matplotlib`` module, or an error that says how to install it."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(f"plotting needs matplotlib: {INSTALL_HINT}") from err
    return matplotlib


def plot_history(
    history: pd.DataFrame, metrics: Sequence[str] | None = None, *, monitor: str | None = None, mode: str | None = None
) -> Figure:
    """A matplotlib figure of a fit's history: one panel per metric, train and val curves, the best epoch marked.

    The figure is made with ``pyplot``, so ``plt.show()`` shows it in a script and a notebook displays it like any
    other figure; ``fig.savefig("curves.png")`` writes it.

    Args:
        history: the DataFrame ``fit`` returns (or ``model.history``); one row per epoch.
        metrics: the metrics to draw, by name without the stage prefix (``"loss"``, ``"acc"``), or any other column
            (``"lr"``); ``None``: every ``train_*`` / ``val_*`` metric, loss first.
        monitor: the column that picks the best epoch. ``None``: the one the fit monitored (a history from ``fit``
            remembers it), else ``val_loss`` if present, else ``train_loss``.
        mode: ``"min"`` or ``"max"`` for ``monitor``; ``None``: the fit's, else the column's direction as the fit
            knew it (a history from ``fit`` remembers each column's), else ``"min"`` for a loss; for any other column
            ``None`` is an error.

    The best epoch is found with the same rule as early stopping and best-weight restore (the fit's ``min_delta``
    included), so the marked epoch is the one whose weights ``fit`` restored.

    Raises:
        ImportError: matplotlib is not installed; the message says how to install it.
        ValueError: the history has no rows, or a metric or the monitor is not in it.

    Example:
        >>> import pandas as pd
        >>> from kerasish import plot_history
        >>> history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.9, 0.5, 0.3], "val_loss": [0.8, 0.6, 0.7],
        ...                         "train_acc": [0.6, 0.8, 0.9], "val_acc": [0.6, 0.7, 0.7]})
        >>> fig = plot_history(history)
        >>> [ax.get_title() for ax in fig.axes]
        ['loss', 'acc']
        >>> [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
        ['train', 'val', 'best: epoch 2']
    """
    require_matplotlib()
    from matplotlib import pyplot as plt

    panels = panels_of(history, metrics)
    if history.empty:
        raise ValueError("history has no epochs to plot yet")
    watched = best_rule(history, monitor, mode)
    figure = plt.figure(figsize=figure_size(len(panels)), layout="constrained", FigureClass=_history_figure_class())
    draw_history(figure, history, panels, watched)
    return figure


def draw_history(figure: Figure, history: pd.DataFrame, panels: Sequence[str], watched: Monitor) -> None:
    """Draws ``panels`` (from :func:`panels_of`) into ``figure``, replacing what it held."""
    from matplotlib.ticker import MaxNLocator

    figure.clear()
    best = best_epoch(history, watched)
    columns = min(len(panels), COLUMNS)
    rows = math.ceil(len(panels) / COLUMNS)
    for index, panel in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        curves = {stage: f"{stage}_{panel}" for stage in STAGES if f"{stage}_{panel}" in history}
        if panel in history:
            curves[panel] = panel
        for label, column in curves.items():
            axes.plot(history["epoch"], history[column], marker=".", label=label)
        if best is not None:
            axes.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"best: epoch {best}")
            if watched.name in curves.values():
                value = history.loc[history["epoch"] == best, watched.name].iloc[0]
                axes.plot([best], [value], marker="*", markersize=12, color="black", linestyle="none")
        axes.set_title(panel)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")


def best_epoch(history: pd.DataFrame, watched: Monitor) -> int | None:
    """The epoch whose ``watched`` value is best by the early-stopping rule; ``None`` if no value counts."""
    best = BestSoFar(watched)
    for row in history[["epoch", watched.name]].to_dict("records"):
        best.update(row)
    return None if best.epoch is None else int(best.epoch)


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (notebook, JupyterLab, VS Code, Colab), where figures display inline.

    Looks only at an already imported IPython: a plain script never imports it for this.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def panels_of(history: Any, metrics: Sequence[str] | None = None) -> list[str]:
    """The panels to draw: ``metrics`` checked against the history, or every stage metric, loss first."""
    import pandas as pd  # a picture is asked for: pandas comes with the history anyway

    if not isinstance(history, pd.DataFrame):
        raise TypeError(f"history must be the pandas DataFrame that fit returns; got {type(history).__name__}")
    if "epoch" not in history:
        raise ValueError(f"history has no 'epoch' column; columns: {', '.join(map(str, history.columns))}")
    found = _stage_metrics(history)
    if metrics is None:
        return found
    if isinstance(metrics, str):
        raise TypeError(f"metrics must be a list of names, e.g. [{metrics!r}]; got the string {metrics!r}")
    unknown = [name for name in metrics if name not in found and (name not in history or name == "epoch")]
    if unknown:
        available = [*found, *(c for c in history.columns if c != "epoch" and split_stage(c) is None)]
        raise ValueError(
            f"metrics={list(metrics)!r}: {', '.join(map(repr, unknown))} not in the history; "
            f"available: {', '.join(map(str, available))}"
        )
    return list(metrics)


def _stage_metrics(history: pd.DataFrame) -> list[str]:
    names = dict.fromkeys(split[1] for split in map(split_stage, history.columns) if split is not None)
    return sorted(names, key=lambda name: name != "loss")  # stable: loss first, the rest in column order


def best_rule(history: pd.DataFrame, monitor: str | None = None, mode: str | None = None) -> Monitor:
    """How the best epoch is picked: the given ``monitor``/``mode``, else the fit's, else the loss, lower is better.

    A ``mode`` left ``None`` is resolved as the fit resolved it: from the directions the history remembers.
    """
    remembered = history.attrs.get("monitor", {})
    if monitor is None and remembered.get("name") in history:
        watched = Monitor(**remembered)
        return watched if mode is None else Monitor(watched.name, mode, watched.min_delta, watched.delta_mode)
    if monitor is None:
        monitor = "val_loss" if "val_loss" in history else "train_loss"
    if monitor not in history:
        raise ValueError(
            f"monitor={monitor!r} is not a history column; available: {', '.join(map(str, history.columns))}"
        )
    known = history.attrs.get("directions", {})
    return Monitor(monitor, mode or known.get(monitor)).resolved(owner="plot_history")


def figure_size(panels: int) -> tuple[float, float]:
    """Width and height in inches for ``panels`` panels, :data:`COLUMNS` to a row."""
    return 4.2 * min(panels, COLUMNS), 3.2 * math.ceil(panels / COLUMNS)


def _history_figure_class() -> type:
    from matplotlib.figure import Figure

    class HistoryFigure(Figure):
        """A pyplot figure that a notebook shows once, also when it is a cell's last expression."""

        def _ipython_display_(self) -> None:
            # A notebook shows pyplot's open figures when a cell ends, through this method too, so a figure that
            # is also the cell's result would be drawn twice: draw it once per cell run.
            if not in_notebook():
                print(repr(self))
                return
            from IPython import get_ipython
            from IPython.display import Image, display

            cell = get_ipython().execution_count
            if getattr(self, "_kerasish_shown_in_cell", None) == cell:
                return
            self._kerasish_shown_in_cell = cell
            png = io.BytesIO()
            self.savefig(png, format="png")
            display(Image(data=png.getvalue(), format="png"))

    return HistoryFigure
