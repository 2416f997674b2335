"""``KerasModel``: ``fit`` / ``evaluate`` / ``predict`` around a PyTorch net."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from kerasish import runners
from kerasish.batches import preds_of, split_batch
from kerasish.callbacks import BestWeights, Callback, CallbackList, EarlyStopping, ModelCheckpoint
from kerasish.checkpoint import atomic_save, check_writable, load_weights
from kerasish.device import move_optimizer_state, resolve_device, to_device
from kerasish.history import History, history_columns
from kerasish.metrics import MetricLike, MetricSet, check_metrics
from kerasish.monitor import Monitor
from kerasish.progress import format_logs, say

SCHEDULER_INTERVALS = ("epoch", "step")


class KerasModel:
    """A net with its loss, metrics and optimizer, trained with ``fit`` and used with ``evaluate`` and ``predict``.

    Args:
        net: the network. It is moved to ``device`` here and stays there, during and after ``fit``.
        loss_fn: ``loss_fn(preds, labels) -> scalar tensor``; ``None`` when the net returns its own loss
            (``out["loss"]`` or ``out.loss``, Hugging Face style).
        metrics_dict: name -> torchmetrics ``Metric`` or ``fn(preds, labels) -> tensor``; each becomes the history
            columns ``train_<name>`` and ``val_<name>``.
        optimizer: built over ``net``'s parameters; ``None`` makes ``fit`` use ``Adam(lr=1e-3)``.
        lr_scheduler: a torch LR scheduler over ``optimizer``, stepped once per epoch (``ReduceLROnPlateau`` is given
            the monitored value), or after every optimizer step with ``scheduler_interval="step"``.
        device: ``None`` picks cuda, else mps, else cpu; or a string or ``torch.device``.
        scheduler_interval: ``"epoch"`` or ``"step"``.

    Subclass and set ``StepRunner`` or ``EpochRunner`` to change how a batch or a pass runs.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from kerasish import KerasModel
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> x = torch.randn(64, 3)
        >>> data = [(x[i:i + 16], x[i:i + 16].sum(1, keepdim=True)) for i in range(0, 64, 16)]
        >>> net = nn.Linear(3, 1)
        >>> model = KerasModel(net, loss_fn=nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        ...                    device="cpu")
        >>> history = model.fit(data, data, epochs=30, verbose=0)
        >>> round(model.evaluate(data)["val_loss"], 4)
        0.0
    """

    StepRunner = runners.StepRunner
    EpochRunner = runners.EpochRunner

    def __init__(
        self,
        net: nn.Module,
        loss_fn: Callable | None = None,
        metrics_dict: Mapping[str, MetricLike] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        device: str | torch.device | None = None,
        *,
        scheduler_interval: str = "epoch",
    ) -> None:
        _check_model_args(net, loss_fn, optimizer, lr_scheduler, scheduler_interval)
        self.device = resolve_device(device)
        self.net = net.to(self.device)
        self.loss_fn = loss_fn
        self.metrics_dict = check_metrics(metrics_dict)
        self.optimizer = optimizer
        if optimizer is not None:
            move_optimizer_state(optimizer, self.device)
        self.lr_scheduler = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.history = pd.DataFrame()
        self.stop_training = False

    def fit(
        self,
        train_data: Iterable,
        val_data: Iterable | None = None,
        epochs: int = 10,
        ckpt_path: str | os.PathLike | None = None,
        patience: int | None = 5,
        monitor: str | None = None,
        mode: str = "min",
        min_delta: float = 0.0,
        callbacks: Sequence[Callback] | None = None,
        verbose: int = 1,
    ) -> pd.DataFrame:
        """Trains for up to ``epochs`` epochs and leaves the best epoch's weights in the net.

        Each epoch is a train pass over ``train_data``, then a val pass over ``val_data`` if given; its numbers become
        a row of the history. Training stops early once ``monitor`` has not improved for ``patience`` epochs. However
        the fit ends (epochs used up, early stop, Ctrl-C, an exception), the weights of the best epoch are loaded back
        into the net, on its device. Ctrl-C ends the fit quietly and returns the history so far.

        Args:
            train_data: an iterable of batches, e.g. a ``DataLoader`` (one over an ``IterableDataset`` works too).
            val_data: batches for the val pass, or ``None``.
            epochs: the most epochs to run, >= 1.
            ckpt_path: also write the best weights to this file whenever they improve (atomically); no file is
                written without it.
            patience: epochs without improvement before stopping; ``None`` never stops early.
            monitor: the history column that picks the best epoch; ``None`` means ``"val_loss"`` when there is
                val data, else ``"train_loss"``.
            mode: ``"min"`` or ``"max"``: whether lower or higher ``monitor`` is better.
            min_delta: an improvement must beat the best by more than this; a tie never improves.
            callbacks: more :class:`~kerasish.Callback` instances, run in order after the built-in ones.
            verbose: 1 shows a progress bar per pass and a line per epoch, 0 prints nothing.

        Returns:
            The history, one row per finished epoch (also kept as ``self.history``): ``epoch``, ``train_loss``,
            ``train_<metric>``, ``val_loss``, ``val_<metric>``, ``lr`` (the epoch's learning rate) and ``time``
            (the epoch's wall seconds). Losses are sample-weighted means over the pass.

        Raises:
            ValueError, TypeError: a bad argument, before any training step.
        """
        monitor = monitor or ("val_loss" if val_data is not None else "train_loss")
        columns = self._check_fit_args(train_data, val_data, epochs=epochs, monitor=monitor, mode=mode, verbose=verbose)
        callbacks = CallbackList(
            [
                *self._builtin_callbacks(ckpt_path, patience, Monitor(monitor, mode, min_delta), verbose),
                *(callbacks or []),
            ]
        )
        if self.optimizer is None:
            self.optimizer = _default_optimizer(self.net)
        train_pass = self._epoch_runner("train", callbacks, verbose)
        val_pass = None if val_data is None else self._epoch_runner("val", callbacks, verbose)
        history = History(columns)
        self.history, self.stop_training, logs = history.frame, False, {}
        callbacks.call("on_fit_begin", self, {})
        try:
            for epoch in range(1, epochs + 1):
                callbacks.call("on_epoch_begin", self, {"epoch": epoch})
                lr, start = self._lr(), time.perf_counter()
                logs = {"epoch": epoch, **train_pass(train_data, epoch=epoch, epochs=epochs)}
                if val_pass is not None:
                    logs.update(val_pass(val_data, epoch=epoch, epochs=epochs))
                logs.update(lr=lr, time=time.perf_counter() - start)
                history.append(logs)
                self.history = history.frame
                if verbose:
                    say(f"epoch {epoch}/{epochs}  {format_logs(logs)}")
                callbacks.call("on_epoch_end", self, logs)
                self._step_scheduler(logs, monitor)
                if self.stop_training:
                    break
        except KeyboardInterrupt:
            if verbose:
                say(f"interrupted: fit stops after {len(history.rows)} finished epochs")
        finally:
            callbacks.call_all("on_fit_end", self, logs)
        return self.history

    def evaluate(self, data: Iterable, verbose: int = 0) -> dict[str, float]:
        """One pass over ``data`` without training: ``{"val_loss": ..., "val_<metric>": ...}``.

        Uses the same loss, metrics and batch conventions as the val pass of ``fit``, with metric state of its own.
        """
        _check_loader(data, "data")
        return self._epoch_runner("val", CallbackList(), verbose)(data)

    def predict(self, data: Iterable) -> torch.Tensor:
        """The net's outputs (``logits`` for outputs that carry them) for every batch, concatenated in order, on CPU.

        Batches are read as in ``fit`` and their labels ignored: the last element of a tuple, ``batch["labels"]`` of a
        mapping. A bare tensor or a 1-tuple ``(x,)`` is input only.
        """
        _check_loader(data, "data")
        outputs = []
        with runners.pass_mode(self.net, training=False):
            for batch in data:
                args, kwargs, _ = split_batch(batch)
                preds = preds_of(self.net(*to_device(args, self.device), **to_device(kwargs, self.device)))
                if not isinstance(preds, torch.Tensor):
                    raise TypeError(f"predict concatenates tensors; the net returned {type(preds).__name__}")
                outputs.append(preds)
        if not outputs:
            raise ValueError("data yielded no batches")
        # Outputs stay on the device until the end: one transfer instead of a sync per batch.
        return torch.cat(outputs).cpu()

    def save_ckpt(self, path: str | os.PathLike) -> None:
        """Writes the net's weights (its ``state_dict``) to ``path``, atomically."""
        atomic_save(self.net.state_dict(), check_writable(path, "path"))

    def load_ckpt(self, path: str | os.PathLike) -> None:
        """Loads weights written by :meth:`save_ckpt` or ``fit(ckpt_path=...)`` into the net, on its device.

        The file is read with ``weights_only=True``: tensors only, no pickled code is ever run.
        """
        self.net.load_state_dict(load_weights(path, self.device))

    def _check_fit_args(self, train_data, val_data, *, epochs, monitor, mode, verbose) -> list[str]:
        """Raises on any bad argument; returns the history's columns."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs={epochs!r} is not valid; use an int >= 1")
        if verbose not in (0, 1):
            raise ValueError(f"verbose={verbose!r} is not valid; use 0 (silent) or 1 (bars and a line per epoch)")
        _check_loader(train_data, "train_data")
        if val_data is not None:
            _check_loader(val_data, "val_data")
        columns = history_columns(self.metrics_dict, has_val=val_data is not None)
        if monitor not in columns:
            if val_data is None and monitor in history_columns(self.metrics_dict, has_val=True):
                raise ValueError(
                    f"monitor={monitor!r} needs val_data, but val_data is None; monitor a train_* column instead"
                )
            raise ValueError(f"monitor={monitor!r} is not a history column; available: {', '.join(columns)}")
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and self.lr_scheduler.mode != mode:
            raise ValueError(
                f"lr_scheduler is ReduceLROnPlateau(mode={self.lr_scheduler.mode!r}) but fit has mode={mode!r} for "
                f"monitor={monitor!r}; make them agree"
            )
        return columns

    def _builtin_callbacks(self, ckpt_path, patience, monitor: Monitor, verbose: int) -> list[Callback]:
        args = (monitor.name, monitor.mode, monitor.min_delta)
        built = [BestWeights(*args, verbose=verbose)]
        if ckpt_path is not None:
            built.append(ModelCheckpoint(check_writable(ckpt_path, "ckpt_path"), *args))
        if patience is not None:
            built.append(EarlyStopping(*args, patience=patience, verbose=verbose))
        return built

    def _epoch_runner(self, stage: str, callbacks: CallbackList, verbose: int) -> runners.EpochRunner:
        training = stage == "train"
        step = self.StepRunner(
            self.net,
            self.loss_fn,
            stage=stage,
            metrics=MetricSet(self.metrics_dict, self.device),
            device=self.device,
            optimizer=self.optimizer if training else None,
            lr_scheduler=self.lr_scheduler if training and self.scheduler_interval == "step" else None,
        )
        return self.EpochRunner(step, model=self, callbacks=callbacks, verbose=verbose)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _step_scheduler(self, logs: dict, monitor: str) -> None:
        if self.lr_scheduler is None or self.scheduler_interval != "epoch":
            return
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.lr_scheduler.step(logs[monitor])
        else:
            self.lr_scheduler.step()


def _check_model_args(net, loss_fn, optimizer, lr_scheduler, scheduler_interval) -> None:
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module; got {type(net).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (preds, labels) -> loss, or None; got {type(loss_fn).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None; got {type(optimizer).__name__}")
    if scheduler_interval not in SCHEDULER_INTERVALS:
        raise ValueError(f"scheduler_interval={scheduler_interval!r} is not valid; use 'epoch' or 'step'")
    if lr_scheduler is None:
        return
    if not callable(getattr(lr_scheduler, "step", None)):
        raise TypeError(f"lr_scheduler must have a step() method; got {type(lr_scheduler).__name__}")
    if optimizer is None or getattr(lr_scheduler, "optimizer", optimizer) is not optimizer:
        raise ValueError("lr_scheduler must be built over the optimizer passed as optimizer=")
    if scheduler_interval == "step" and isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ValueError("ReduceLROnPlateau needs an epoch's monitored value; use scheduler_interval='epoch'")


def _check_loader(data: Any, argument: str) -> None:
    if data is None or not isinstance(data, Iterable) or isinstance(data, (torch.Tensor, str, Mapping)):
        raise TypeError(f"{argument} must be an iterable of batches such as a DataLoader; got {type(data).__name__}")
    # A loader without length (an IterableDataset's) that turns out empty is caught after its pass.
    if runners.loader_length(data) == 0:
        raise ValueError(f"{argument} is empty: it has 0 batches (check the dataset size, batch_size and drop_last)")


def _default_optimizer(net: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            f"optimizer=None, so fit builds Adam over the net's parameters, but {type(net).__name__} has no trainable "
            "parameters; pass optimizer=... or give the net parameters"
        )
    return torch.optim.Adam(params, lr=1e-3)
