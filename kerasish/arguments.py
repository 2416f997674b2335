"""Checks of what a user passes to ``KerasModel`` and ``fit``, run before any training step.

Each error names the argument, the value received and what would be valid.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from kerasish.checks import integer, not_a_class
from kerasish.history import history_columns
from kerasish.monitor import Monitor
from kerasish.runners import EpochRunner, StepRunner, loader_length
from kerasish.schedulers import INTERVALS

VERBOSITY = {0: "silent", 1: "bars and a line per epoch", 2: "a line per epoch, no bars"}


def check_model_args(net: Any, loss_fn: Any, optimizer: Any, lr_scheduler: Any, scheduler_interval: Any) -> None:
    """The positional arguments of ``KerasModel`` and its ``scheduler_interval``."""
    not_a_class(net, "net", "{cls}(...)")
    not_a_class(loss_fn, "loss_fn", "{cls}()")
    not_a_class(optimizer, "optimizer", "{cls}(net.parameters(), lr=...)")
    not_a_class(lr_scheduler, "lr_scheduler", "{cls}(optimizer, ...)")
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module; got {type(net).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (preds, labels) -> loss, or None; got {type(loss_fn).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None; got {type(optimizer).__name__}")
    if scheduler_interval is not None and scheduler_interval not in INTERVALS:
        raise ValueError(
            f"scheduler_interval={scheduler_interval!r} is not valid; use 'epoch', 'step', or None (from the scheduler)"
        )
    if lr_scheduler is None:
        return
    if not callable(getattr(lr_scheduler, "step", None)):
        raise TypeError(f"lr_scheduler must have a step() method; got {type(lr_scheduler).__name__}")
    if optimizer is None or getattr(lr_scheduler, "optimizer", optimizer) is not optimizer:
        raise ValueError("lr_scheduler must be built over the optimizer passed as optimizer=")
    if scheduler_interval == "step" and isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ValueError("ReduceLROnPlateau needs an epoch's monitored value; use scheduler_interval='epoch'")


def check_optimizer_params(optimizer: torch.optim.Optimizer | None, net: nn.Module) -> None:
    """The optimizer must update some of the net's parameters, and some of those must be trainable.

    An optimizer built over another module (a copy of the net, a net built twice) would train nothing, silently.
    """
    if optimizer is None:
        return
    own = {id(param) for param in net.parameters()}
    given = [param for group in optimizer.param_groups for param in group["params"]]
    mine = [param for param in given if id(param) in own]
    if not mine:
        raise ValueError(
            f"optimizer updates none of net's parameters: its {len(given)} parameter tensors belong to another module "
            "(built over a copy of the net, or over a net built twice?); build it over net.parameters()"
        )
    if not any(param.requires_grad for param in mine):
        raise ValueError(
            f"every one of net's parameters that the optimizer updates ({len(mine)} tensors) is frozen "
            "(requires_grad=False), so nothing would train; unfreeze some, or build the optimizer over the "
            "trainable ones: [p for p in net.parameters() if p.requires_grad]"
        )


def check_step_controls(accumulate_grad_batches: Any, clip_grad_norm: Any, clip_grad_value: Any) -> None:
    """Gradient accumulation and clipping settings."""
    integer(accumulate_grad_batches, "accumulate_grad_batches", minimum=1, hint="1: a step per batch")
    for name, value in (("clip_grad_norm", clip_grad_norm), ("clip_grad_value", clip_grad_value)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0):
            raise ValueError(f"{name}={value!r} is not valid; use a number > 0, or None for no clipping")


def check_compile(compile: Any) -> dict[str, Any] | None:
    """``compile=False/True/{torch.compile kwargs}`` as the kwargs to compile with, or ``None`` for no compile."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return {}
    if isinstance(compile, Mapping) and all(isinstance(key, str) for key in compile):
        return dict(compile)
    raise TypeError(f"compile={compile!r} is not valid; use False, True, or a dict of torch.compile arguments")


def check_verbose(verbose: Any) -> None:
    if isinstance(verbose, bool) or verbose not in VERBOSITY:
        choices = "; ".join(f"{level} ({meaning})" for level, meaning in VERBOSITY.items())
        raise ValueError(f"verbose={verbose!r} is not valid; use {choices}")


