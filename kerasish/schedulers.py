"""When a learning-rate scheduler steps: once per epoch, or once per optimizer step.

``KerasModel(scheduler_interval=None)`` (the default) takes the interval from the scheduler: the schedules that are
defined in optimizer steps step per step, every other scheduler once per epoch, after validation. Per step:

- torch's ``OneCycleLR`` (its ``total_steps`` counts optimizer steps) and ``CyclicLR`` (``step_size_up`` is in
  iterations);
- Hugging Face's ``get_*_schedule_with_warmup`` / ``get_scheduler`` schedules (a ``LambdaLR`` whose function comes
  from ``transformers.optimization``; their ``num_warmup_steps`` and ``num_training_steps`` count steps).

Any other scheduler written in steps (a ``LambdaLR`` warm-up of your own) needs ``scheduler_interval="step"``:
stepped per epoch, a warm-up from 0 would train the whole first epoch at learning rate 0, and :func:`check_first_lr`
warns when a fit is about to do that.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import torch
from torch.optim import lr_scheduler as schedulers

from kerasish.checks import user_stacklevel

INTERVALS = ("epoch", "step")
PER_STEP = (schedulers.OneCycleLR, schedulers.CyclicLR)


def interval_for(lr_scheduler: Any, interval: str | None) -> str:
    """``interval`` when given, else ``"step"`` for the per-step schedules named above and ``"epoch"`` otherwise.

    Example:
        >>> from torch import nn
        >>> optimizer = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
        >>> one_cycle = schedulers.OneCycleLR(optimizer, max_lr=0.1, total_steps=100)
        >>> interval_for(one_cycle, None), interval_for(one_cycle, "epoch"), interval_for(None, None)
        ('step', 'epoch', 'epoch')
    """
    if interval is not None:
        return interval
    return "step" if isinstance(lr_scheduler, PER_STEP) or _is_transformers_schedule(lr_scheduler) else "epoch"


def _is_transformers_schedule(lr_scheduler: Any) -> bool:
    functions = getattr(lr_scheduler, "lr_lambdas", None) if isinstance(lr_scheduler, schedulers.LambdaLR) else None
    for function in functions or ():
        function = function.func if isinstance(function, functools.partial) else function
        if getattr(function, "__module__", "").startswith("transformers."):
            return True
    return False


def check_step_budget(lr_scheduler: Any, *, epochs: int, steps_per_epoch: int | None, resume: bool) -> None:
    """Raises before training when a ``OneCycleLR`` stepped per step would run out of steps within ``epochs``.

    torch raises only when the step past ``total_steps`` is taken, which can be hours into a run. With a loader of
    unknown length (``steps_per_epoch=None``) nothing is checked. Resuming, the whole run is counted against
    ``total_steps``, as the uninterrupted run would have taken it.
    """
    if not isinstance(lr_scheduler, schedulers.OneCycleLR) or steps_per_epoch is None:
        return
    needed = epochs * steps_per_epoch
    left = lr_scheduler.total_steps - (0 if resume else lr_scheduler.last_epoch)
    if needed > left:
        raise ValueError(
            f"lr_scheduler is OneCycleLR(total_steps={lr_scheduler.total_steps}) with {left} steps left, but "
            f"fit(epochs={epochs}) takes up to {epochs} x {steps_per_epoch} = {needed} optimizer steps, and torch "
            f"fails at step {left + 1}; build it with total_steps={needed} (or epochs={epochs}, "
            f"steps_per_epoch={steps_per_epoch})"
        )


def optimizer_steps_per_epoch(batches: int | None, accumulate_grad_batches: int) -> int | None:
    """Optimizer steps in a pass of ``batches`` batches: a short last window is stepped too."""
    return None if batches is None else math.ceil(batches / accumulate_grad_batches)


def check_first_lr(optimizer: torch.optim.Optimizer, lr_scheduler: Any, interval: str) -> None:
    """Warns when a per-epoch scheduler leaves the first epoch at learning rate 0 (a warm-up written in steps)."""
    if lr_scheduler is None or interval != "epoch":
        return
    if any(float(group["lr"]) == 0.0 for group in optimizer.param_groups):
        warnings.warn(
            f"lr_scheduler {type(lr_scheduler).__name__} steps once per epoch, and the learning rate is 0 now, so the "
            "whole first epoch trains nothing; a warm-up written in optimizer steps needs "
            "KerasModel(..., scheduler_interval='step')",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def check_schedule(model: Any, batches: int | None, *, epochs: int, resume: bool) -> None:
    """The checks before a fit of ``model`` (a ``KerasModel``) over ``batches`` train batches per epoch."""
    per_step = model.lr_scheduler if model.scheduler_interval == "step" else None
    steps = optimizer_steps_per_epoch(batches, model.accumulate_grad_batches)
    check_step_budget(per_step, epochs=epochs, steps_per_epoch=steps, resume=resume)
    check_first_lr(model.optimizer, model.lr_scheduler, model.scheduler_interval)


def step_per_epoch(model: Any, monitored: float) -> None:
    """The epoch's scheduler step, after validation, when the model's scheduler steps per epoch.

    ``ReduceLROnPlateau`` gets the monitored value.
    """
    scheduler = model.lr_scheduler
    if scheduler is None or model.scheduler_interval != "epoch":
        return
    if isinstance(scheduler, schedulers.ReduceLROnPlateau):
        scheduler.step(monitored)
    else:
        scheduler.step()
