"""One fit's parts, all decided and checked before its first step, and how one of its epochs runs.

:meth:`KerasModel.fit <kerasish.KerasModel.fit>` reads as its loop: :func:`plan_fit` checks every argument and
builds the loaders, the cursor over the train data, the callbacks, the runners, the history and the run state;
:meth:`FitPlan.epoch` runs an epoch's train and val passes and returns its history row.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kerasish.arguments import check_callbacks, check_fit_args, default_optimizer
from kerasish.callbacks import Callback, CallbackList, ModelCheckpoint, TerminateOnNaN
from kerasish.callbacks.builtins import fit_callbacks
from kerasish.checks import flag
from kerasish.cursor import TrainCursor, check_long_run_args, make_cursor
from kerasish.history import History
from kerasish.monitor import Monitor, directions
from kerasish.resume import RunState
from kerasish.runners import EpochRunner, loader_length
from kerasish.schedulers import check_schedule


@dataclass
class FitPlan:
    """What a fit decided before its first step; :func:`plan_fit` builds it."""

    epochs: int
    verbose: int
    monitor: Monitor
    callbacks: CallbackList
    history: History
    run: RunState
    cursor: TrainCursor
    train_pass: EpochRunner
    val_pass: EpochRunner | None
    val_loader: Iterable | None
    validation_steps: int | None
    state_every: int | None

    @property
    def checkpoint(self) -> ModelCheckpoint | None:
        """The ``ModelCheckpoint`` that ``ckpt_path`` built, whose best file ``load_ckpt()`` loads."""
        return next((cb for cb in self.callbacks.callbacks if isinstance(cb, ModelCheckpoint)), None)

    @property
    def answers_nan(self) -> bool:
        """Whether a callback already acts on a non-finite loss, so that the fit need not warn."""
        return any(isinstance(callback, TerminateOnNaN) for callback in self.callbacks.callbacks)

    def epoch(self, model: Any, epoch: int) -> dict[str, Any]:
        """Epoch ``epoch``'s train and val passes: its history row, as the callbacks' ``on_epoch_end`` gets it.

        An epoch a resumed run goes on with (its state written within it) starts from what it had: its batches,
        seconds and starting ``lr``.
        """
        carried = self.run.carried(epoch)
        lr = float(model.optimizer.param_groups[0]["lr"]) if carried is None else carried["lr"]
        batches = self.cursor.batches(epoch, done=0 if carried is None else carried["batches"])
        every = self.state_every
        write = (
            None if every is None else functools.partial(self.run.save_within, epochs=self.epochs, epoch=epoch, lr=lr)
        )
        passes = {"epoch": epoch, "epochs": self.epochs}
        logs = {"epoch": epoch, **self.train_pass(batches, **passes, total=self.cursor.total(), checkpoint=write,
                                                  checkpoint_every=every)}  # fmt: skip
        seconds = self.train_pass.seconds
        if self.val_pass is not None:
            val_batches, total = self.val_loader, None
            if self.validation_steps is not None:
                total = min(self.validation_steps, loader_length(self.val_loader) or self.validation_steps)
                val_batches = itertools.islice(self.val_loader, self.validation_steps)
            logs.update(self.val_pass(val_batches, **passes, total=total))
            seconds += self.val_pass.seconds
        return {**logs, "lr": lr, "time": seconds}


def plan_fit(
    model: Any,
    train_data: Iterable,
    val_data: Iterable | None,
    *,
    epochs: Any,
    monitor: str | None,
    mode: str | None,
    patience: int | None,
    min_delta: float,
    delta_mode: str,
    restore_best_weights: Any,
    ckpt_path: str | os.PathLike | None,
    callbacks: Sequence[Callback] | None,
    verbose: Any,
    plot: Any,
    state_path: Any,
    resume: Any,
    steps_per_epoch: Any,
    validation_steps: Any,
    state_every_n_steps: Any,
) -> FitPlan:
    """Checks ``fit``'s arguments and builds its parts, raising before anything of the model has changed.

    The one exception is ``optimizer=None``, which makes the model its default optimizer here.
    """
    check_callbacks(callbacks)
    watched = Monitor(monitor or ("val_loss" if val_data is not None else "train_loss"), mode, min_delta, delta_mode)
    columns, watched = check_fit_args(model, train_data, val_data, epochs=epochs, monitor=watched, verbose=verbose)
    epochs, restore_best_weights = int(epochs), flag(restore_best_weights, "restore_best_weights")
    steps, val_steps, every = check_long_run_args(
        steps_per_epoch, validation_steps, val_data, state_every_n_steps, state_path
    )
    train_loader = model.strategy.train_loader(train_data, "train_data")
    val_loader = None if val_data is None else model.strategy.eval_loader(val_data, "val_data")[0]
    positions = state_path is not None and (steps is not None or every is not None)
    cursor = make_cursor(train_loader, steps_per_epoch=steps, strategy=model.strategy, saves_positions=positions)
    builtins = fit_callbacks(
        watched, patience=patience, restore_best_weights=restore_best_weights, ckpt_path=ckpt_path, plot=plot,
        verbose=verbose,
    )  # fmt: skip
    all_callbacks = CallbackList([*builtins, *(callbacks or [])])
    if model.optimizer is None:
        model.optimizer = default_optimizer(model.net)
    check_schedule(model, steps or loader_length(train_loader), epochs=epochs, resume=resume)
    train_pass = model._epoch_runner("train", all_callbacks, verbose)
    if every is not None:
        train_pass.step_runner.metrics.check_saveable()
    val_pass = None if val_data is None else model._epoch_runner("val", all_callbacks, verbose)
    history = History(columns, monitor=watched, directions=directions(columns, model.metrics_dict))
    run = RunState.open(
        state_path, resume, model=model, history=history, callbacks=all_callbacks, runner=train_pass,
        loader=train_data, cursor=cursor, val_loader=val_data,
    )  # fmt: skip
    return FitPlan(
        epochs=epochs,
        verbose=verbose,
        monitor=watched,
        callbacks=all_callbacks,
        history=history,
        run=run,
        cursor=cursor,
        train_pass=train_pass,
        val_pass=val_pass,
        val_loader=val_loader,
        validation_steps=val_steps,
        state_every=every,
    )
