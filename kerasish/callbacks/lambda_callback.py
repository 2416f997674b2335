"""A callback made of plain functions, one per hook, for hooks too small to deserve a class."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

from kerasish.callbacks.base import HOOKS, Callback, Logs

if TYPE_CHECKING:
    from kerasish.model import KerasModel

HookFunction = Callable[["KerasModel", Logs], None]


class LambdaCallback(Callback):
    """Runs the functions it is given, each at the hook it is named after.

    Each function is called as ``fn(model, logs)``, with the same arguments a subclass's method gets (see
    :class:`~kerasish.Callback` for what ``logs`` holds at each hook). Only the hooks given count as overridden, so a
    ``LambdaCallback`` with just ``on_epoch_end`` adds nothing to a training step.

    Args:
        **hooks: ``hook_name=fn`` for any of ``on_fit_begin``, ``on_epoch_begin``, ``on_train_batch_begin``,
            ``on_train_batch_end``, ``on_val_batch_begin``, ``on_val_batch_end``, ``on_epoch_end``, ``on_fit_end``,
            ``on_predict_begin``, ``on_predict_batch_begin``, ``on_predict_batch_end``, ``on_predict_end``.

    Raises:
        TypeError: an unknown hook name, or a value that is not a function of ``(model, logs)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from kerasish import KerasModel, LambdaCallback
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(32, 2)
        >>> net = nn.Linear(2, 1)
        >>> model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.1), device="cpu")
        >>> show = LambdaCallback(
        ...     on_epoch_end=lambda model, logs: print(f"epoch {logs['epoch']}: train_loss={logs['train_loss']:.3f}"),
        ...     on_fit_end=lambda model, logs: print(f"done: {len(model.history)} epochs"),
        ... )
        >>> _ = model.fit([(x, x.sum(1, keepdim=True))], epochs=3, callbacks=[show], verbose=0)
        epoch 1: train_loss=2.544
        epoch 2: train_loss=1.147
        epoch 3: train_loss=0.520
        done: 3 epochs
    """

    def __init__(self, **hooks: HookFunction) -> None:
        unknown = sorted(set(hooks) - set(HOOKS))
        if unknown:
            raise TypeError(f"LambdaCallback got unknown hook names {unknown}; valid names: {', '.join(HOOKS)}")
        for name, fn in hooks.items():
            _check_hook_function(name, fn)
            # An instance attribute, not a method: CallbackList counts exactly these hooks as overridden.
            setattr(self, name, fn)
        self.hooks = dict(hooks)

    def __repr__(self) -> str:
        return f"LambdaCallback({', '.join(f'{name}={fn!r}' for name, fn in self.hooks.items())})"


def _check_hook_function(name: str, fn: object) -> None:
    if not callable(fn):
        raise TypeError(f"LambdaCallback: {name}={fn!r} is not callable; give a function fn(model, logs)")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature to check; they get called as they are
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise TypeError(
            f"LambdaCallback: {name}={fn!r} takes {signature}; a hook is called as fn(model, logs)"
        ) from None
