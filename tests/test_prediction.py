"""Joining predict's per-batch outputs: tensors, ragged tensors padded with pad_value, containers, and the errors."""

from __future__ import annotations

import re
from collections import OrderedDict, namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kerasish import KerasModel
from kerasish.prediction import PAD_VALUE, concat_outputs, map_leaves
from tests.helpers import CosineStep, TwoTowerModel

Heads = namedtuple("Heads", ["logits", "hidden"])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_tensors_are_concatenated_in_order():
    batches = [torch.randn(3, 2), torch.randn(2, 2), torch.randn(1, 2)]
    out = concat_outputs(batches)
    assert out.shape == (6, 2)
    assert torch.equal(out, torch.cat(batches))
    assert torch.equal(out[3:5], batches[1])


def test_ragged_token_ids_are_padded_with_minus_100():
    first = torch.tensor([[1, 2], [3, 4]])
    second = torch.tensor([[5, 6, 7]])
    out = concat_outputs([first, second])
    assert out.dtype == torch.int64
    assert out.tolist() == [[1, 2, PAD_VALUE], [3, 4, PAD_VALUE], [5, 6, 7]]


def test_ragged_logits_are_padded_on_the_sequence_dim():
    first, second = torch.randn(2, 3, 4), torch.randn(1, 5, 4)
    out = concat_outputs([first, second])
    assert out.shape == (3, 5, 4)
    assert torch.equal(out[:2, :3], first)
    assert torch.equal(out[2:], second)
    assert (out[:2, 3:] == PAD_VALUE).all()


def test_padding_on_more_than_one_dim():
    first, second = torch.randn(1, 2, 3), torch.randn(2, 3, 1)
    out = concat_outputs([first, second], pad_value=0.5)
    assert out.shape == (3, 3, 3)
    assert torch.equal(out[:1, :2, :3], first)
    assert torch.equal(out[1:, :3, :1], second)
    assert (out[:1, 2] == 0.5).all() and (out[1:, :, 1:] == 0.5).all()
    padded = out.numel() - (first.numel() + second.numel())
    assert int((out == 0.5).sum()) == padded


def test_nan_pad_value_marks_padded_floats():
    first, second = torch.randn(1, 1), torch.randn(1, 3)
    out = concat_outputs([first, second], pad_value=float("nan"))
    assert torch.isnan(out).tolist() == [[False, True, True], [False, False, False]]
    assert out[0, 0] == first[0, 0]


def test_same_shapes_do_not_need_a_representable_pad_value():
    batches = [torch.tensor([[True]]), torch.tensor([[False]])]
    out = concat_outputs(batches, pad_value=float("nan"))
    assert out.tolist() == [[True], [False]]


@pytest.mark.parametrize(
    ("tensors", "pad_value", "match"),
    [
        ([torch.tensor([[1]]), torch.tensor([[1, 2]])], float("nan"), r"torch\.int64 .* pad_value=nan .* -100"),
        ([torch.tensor([[1]], dtype=torch.uint8), torch.zeros(1, 2, dtype=torch.uint8)], -100, r"\[0, 255\].* 0$"),
        ([torch.tensor([[True]]), torch.tensor([[True, False]])], -100, r"torch\.bool .* pad_value=0 \(False\)"),
        ([torch.zeros(1, 1, dtype=torch.float16), torch.zeros(1, 2, dtype=torch.float16)], 1e6, "beyond its range"),
    ],
)
def test_pad_value_the_dtype_cannot_hold_is_an_error(tensors, pad_value, match):
    with pytest.raises(ValueError, match=match):
        concat_outputs(tensors, pad_value=pad_value)


def test_bool_tensors_pad_with_a_bool_value():
    out = concat_outputs([torch.tensor([[True]]), torch.tensor([[True, True]])], pad_value=0)
    assert out.dtype == torch.bool
    assert out.tolist() == [[True, False], [True, True]]


def test_tuple_outputs_are_concatenated_per_position():
    batches = [(torch.tensor([1]), torch.tensor([[1.0]])), (torch.tensor([2, 3]), torch.tensor([[2.0], [3.0]]))]
    out = concat_outputs(batches)
    assert type(out) is tuple
    assert out[0].tolist() == [1, 2, 3]
    assert out[1].tolist() == [[1.0], [2.0], [3.0]]


def test_list_and_namedtuple_keep_their_type():
    listed = concat_outputs([[torch.tensor([1])], [torch.tensor([2])]])
    assert type(listed) is list and listed[0].tolist() == [1, 2]
    named = concat_outputs([Heads(torch.tensor([1]), None), Heads(torch.tensor([2]), None)])
    assert type(named) is Heads
    assert named.logits.tolist() == [1, 2] and named.hidden is None


