"""What a user coming from torchkeras, Keras or Lightning types: accepted where free, else an error saying the way."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from kerasish import Callback, EarlyStopping, KerasModel, StepRunner
from tests.helpers import regression_batches


def linear_model(**kwargs) -> KerasModel:
    net = nn.Linear(3, 1)
    kwargs.setdefault("optimizer", torch.optim.SGD(net.parameters(), lr=0.05))
    return KerasModel(net, nn.MSELoss(), device="cpu", **kwargs)


DATA = regression_batches(n=12, batch_size=4)


# --- accepted spellings ---------------------------------------------------------------------------------------------


def test_quiet_true_is_verbose_0_in_fit_and_evaluate(capsys):
    model = linear_model()
    history = model.fit(DATA, DATA, epochs=2, quiet=True)
    evaluated = model.evaluate(DATA, verbose=1, quiet=True)
    assert capsys.readouterr() == ("", "")
    assert len(history) == 2 and set(evaluated) == {"val_loss"}
    model.fit(DATA, DATA, epochs=1, verbose=2, quiet=False)
    assert "epoch 1/1" in capsys.readouterr().out


def test_quiet_must_be_a_bool():
    with pytest.raises(TypeError, match=r"^quiet='yes' is not valid; use True \(print nothing, as verbose=0\)"):
        linear_model().fit(DATA, epochs=1, quiet="yes")


def test_load_ckpt_without_a_path_loads_the_latest_fits_best_checkpoint(tmp_path):
    model = linear_model()
    model.fit(DATA, DATA, epochs=4, ckpt_path=tmp_path / "e{epoch}.pt", restore_best_weights=False, verbose=0)
    best_epoch = int(model.history["val_loss"].idxmin()) + 1
    expected = torch.load(tmp_path / f"e{best_epoch}.pt", weights_only=True)
    with torch.no_grad():
        model.net.weight.fill_(7.0)
    model.load_ckpt()
    assert torch.equal(model.net.weight, expected["weight"])


def test_load_ckpt_without_a_path_after_a_fit_without_ckpt_path_is_an_error():
    model = linear_model()
    model.fit(DATA, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"^load_ckpt\(\) without a path .* but that fit had no ckpt_path; pass"):
        model.load_ckpt()


def test_summary_takes_an_input_shape():
    net = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))
    model = KerasModel(net, device="cpu")
    by_shape = model.summary(input_shape=(64,), print_fn=None)
    by_example = model.summary(torch.zeros(1, 64), print_fn=None)
    assert str(by_shape) == str(by_example) and by_shape.total_params == 538


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, TypeError, r"^summary needs an example of what the net takes"),
        ({"example": torch.zeros(1, 4), "input_shape": (4,)}, TypeError, r"^summary needs an example"),
        ({"input_shape": (0, 3)}, ValueError, r"^input_shape=\(0, 3\) is not valid; use one sample's shape"),
        ({"input_shape": 4}, ValueError, r"^input_shape=4 is not valid"),
    ],
)
def test_summary_needs_one_example_or_a_valid_shape(kwargs, error, match):
    with pytest.raises(error, match=match):
        KerasModel(nn.Linear(4, 1), device="cpu").summary(print_fn=None, **kwargs)


# --- spellings that mean something kerasish does elsewhere: the error says where ----------------------------------


@pytest.mark.parametrize(
    ("kwargs", "hint"),
    [
        ({"mixed_precision": "fp16"}, "KerasModel(..., precision='bf16') or precision='fp16'"),
        ({"cpu": True}, "KerasModel(..., device='cpu')"),
        ({"gradient_accumulation_steps": 4}, "KerasModel(..., accumulate_grad_batches=N)"),
        ({"wandb": True}, "kerasish has no Weights & Biases callback"),
        ({"validation_data": DATA}, "val data is fit's second argument"),
        ({"batch_size": 32}, "set batch_size on the DataLoader"),
    ],
)
def test_another_librarys_fit_argument_says_the_kerasish_way(kwargs, hint):
    (name, value), = kwargs.items()  # fmt: skip
    model = linear_model()
    before = model.net.weight.detach().clone()
    with pytest.raises(TypeError, match=rf"^fit\(\) takes no argument {name}={re.escape(repr(value))}: "):
        model.fit(DATA, epochs=1, verbose=0, **kwargs)
    with pytest.raises(TypeError, match=re.escape(hint)):
        model.fit(DATA, epochs=1, verbose=0, **kwargs)
    assert torch.equal(model.net.weight, before)


def test_evaluate_and_predict_answer_keras_arguments():
    model = linear_model()
    with pytest.raises(TypeError, match=r"^evaluate\(\) takes no argument return_dict=True: evaluate always returns"):
        model.evaluate(DATA, return_dict=True)
    with pytest.raises(TypeError, match=r"^predict\(\) takes no argument batch_size=8: kerasish predicts iterables"):
        model.predict(DATA, batch_size=8)


def test_torchkeras_positional_fit_arguments_are_named_in_its_order():
    with pytest.raises(
        TypeError,
        match=re.escape(
            "fit() takes train_data, val_data, epochs by position and the rest by name; got 7 positional. In "
            "torchkeras's order these are: fit(train_data, val_data, epochs, ckpt_path='checkpoint', patience=3, "
            "monitor='val_loss', mode='min')"
        ),
    ):
        linear_model().fit(DATA, DATA, 5, "checkpoint", 3, "val_loss", "min")


class TorchkerasStyleCallback(Callback):
    def on_fit_start(self, model):
        pass


class TorchkerasSignature(Callback):
    def on_fit_end(self, model):
        pass


class Misspelled(Callback):
    def __init__(self) -> None:
        self.calls = 0

    def on_epoch_ends(self, model, logs):
        self.calls += 1


def test_another_librarys_hook_name_is_an_error_naming_the_kerasish_hook():
    model = linear_model()
    with pytest.raises(
        TypeError,
        match=r"^TorchkerasStyleCallback.on_fit_start is another library's hook, which kerasish never calls; "
        r"kerasish runs on_fit_begin\(self, model, logs\) at that point: rename it$",
    ):
        model.fit(DATA, epochs=1, verbose=0, callbacks=[TorchkerasStyleCallback()])


def test_a_hook_that_cannot_take_model_and_logs_is_an_error_before_any_step():
    model = linear_model()
    before = model.net.weight.detach().clone()
    with pytest.raises(
        TypeError, match=r"^TorchkerasSignature.on_fit_end must take \(model, logs\), .*; its signature is on_fit_end"
    ):
        model.fit(DATA, epochs=1, verbose=0, callbacks=[TorchkerasSignature()])
    assert torch.equal(model.net.weight, before)


def test_a_misspelled_hook_is_warned_about_with_the_nearest_hook():
    misspelled = Misspelled()
    with pytest.warns(UserWarning, match=r"^Misspelled.on_epoch_ends is not a kerasish hook, so it never runs; did you "
                      r"mean on_epoch_end\?$") as caught:  # fmt: skip
        linear_model().fit(DATA, epochs=2, verbose=0, callbacks=[misspelled])
    assert misspelled.calls == 0
    assert caught[0].filename == __file__  # points at the user's fit call


def test_one_callback_instead_of_a_list_says_how_to_pass_it():
    with pytest.raises(
        TypeError,
        match=r"^callbacks must be a list of kerasish.Callback instances; got EarlyStopping: pass "
        r"callbacks=\[EarlyStopping\(...\)\]$",
    ):
        linear_model().fit(DATA, DATA, epochs=1, callbacks=EarlyStopping(patience=1))


def test_a_torchkeras_step_runner_is_refused_with_what_to_override():
    class TorchkerasStep:
        def __init__(self, net, loss_fn, accelerator=None, stage="train", metrics_dict=None, optimizer=None):
            self.net = net

        def __call__(self, batch):
            return {}, {}

    class Model(KerasModel):
        StepRunner = TorchkerasStep

    model = Model(nn.Linear(3, 1), nn.MSELoss(), device="cpu")
    with pytest.raises(TypeError, match=r"^KerasModel.StepRunner must be kerasish.StepRunner or a subclass of it; .*"
                       r"override compute_loss\(batch\) -> \(loss, preds, labels\)"):  # fmt: skip
        model.fit(DATA, epochs=1, verbose=0)
    assert issubclass(KerasModel.StepRunner, StepRunner)  # the class attribute itself is untouched


def test_nn_module_attributes_point_to_model_net():
    model = linear_model()
    with pytest.raises(AttributeError, match=r"^KerasModel has no attribute 'parameters': it is not an nn.Module but "
                       r"holds one, model.net \(model.net.parameters\)$"):  # fmt: skip
        model.parameters()
    with pytest.raises(AttributeError, match=r"^'KerasModel' object has no attribute 'nonsense'$"):
        _ = model.nonsense
    assert not hasattr(model, "state_dict")
    assert copy.copy(model).net is model.net  # copying still works through the attribute hook


def test_the_summary_function_takes_an_input_shape_too():
    from kerasish import summary

    net = nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))
    assert str(summary(net, input_shape=[64])) == str(summary(net, torch.zeros(1, 64)))