def check_fit_args(
    model: Any, train_data: Any, val_data: Any, *, epochs: Any, monitor: Monitor, verbose: Any
) -> tuple[list[str], Monitor]:
    """Raises on any bad argument of ``fit``; returns the history's columns and ``monitor`` with its mode known."""
    integer(epochs, "epochs", minimum=1)
    check_verbose(verbose)
    check_loader(train_data, "train_data")
    if val_data is not None:
        check_loader(val_data, "val_data")
    columns = history_columns(model.metrics_dict, has_val=val_data is not None)
    name = monitor.name
    if name not in columns:
        if val_data is None and name in history_columns(model.metrics_dict, has_val=True):
            raise ValueError(f"monitor={name!r} needs val_data, but val_data is None; monitor a train_* column instead")
        raise ValueError(f"monitor={name!r} is not a history column; available: {', '.join(columns)}")
    monitor = monitor.resolved(model.metrics_dict, owner="fit")
    scheduler = model.lr_scheduler
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and scheduler.mode != monitor.mode:
        raise ValueError(
            f"lr_scheduler is ReduceLROnPlateau(mode={scheduler.mode!r}) but fit has mode={monitor.mode!r} for "
            f"monitor={name!r}; make them agree"
        )
    return columns, monitor


def check_pad_value(pad_value: Any) -> None:
    """``predict``'s ``pad_value``: a real number (``nan`` included), not a bool."""
    if isinstance(pad_value, bool) or not isinstance(pad_value, numbers.Real):
        raise TypeError(f"pad_value={pad_value!r} is not valid; use a number such as -100, 0 or float('nan')")


def check_callbacks(callbacks: Any) -> None:
    """``fit``'s ``callbacks``: a list (or other sequence) of callbacks, not one callback."""
    if callbacks is None or (isinstance(callbacks, Iterable) and not isinstance(callbacks, (str, Mapping))):
        return
    raise TypeError(
        f"callbacks must be a list of kerasish.Callback instances; got {type(callbacks).__name__}: "
        f"pass callbacks=[{type(callbacks).__name__}(...)]"
    )


def check_runner_classes(step_runner: Any, epoch_runner: Any) -> None:
    """``KerasModel.StepRunner`` / ``.EpochRunner``: kerasish's runners or subclasses of them.

    A torchkeras ``StepRunner`` (built as ``StepRunner(net, loss_fn, accelerator, stage, metrics_dict, ...)``,
    returning ``(step_losses, step_metrics)``) cannot stand in for one: say what to override instead.
    """
    for name, given, base in (("StepRunner", step_runner, StepRunner), ("EpochRunner", epoch_runner, EpochRunner)):
        if not (isinstance(given, type) and issubclass(given, base)):
            raise TypeError(
                f"KerasModel.{name} must be kerasish.{name} or a subclass of it; got {given!r}. To change a step, "
                "subclass kerasish.StepRunner and override compute_loss(batch) -> (loss, preds, labels) (a "
                "torchkeras StepRunner's __call__ does the same work with another contract)"
            )


def check_loader(data: Any, argument: str) -> None:
    """``data`` must be an iterable of batches, and not one known to be empty."""
    if data is None or not isinstance(data, Iterable) or isinstance(data, (torch.Tensor, str, Mapping)):
        raise TypeError(f"{argument} must be an iterable of batches such as a DataLoader; got {type(data).__name__}")
    # A loader without length (an IterableDataset's) that turns out empty is caught after its pass.
    if loader_length(data) == 0:
        raise ValueError(f"{argument} is empty: it has 0 batches (check the dataset size, batch_size and drop_last)")


def default_optimizer(net: nn.Module) -> torch.optim.Optimizer:
    """``Adam(lr=1e-3)`` over the net's trainable parameters, for ``fit`` without an optimizer."""
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            f"optimizer=None, so fit builds Adam over the net's parameters, but {type(net).__name__} has no trainable "
            "parameters; pass optimizer=... or give the net parameters"
        )
    return torch.optim.Adam(params, lr=1e-3)