def test_mapping_becomes_a_dict_in_first_batch_order_with_ragged_leaves():
    first = OrderedDict(logits=torch.randn(1, 2, 3), labels=torch.tensor([[4, 5]]))
    second = OrderedDict(labels=torch.tensor([[6, 7, 8]]), logits=torch.randn(1, 3, 3))
    out = concat_outputs([first, second])
    assert type(out) is dict
    assert list(out) == ["logits", "labels"]
    assert out["labels"].tolist() == [[4, 5, PAD_VALUE], [6, 7, 8]]
    assert torch.equal(out["logits"][1], second["logits"][0])
    assert (out["logits"][0, 2] == PAD_VALUE).all()


def test_nested_dict_and_tuple():
    batches = [{"heads": (torch.tensor([1]), {"a": torch.tensor([[1]])})} for _ in range(2)]
    batches[1]["heads"][1]["a"] = torch.tensor([[2, 3]])
    out = concat_outputs(batches)
    assert out["heads"][0].tolist() == [1, 1]
    assert out["heads"][1]["a"].tolist() == [[1, PAD_VALUE], [2, 3]]


def test_none_in_every_batch_stays_none():
    out = concat_outputs([{"loss": None, "x": torch.tensor([1])}, {"loss": None, "x": torch.tensor([2])}])
    assert out["loss"] is None
    assert out["x"].tolist() == [1, 2]


def test_scalars_are_stacked_one_per_batch():
    out = concat_outputs([{"loss": torch.tensor(0.5)}, {"loss": torch.tensor(0.25)}, {"loss": torch.tensor(1.0)}])
    assert out["loss"].shape == (3,)
    assert out["loss"].tolist() == [0.5, 0.25, 1.0]


def test_empty_batches_is_an_error():
    with pytest.raises(ValueError, match="no outputs to concatenate"):
        concat_outputs([])


def test_mismatched_keys_name_the_differing_keys():
    batches = [{"a": torch.zeros(1), "b": torch.zeros(1)}, {"a": torch.zeros(1), "c": torch.zeros(1)}]
    with pytest.raises(ValueError, match=r"outputs has keys .* in batch 1 \(differing: 'b', 'c'\)"):
        concat_outputs(batches)


def test_mismatched_lengths_name_the_path():
    batches = [{"heads": (torch.zeros(1), torch.zeros(1))}, {"heads": (torch.zeros(1),)}]
    with pytest.raises(ValueError, match=r"outputs\['heads'\] has 2 items in batch 0 but 1 in batch 1"):
        concat_outputs(batches)


def test_mismatched_ndim_names_the_path_and_shapes():
    batches = [{"logits": torch.zeros(2, 5)}, {"logits": torch.zeros(2, 5)}, {"logits": torch.zeros(2, 3, 5)}]
    match = r"outputs\['logits'\] has 2 dimensions in batch 0 but 3 in batch 2 \(shapes \(2, 5\) and \(2, 3, 5\)\)"
    with pytest.raises(ValueError, match=match):
        concat_outputs(batches)


def test_string_leaf_is_a_type_error():
    batches = [(torch.zeros(1), "cat"), (torch.zeros(1), "dog")]
    with pytest.raises(TypeError, match=r"outputs\[1\] is a str in batch 0; predict concatenates tensors"):
        concat_outputs(batches)


def test_none_in_some_batches_only_is_a_type_error():
    batches = [{"heads": [torch.zeros(1)]}, {"heads": [None]}]
    with pytest.raises(TypeError, match=r"outputs\['heads'\]\[0\] is a Tensor in batch 0 but a NoneType in batch 1"):
        concat_outputs(batches)


def test_map_leaves_keeps_structure_and_none():
    outputs = {"logits": torch.tensor([1, 2], dtype=torch.float16), "extra": (None, Heads(torch.tensor([3]), None))}
    out = map_leaves(lambda t: t.to(torch.float32) * 2, outputs)
    assert out["logits"].dtype == torch.float32 and out["logits"].tolist() == [2.0, 4.0]
    assert out["extra"][0] is None
    assert type(out["extra"][1]) is Heads
    assert out["extra"][1].logits.tolist() == [6] and out["extra"][1].hidden is None


# --- through KerasModel.predict: every model fit can train ---------------------------------------------------------


