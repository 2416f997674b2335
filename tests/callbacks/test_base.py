"""Callback and CallbackList: type checks, which hooks are overridden, call order, and call_all's error handling."""

from __future__ import annotations

import pytest

from kerasish.callbacks.base import HOOKS, Callback, CallbackList
from tests.helpers import Recorder


class Named(Callback):
    """Appends ``(name, hook, logs)`` to a shared list on fit end and epoch end."""

    def __init__(self, name: str, calls: list) -> None:
        self.name = name
        self.calls = calls

    def on_epoch_end(self, model, logs):
        self.calls.append((self.name, "on_epoch_end", logs["epoch"]))

    def on_fit_end(self, model, logs):
        self.calls.append((self.name, "on_fit_end", logs.get("epoch")))


class Raises(Callback):
    def __init__(self, error: BaseException, calls: list) -> None:
        self.error = error
        self.calls = calls

    def on_fit_end(self, model, logs):
        self.calls.append(("raises", repr(self.error)))
        raise self.error


class EpochEndOnly(Callback):
    def on_epoch_end(self, model, logs):
        pass


class InheritsEpochEnd(EpochEndOnly):
    def on_val_batch_end(self, model, logs):
        pass


@pytest.mark.parametrize("bad", [object(), "early_stopping", None])
def test_rejects_non_callbacks(bad):
    with pytest.raises(TypeError, match=rf"callbacks must be kerasish.Callback instances; got {type(bad).__name__}"):
        CallbackList([Recorder(), bad])


def test_a_callback_class_instead_of_an_instance_says_to_build_one():
    with pytest.raises(TypeError, match=r"^a callback is the class Recorder, not an instance of it; pass a callback="
                       r"Recorder\(...\)$"):  # fmt: skip
        CallbackList([Recorder])


def test_base_callback_hooks_do_nothing():
    callback = Callback()
    assert all(getattr(callback, hook)(None, {}) is None for hook in HOOKS)


def test_overrides_only_overridden_hooks():
    callbacks = CallbackList([Callback(), EpochEndOnly()])
    assert {hook for hook in HOOKS if callbacks.overrides(hook)} == {"on_epoch_end"}


def test_overrides_sees_inherited_overrides():
    callbacks = CallbackList([InheritsEpochEnd()])
    assert {hook for hook in HOOKS if callbacks.overrides(hook)} == {"on_epoch_end", "on_val_batch_end"}


def test_overrides_every_hook_of_a_recorder():
    callbacks = CallbackList([Recorder()])
    assert all(callbacks.overrides(hook) for hook in HOOKS)


def test_empty_list_overrides_nothing():
    callbacks = CallbackList()
    assert not any(callbacks.overrides(hook) for hook in HOOKS)
    callbacks.call("on_epoch_end", None, {"epoch": 1})  # nothing to run, nothing raised
    callbacks.call_all("on_fit_end", None, {})


def test_call_runs_callbacks_in_order():
    calls: list = []
    recorder = Recorder()
    callbacks = CallbackList([Named("a", calls), Callback(), recorder, Named("b", calls)])
    callbacks.call("on_epoch_end", None, {"epoch": 3})
    callbacks.call("on_fit_end", None, {"epoch": 3})
    assert calls == [("a", "on_epoch_end", 3), ("b", "on_epoch_end", 3), ("a", "on_fit_end", 3), ("b", "on_fit_end", 3)]
    assert recorder.calls == [("on_epoch_end", 3), ("on_fit_end", 3)]


def test_call_passes_model_and_logs():
    seen = []

    class Spy(Callback):
        def on_train_batch_end(self, model, logs):
            seen.append((model, logs))

    model, logs = object(), {"epoch": 1, "batch": 0}
    CallbackList([Spy()]).call("on_train_batch_end", model, logs)
    assert len(seen) == 1
    assert seen[0][0] is model
    assert seen[0][1] is logs


def test_call_stops_at_the_first_error():
    calls: list = []
    callbacks = CallbackList([Raises(ValueError("first"), calls), Named("after", calls)])
    with pytest.raises(ValueError, match="first"):
        callbacks.call("on_fit_end", None, {})
    assert calls == [("raises", "ValueError('first')")]


def test_call_all_runs_every_callback_then_raises_the_first_error():
    calls: list = []
    callbacks = CallbackList(
        [
            Named("a", calls),
            Raises(ValueError("first"), calls),
            Named("b", calls),
            Raises(RuntimeError("second"), calls),
            Named("c", calls),
        ]
    )
    with pytest.raises(ValueError, match=r"^first$"):
        callbacks.call_all("on_fit_end", None, {"epoch": 2})
    assert calls == [
        ("a", "on_fit_end", 2),
        ("raises", "ValueError('first')"),
        ("b", "on_fit_end", 2),
        ("raises", "RuntimeError('second')"),
        ("c", "on_fit_end", 2),
    ]


def test_call_all_runs_every_callback_after_a_keyboard_interrupt():
    calls: list = []
    callbacks = CallbackList([Raises(KeyboardInterrupt("Ctrl-C"), calls), Named("restore", calls)])
    with pytest.raises(KeyboardInterrupt, match="Ctrl-C"):
        callbacks.call_all("on_fit_end", None, {})
    assert calls == [("raises", "KeyboardInterrupt('Ctrl-C')"), ("restore", "on_fit_end", None)]


def test_call_all_without_errors_returns_none():
    calls: list = []
    assert CallbackList([Named("a", calls), Named("b", calls)]).call_all("on_fit_end", None, {"epoch": 1}) is None
    assert calls == [("a", "on_fit_end", 1), ("b", "on_fit_end", 1)]
