"""The batch conventions: inputs and labels out of a batch, preds and loss out of a net's output, the batch size."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

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