class TwoTowers(nn.Module):
    """No forward: the README's two-tower model is trained through a custom compute_loss only."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(4, 3)
        self.doc = nn.Linear(4, 3)


def pairs(n: int = 10, batch_size: int = 4) -> list:
    q, d = torch.randn(n, 4), torch.randn(n, 4)
    target = torch.rand(n)
    return [(q[i : i + batch_size], d[i : i + batch_size], target[i : i + batch_size]) for i in range(0, n, batch_size)]


def test_a_model_trained_through_compute_loss_predicts_its_preds():
    net = TwoTowers()
    data = pairs()
    model = TwoTowerModel(net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), device="cpu")
    model.fit(data, epochs=2, verbose=0)
    preds = model.predict(data)
    with torch.no_grad():
        expected = torch.cat([F.cosine_similarity(net.query(q), net.doc(d)) for q, d, _ in data])
    assert preds.shape == (10,)
    assert torch.allclose(preds, expected)


def test_batches_compute_loss_cannot_read_say_to_override_predict_and_an_override_is_used():
    net = TwoTowers()
    model = TwoTowerModel(net, device="cpu")
    unlabelled = [(q, d) for q, d, _ in pairs()]
    with pytest.raises(ValueError, match="not enough values to unpack") as failure:
        model.predict(unlabelled)
    assert "override StepRunner.predict(batch)" in failure.value.__notes__[0]

    class PredictingStep(CosineStep):
        def predict(self, batch):
            query, doc = batch
            return F.cosine_similarity(self.net.query(query), self.net.doc(doc))

    class Model(KerasModel):
        StepRunner = PredictingStep

    preds = Model(net, device="cpu").predict(unlabelled)
    with torch.no_grad():
        expected = torch.cat([F.cosine_similarity(net.query(q), net.doc(d)) for q, d in unlabelled])
    assert torch.allclose(preds, expected)


class Tagger(nn.Module):
    """A tiny token tagger: ids (batch, seq) -> logits (batch, seq, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.out = nn.Linear(8, 5)

    def forward(self, input_ids):
        return self.out(self.embed(input_ids))


def test_a_token_tagger_with_dynamic_padding_predicts_padded_logits():
    net = Tagger()
    # Two batches padded to their own longest sentence (6 and 9 tokens), as a dynamic-padding collator does.
    batches = [
        {"input_ids": torch.randint(0, 20, (4, 6)), "labels": torch.randint(0, 5, (4, 6))},
        {"input_ids": torch.randint(0, 20, (3, 9)), "labels": torch.randint(0, 5, (3, 9))},
    ]
    model = KerasModel(net, nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.1), device="cpu")
    logits = model.predict(batches)
    assert logits.shape == (7, 9, 5)
    with torch.no_grad():
        assert torch.equal(logits[:4, :6], net(batches[0]["input_ids"]))
        assert torch.equal(logits[4:], net(batches[1]["input_ids"]))
    assert bool((logits[:4, 6:] == PAD_VALUE).all())
    nan_padded = model.predict(batches, pad_value=float("nan"))
    assert bool(nan_padded[:4, 6:].isnan().all()) and not bool(nan_padded[:4, :6].isnan().any())


class TwoHeads(nn.Module):
    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.as_dict = as_dict

    def forward(self, x):
        hidden = self.body(x)
        kind, score = hidden[:, :3], hidden[:, 3]
        return {"kind": kind, "score": score} if self.as_dict else (kind, score)


@pytest.mark.parametrize("as_dict", [False, True])
def test_multi_head_outputs_keep_their_structure(as_dict):
    net = TwoHeads(as_dict)
    batches = [torch.randn(4, 3), torch.randn(2, 3)]
    out = KerasModel(net, device="cpu").predict(batches)
    with torch.no_grad():
        whole = net.body(torch.cat(batches))
    kind, score = (out["kind"], out["score"]) if as_dict else out
    assert type(out) is (dict if as_dict else tuple)
    assert torch.allclose(kind, whole[:, :3]) and torch.allclose(score, whole[:, 3])


def test_bf16_outputs_in_a_dict_come_back_as_float32():
    out = KerasModel(TwoHeads(True), precision="bf16", device="cpu").predict([torch.randn(4, 3)])
    assert (out["kind"].dtype, out["score"].dtype) == (torch.float32, torch.float32)


def test_a_net_returning_something_else_fails_after_the_first_batch():
    calls = []

    class Named(nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return {"logits": None, "names": ["a"] * len(x)}

    with pytest.raises(TypeError, match=r"^predict: outputs\['names'\]\[0\] is a str in batch 0; predict concatenates"):
        KerasModel(Named(), device="cpu").predict([torch.randn(2, 3)] * 5)
    assert calls == [2]


@pytest.mark.parametrize("bad", [True, "nan", None])
def test_a_bad_pad_value_is_named(bad):
    with pytest.raises(TypeError, match=rf"^pad_value={re.escape(repr(bad))} is not valid; use a number"):
        KerasModel(nn.Linear(3, 1), device="cpu").predict([torch.randn(2, 3)], pad_value=bad)


def test_shards_of_ragged_outputs_are_joined_with_padding(monkeypatch):
    # Data-parallel, every rank's joined outputs are gathered and joined again: a rank whose sentences were shorter
    # is padded to the other's length.
    net = Tagger()
    model = KerasModel(net, device="cpu")
    other_rank = torch.full((2, 7, 5), 1.5)
    monkeypatch.setattr(model.strategy, "eval_loader", lambda data: (data, True))
    monkeypatch.setattr(model.strategy, "all_gather_objects", lambda mine: [mine, None, other_rank])
    out = model.predict([torch.randint(0, 20, (3, 4))])
    assert out.shape == (5, 7, 5)
    assert torch.equal(out[3:], other_rank) and bool((out[:3, 4:] == PAD_VALUE).all())
