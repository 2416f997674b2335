"""The callbacks ``fit`` builds from its own arguments, all from one :class:`~kerasish.Monitor`."""

from __future__ import annotations

import os
from typing import Any

from kerasish.callbacks.base import Callback
from kerasish.callbacks.best_weights import BestWeights
from kerasish.callbacks.early_stopping import EarlyStopping
from kerasish.callbacks.live_plot import plot_callbacks
from kerasish.callbacks.model_checkpoint import ModelCheckpoint
from kerasish.checkpoint import check_writable
from kerasish.monitor import Monitor


def fit_callbacks(
    monitor: Monitor,
    *,
    patience: int | None,
    restore_best_weights: Any,
    ckpt_path: str | os.PathLike | None,
    plot: Any,
    verbose: int,
) -> list[Callback]:
    """``BestWeights``, ``ModelCheckpoint``, ``EarlyStopping`` and ``LivePlot``, as far as the fit asks for them.

    They share ``monitor``, so the restored weights, the file on disk and the stop agree on the best epoch.
    """
    built: list[Callback] = []
    if restore_best_weights:
        built.append(BestWeights(monitor, verbose=verbose))
    if ckpt_path is not None:
        built.append(ModelCheckpoint(check_writable(ckpt_path, "ckpt_path"), monitor))
    if patience is not None:
        built.append(EarlyStopping(monitor, patience=patience, verbose=verbose))
    return built + plot_callbacks(plot, ckpt_path, verbose)
