"""The hook class every callback derives from, and the list that calls them in order."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kerasish.checks import not_a_class
from kerasish.migration import check_hooks

if TYPE_CHECKING:
    from kerasish.model import KerasModel

Logs = dict[str, Any]

HOOKS = (
    "on_fit_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_val_batch_begin",
    "on_val_batch_end",
    "on_epoch_end",
    "on_fit_end",
    "on_predict_begin",
    "on_predict_batch_begin",
    "on_predict_batch_end",
    "on_predict_end",
)


class Callback:
    """Hooks into ``fit``; every hook does nothing until a subclass overrides it.

    Each hook receives the :class:`~kerasish.KerasModel` and a dict of logs. In one fit they run in this order::

        on_fit_begin          logs: {}
        per epoch:
          on_epoch_begin      logs: {"epoch": 1-based epoch}
          per train batch:
            on_train_batch_begin / on_train_batch_end   logs: {"epoch", "batch": 0-based index}
                                                        (end adds "loss": the batch's detached loss tensor and "size")
          per val batch:
            on_val_batch_begin / on_val_batch_end       same keys
          on_epoch_end        logs: the epoch's history row (epoch, train_*, val_*, lr, time)
        on_fit_end            logs: the last finished epoch's row ({} if none finished); runs however fit ends

    and in ``predict(data, callbacks=[...])``::

        on_predict_begin                                logs: {}
        per batch:
          on_predict_batch_begin / on_predict_batch_end logs: {"batch": 0-based index}
                                                        (end adds "outputs": the batch's predictions, on the device)
        on_predict_end                                  logs: {"batches": how many}; runs however predict ends

    Batch hooks that no callback overrides cost nothing per step. Reading ``logs["loss"]`` as a number (``.item()``)
    waits for the device, so a callback that does it each batch slows training on a GPU.

    Set ``model.stop_training = True`` to end the fit after the current epoch; set in a train batch hook, it also ends
    the train pass after that batch (the val pass and ``on_epoch_end`` still run, so the epoch gets its row).

    Data-parallel (``torchrun``), every rank runs every hook; the epoch hooks get the same logs on every rank (reduced
    across ranks), the batch hooks each rank's own batches. A stop set on any rank ends the fit on all of them after
    the current epoch (the train pass then runs to its end: a rank leaving it early would leave the others waiting).
    Write files and print only where ``model.is_main_process`` (rank 0), as the built-in callbacks do;
    ``model.rank`` and ``model.world_size`` say where a callback runs.

    Callbacks with per-run state reset it in :meth:`on_fit_begin`, so one instance can serve several fits, and save
    and load it with :meth:`state_dict` / :meth:`load_state_dict`, so a resumed fit carries on where it stopped.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from kerasish import Callback, KerasModel
        >>> class PrintAndStop(Callback):
        ...     def on_epoch_end(self, model, logs):
        ...         print(f"epoch {logs['epoch']}: train_loss={logs['train_loss']:.3f}")
        ...         if logs["train_loss"] < 0.3:
        ...             model.stop_training = True  # the fit ends after this epoch
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(32, 2)
        >>> net = nn.Linear(2, 1)
        >>> model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.1), device="cpu")
        >>> history = model.fit([(x, x.sum(1, keepdim=True))], epochs=10, callbacks=[PrintAndStop()], verbose=0)
        epoch 1: train_loss=2.544
        epoch 2: train_loss=1.147
        epoch 3: train_loss=0.520
        epoch 4: train_loss=0.237
        >>> len(history)
        4
    """

    def on_fit_begin(self, model: KerasModel, logs: Logs) -> None:
        """Before the first epoch."""

    def on_fit_end(self, model: KerasModel, logs: Logs) -> None:
        """After the last epoch, also when fit ends early, on Ctrl-C or on an exception."""

    def on_epoch_begin(self, model: KerasModel, logs: Logs) -> None:
        """Before an epoch's train pass."""

    def on_epoch_end(self, model: KerasModel, logs: Logs) -> None:
        """After an epoch's train and val passes, with its history row."""

    def on_train_batch_begin(self, model: KerasModel, logs: Logs) -> None:
        """Before a training step."""

    def on_train_batch_end(self, model: KerasModel, logs: Logs) -> None:
        """After a training step."""

    def on_val_batch_begin(self, model: KerasModel, logs: Logs) -> None:
        """Before a validation step."""

    def on_val_batch_end(self, model: KerasModel, logs: Logs) -> None:
        """After a validation step."""

    def on_predict_begin(self, model: KerasModel, logs: Logs) -> None:
        """Before the first batch of ``predict``."""

    def on_predict_batch_begin(self, model: KerasModel, logs: Logs) -> None:
        """Before a batch of ``predict``."""

    def on_predict_batch_end(self, model: KerasModel, logs: Logs) -> None:
        """After a batch of ``predict``."""

    def on_predict_end(self, model: KerasModel, logs: Logs) -> None:
        """After ``predict``'s last batch, also when it ends on an exception."""

    def state_dict(self) -> dict[str, Any]:
        """The callback's per-run state (plain values and tensors, so ``torch.save`` with weights-only loading
        can hold it); ``{}`` for a callback without any."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes back what :meth:`state_dict` returned; call it after ``on_fit_begin`` has reset the callback."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state; got a state with keys {sorted(state)}")


class CallbackList:
    """Calls each hook on the callbacks in order; knows which hooks anyone overrides."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            not_a_class(callback, "a callback", "{cls}(...)")
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"callbacks must be kerasish.Callback instances; got {type(callback).__name__}: {callback!r}"
                )
            check_hooks(callback, HOOKS, Callback)
        # Decided once, so a hook nobody overrides costs one falsy check per batch.
        self._overriders = {hook: [cb for cb in self.callbacks if _overrides(cb, hook)] for hook in HOOKS}

    def overrides(self, hook: str) -> bool:
        """Whether any callback overrides ``hook``."""
        return bool(self._overriders[hook])

    def call(self, hook: str, model: KerasModel, logs: Logs) -> None:
        """Runs ``hook`` on every callback that overrides it, in order."""
        for callback in self._overriders[hook]:
            getattr(callback, hook)(model, logs)

    def call_all(self, hook: str, model: KerasModel, logs: Logs) -> None:
        """Like :meth:`call`, but every callback runs even if one raises; the first error is raised at the end.

        For ``on_fit_end``: a user callback that fails must not keep the best weights from being restored.
        """
        first_error: BaseException | None = None
        for callback in self._overriders[hook]:
            try:
                getattr(callback, hook)(model, logs)
            except BaseException as err:  # re-raised below, after the others have run
                first_error = first_error or err
        if first_error is not None:
            raise first_error


def _overrides(callback: Callback, hook: str) -> bool:
    """Whether ``callback`` has its own ``hook``: a method of a subclass, or a function set on the instance."""
    implementation = getattr(callback, hook)
    return getattr(implementation, "__func__", implementation) is not getattr(Callback, hook)
