"""LambdaCallback: only the given hooks count as overridden; the functions run in a real fit and in predict."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from kerasish import KerasModel
from kerasish.callbacks.base import HOOKS, Callback, CallbackList
from kerasish.callbacks.lambda_callback import LambdaCallback
from tests.helpers import regression_batches


def small_model() -> KerasModel:
    net = nn.Linear(3, 1)
    return KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.05), device="cpu")


def ignore(model, logs):
    pass


def overridden(*callbacks: Callback) -> set[str]:
    callbacks = CallbackList(callbacks)
    return {hook for hook in HOOKS if callbacks.overrides(hook)}


@pytest.mark.parametrize("hook", HOOKS)
def test_only_the_given_hook_is_overridden(hook):
    assert overridden(LambdaCallback(**{hook: ignore})) == {hook}


def test_several_hooks_and_none():
    assert overridden(LambdaCallback(on_fit_begin=ignore, on_val_batch_end=ignore)) == {
        "on_fit_begin",
        "on_val_batch_end",
    }
    assert overridden(LambdaCallback()) == set()


def test_instances_do_not_share_hooks():
    LambdaCallback(on_epoch_end=ignore)
    assert overridden(LambdaCallback(on_fit_end=ignore)) == {"on_fit_end"}
    assert LambdaCallback.on_epoch_end is Callback.on_epoch_end


def test_functions_run_in_a_real_fit_with_the_model_and_logs():
    seen = []
    batch_ends = []
    model = small_model()
    callback = LambdaCallback(
        on_epoch_end=lambda m, logs: seen.append((m is model, logs["epoch"], logs["train_loss"], logs["val_loss"])),
        on_train_batch_end=lambda m, logs: batch_ends.append((logs["epoch"], logs["batch"], logs["size"])),
    )
    batches = regression_batches(n=10)  # sizes 4, 4, 2
    history = model.fit(batches, batches, epochs=2, callbacks=[callback], verbose=0)
    assert seen == [(True, row.epoch, row.train_loss, row.val_loss) for row in history.itertuples()]
    assert batch_ends == [(e, b, s) for e in (1, 2) for b, s in enumerate([4, 4, 2])]


def test_an_epoch_end_function_can_stop_the_fit():
    def stop_at_2(model, logs):
        if logs["epoch"] == 2:
            model.stop_training = True

    history = small_model().fit(
        regression_batches(), epochs=5, callbacks=[LambdaCallback(on_epoch_end=stop_at_2)], verbose=0
    )
    assert history["epoch"].tolist() == [1, 2]


def test_predict_hooks_run_in_predict():
    calls = []
    callback = LambdaCallback(
        on_predict_batch_end=lambda m, logs: calls.append((logs["batch"], tuple(logs["outputs"].shape))),
        on_predict_end=lambda m, logs: calls.append(("end", logs["batches"])),
    )
    small_model().predict([torch.randn(4, 3), torch.randn(2, 3)], callbacks=[callback])
    assert calls == [(0, (4, 1)), (1, (2, 1)), ("end", 2)]


def test_unknown_hook_names_raise_listing_the_valid_ones():
    message = re.escape(
        "LambdaCallback got unknown hook names ['on_batch_end', 'on_epoch_ends']; valid names: " + ", ".join(HOOKS)
    )
    with pytest.raises(TypeError, match=message):
        LambdaCallback(on_epoch_ends=ignore, on_batch_end=ignore, on_fit_end=ignore)


@pytest.mark.parametrize("value", [None, 3, "print"])
def test_non_callable_raises(value):
    message = re.escape(f"LambdaCallback: on_epoch_end={value!r} is not callable; give a function fn(model, logs)")
    with pytest.raises(TypeError, match=message):
        LambdaCallback(on_epoch_end=value)


def test_function_of_the_wrong_arity_raises():
    def one(logs):
        pass

    with pytest.raises(TypeError, match=r"on_epoch_end=<function .*one.*> takes \(logs\); a hook is called as fn"):
        LambdaCallback(on_epoch_end=one)


def test_repr_lists_the_hooks():
    assert repr(LambdaCallback(on_fit_end=ignore)) == f"LambdaCallback(on_fit_end={ignore!r})"
