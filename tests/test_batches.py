"""The batch conventions: inputs and labels out of a batch, preds and loss out of a net's output, the batch size."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kerasish import KerasModel
from kerasish.batches import batch_size, loss_of, preds_of, split_batch

X = torch.zeros(4, 3)
X2 = torch.ones(4, 2)
Y = torch.arange(4)


def same_objects(got: tuple, expected: tuple) -> bool:
    return len(got) == len(expected) and all(a is b for a, b in zip(got, expected, strict=True))


def test_split_tensor_is_inputs_only():
    args, kwargs, labels = split_batch(X)
    assert same_objects(args, (X,))
    assert (kwargs, labels) == ({}, None)


@pytest.mark.parametrize("container", [tuple, list])
def test_split_one_element_is_inputs_only(container):
    args, kwargs, labels = split_batch(container([X]))
    assert same_objects(args, (X,))
    assert (kwargs, labels) == ({}, None)


@pytest.mark.parametrize("container", [tuple, list])
def test_split_pair_is_inputs_and_labels(container):
    args, kwargs, labels = split_batch(container([X, Y]))
    assert same_objects(args, (X,))
    assert kwargs == {}
    assert labels is Y


@pytest.mark.parametrize("container", [tuple, list])
def test_split_last_of_many_is_the_labels(container):
    args, kwargs, labels = split_batch(container([X, X2, Y]))
    assert type(args) is tuple
    assert same_objects(args, (X, X2))
    assert kwargs == {}
    assert labels is Y


def test_split_mapping_with_labels_pops_them():
    batch = {"input_ids": X, "mask": X2, "labels": Y}
    args, kwargs, labels = split_batch(batch)
    assert args == ()
    assert list(kwargs) == ["input_ids", "mask"]
    assert kwargs["input_ids"] is X
    assert labels is Y
    assert list(batch) == ["input_ids", "mask", "labels"]  # the caller's batch is untouched


def test_split_mapping_keep_mapping_labels_leaves_them_in_kwargs():
    batch = {"input_ids": X, "labels": Y}
    args, kwargs, labels = split_batch(batch, keep_mapping_labels=True)
    assert args == ()
    assert list(kwargs) == ["input_ids", "labels"]
    assert kwargs["labels"] is Y
    assert labels is Y


@pytest.mark.parametrize("keep", [False, True])
def test_split_mapping_without_labels(keep):
    args, kwargs, labels = split_batch({"input_ids": X}, keep_mapping_labels=keep)
    assert args == ()
    assert list(kwargs) == ["input_ids"]
    assert labels is None


@pytest.mark.parametrize("empty", [(), []])
def test_split_empty_batch_raises(empty):
    with pytest.raises(ValueError, match=r"a batch is an empty tuple; expected \(x, y\), \(x1, ..., xk, y\) or \(x,\)"):
        split_batch(empty)


def test_preds_of_tensor_is_the_tensor():
    assert preds_of(X) is X


def test_preds_of_mapping_with_logits():
    assert preds_of({"loss": torch.tensor(1.0), "logits": X}) is X


def test_preds_of_mapping_with_none_logits_is_the_mapping():
    output = {"loss": torch.tensor(1.0), "logits": None}
    assert preds_of(output) is output


def test_preds_of_mapping_without_logits_is_the_mapping():
    output = {"embeddings": X}
    assert preds_of(output) is output


def test_preds_of_object_with_logits_attribute():
    assert preds_of(SimpleNamespace(loss=None, logits=X)) is X


def test_preds_of_object_with_none_logits_is_the_object():
    output = SimpleNamespace(logits=None)
    assert preds_of(output) is output


def test_preds_of_tuple_is_the_tuple():
    output = (X, X2)
    assert preds_of(output) is output


def test_loss_of_mapping():
    loss = torch.tensor(0.25)
    assert loss_of({"loss": loss, "logits": X}) is loss


def test_loss_of_attribute():
    loss = torch.tensor(0.25)
    assert loss_of(SimpleNamespace(loss=loss, logits=X)) is loss


@pytest.mark.parametrize(
    ("output", "type_name"),
    [
        ({"logits": X}, "dict"),
        ({"loss": None}, "dict"),
        (SimpleNamespace(logits=X), "SimpleNamespace"),
        (X, "Tensor"),
    ],
)
def test_loss_of_missing_loss_raises(output, type_name):
    with pytest.raises(TypeError, match=rf"loss_fn is None, .* got an output of type {type_name}\. Pass loss_fn="):
        loss_of(output)


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        (torch.zeros(5, 3), 5),
        ((torch.zeros(6, 3), torch.zeros(6)), 6),
        ([torch.zeros(7, 3), torch.zeros(7)], 7),
        ({"input_ids": torch.zeros(8, 4), "labels": torch.zeros(8)}, 8),
        ((torch.tensor(3.0), torch.zeros(9, 2)), 9),  # a 0-d tensor has no batch dimension
        (({"ids": [1, 2], "x": {"deep": torch.zeros(10, 1)}}, torch.zeros(99)), 10),  # depth first
        (("text", None, 3, [torch.zeros(11)]), 11),
        (torch.zeros(0, 3), 0),
    ],
)
def test_batch_size_is_the_first_leading_size(batch, expected):
    assert batch_size(batch) == expected


@pytest.mark.parametrize(
    ("batch", "type_name"),
    [
        (torch.tensor(1.0), "Tensor"),
        ((torch.tensor(1.0), [1, 2, 3]), "tuple"),
        ({"text": "hello", "n": 3}, "dict"),
        ([], "list"),
        ("text", "str"),
    ],
)
def test_batch_size_without_a_batch_dimension_raises(batch, type_name):
    with pytest.raises(
        TypeError, match=rf"cannot tell how many samples a batch of type {type_name} holds: it contains no tensor"
    ):
        batch_size(batch)


# --- batches and outputs that do not fit: a sentence at the first step, not torch's internals ----------------------


def _model(net: nn.Module, loss_fn=None) -> KerasModel:
    return KerasModel(net, loss_fn or nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.1), device="cpu")


def test_a_loader_yielding_none_is_named():
    message = (
        r"^the loader yielded None as a batch; a batch is a tensor, a tuple \(x, y\) or a dict of tensors: check the "
        r"dataset's __getitem__ and the loader's collate_fn$"
    )
    with pytest.raises(TypeError, match=message):
        _model(nn.Linear(3, 1)).fit([None], epochs=1, verbose=0)


def test_a_net_returning_a_tuple_with_a_loss_fn_is_named():
    class TwoOutputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 1)

        def forward(self, x):
            return self.linear(x), x

    with pytest.raises(TypeError, match=r"^the net returned a tuple of 2 outputs, but loss_fn\(preds, labels\) takes "
                       r"one tensor of preds"):  # fmt: skip
        _model(TwoOutputs()).fit([(torch.randn(4, 3), torch.randn(4, 1))], epochs=1, verbose=0)


def test_a_dict_batch_without_labels_names_its_keys_before_the_net_runs():
    calls = []

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 1)

        def forward(self, x, **rest):
            calls.append(sorted(rest))
            return self.linear(x)

    batch = {"x": torch.randn(4, 3), "label": torch.randn(4, 1)}
    with pytest.raises(ValueError, match=r"^loss_fn needs labels, but the batch is a dict with keys \['label', 'x'\] "
                       r"and no 'labels': put the labels under 'labels'"):  # fmt: skip
        _model(Net()).fit([batch], epochs=1, verbose=0)
    assert calls == []


def test_a_batch_with_more_inputs_than_forward_takes_names_the_signature():
    batch = (torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 1))  # two inputs, then the labels
    message = (
        r"^the batch gives the net 2 positional input\(s\), but Linear.forward\(input: torch.Tensor\) -> "
        r"torch.Tensor cannot take them \(too many positional arguments\)"
    )
    with pytest.raises(TypeError, match=message):
        _model(nn.Linear(3, 1)).fit([batch], epochs=1, verbose=0)


def test_a_type_error_inside_forward_is_left_as_it_is():
    class Broken(nn.Linear):
        def forward(self, x):
            raise TypeError("a bug in my forward")

    with pytest.raises(TypeError, match=r"^a bug in my forward$"):
        _model(Broken(3, 1)).fit([(torch.randn(4, 3), torch.randn(4, 1))], epochs=1, verbose=0)


@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), nn.L1Loss(), nn.functional.mse_loss])
def test_an_elementwise_loss_refuses_preds_and_labels_of_different_shapes(loss_fn):
    net = nn.Linear(3, 1)
    before = net.weight.detach().clone()
    batch = (torch.randn(8, 3), torch.randn(8))  # preds (8, 1), labels (8,): MSE would average over 8 x 8 pairs
    message = (
        r"^preds have shape \(8, 1\) and labels \(8,\): .* would broadcast them to \(8, 8\) and compare values "
        r"that do not belong together. Give the labels the preds' shape"
    )
    with pytest.raises(ValueError, match=message):
        _model(net, loss_fn).fit([batch], epochs=1, verbose=0)
    assert torch.equal(net.weight, before)
    history = _model(net, loss_fn).fit([(batch[0], batch[1][:, None])], epochs=1, verbose=0)  # fixed: it trains
    assert len(history) == 1
