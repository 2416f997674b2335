"""check_metrics validation, and MetricSet's sample-weighted accumulation over batches of unequal size."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from kerasish.metrics import MetricSet, check_metrics
from tests.helpers import regression_batches

CPU = torch.device("cpu")


def mae(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (preds - labels).abs().mean()


def test_check_metrics_none_is_empty():
    assert check_metrics(None) == {}


def test_check_metrics_returns_a_plain_dict_copy():
    given = {"mae": mae}
    checked = check_metrics(given)
    assert checked == {"mae": mae}
    assert checked is not given


@pytest.mark.parametrize(("bad", "type_name"), [([("mae", mae)], "list"), (mae, "function"), ("mae", "str")])
def test_check_metrics_rejects_non_mappings(bad, type_name):
    with pytest.raises(TypeError, match=rf"metrics_dict must be a dict of name -> metric; got {type_name}$"):
        check_metrics(bad)


@pytest.mark.parametrize("key", ["val acc", "1st", "", "f1-macro", 3])
def test_check_metrics_rejects_bad_keys(key):
    with pytest.raises(
        ValueError, match=f"^metrics_dict key {re.escape(repr(key))} is not valid; use a name like 'acc' or 'f1_macro'$"
    ):
        check_metrics({key: mae})


def test_check_metrics_rejects_the_loss_key():
    with pytest.raises(ValueError, match=r"metrics_dict key 'loss' is taken by the loss itself; pick another name"):
        check_metrics({"acc": mae, "loss": mae})


@pytest.mark.parametrize(("value", "type_name"), [(0.5, "float"), ("accuracy", "str"), (None, "NoneType")])
def test_check_metrics_rejects_non_callable_values(value, type_name):
    with pytest.raises(
        TypeError,
        match=rf"metrics_dict\['acc'\] must be a torchmetrics Metric or a callable fn\(preds, labels\) -> tensor; "
        rf"got {type_name}$",
    ):
        check_metrics({"mae": mae, "acc": value})


def test_loss_is_the_mean_over_all_samples():
    batches = regression_batches(n=10, batch_size=4)
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    net = nn.Linear(3, 1)
    loss_fn = nn.MSELoss()
    metrics = MetricSet({}, CPU)
    with torch.no_grad():
        for x, y in batches:
            metrics.update(loss_fn(net(x), y), net(x), y, len(x))
        x_all = torch.cat([x for x, _ in batches])
        y_all = torch.cat([y for _, y in batches])
        expected = loss_fn(net(x_all), y_all).item()
        batch_mean = sum(loss_fn(net(x), y).item() for x, y in batches) / len(batches)
    result = metrics.compute("val")
    assert list(result) == ["val_loss"]
    assert result["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert batch_mean != pytest.approx(expected, rel=1e-3)  # the data tells a plain batch mean apart


def test_callable_metric_is_averaged_by_samples():
    preds = torch.tensor([1.0, 1.0, 1.0, 1.0, 5.0])
    labels = torch.zeros(5)
    metrics = MetricSet({"mae": mae}, CPU)
    metrics.update(torch.tensor(0.0), preds[:4], labels[:4], 4)
    metrics.update(torch.tensor(0.0), preds[4:], labels[4:], 1)
    # Per sample: (4 * 1 + 5) / 5; a mean of batch means would give (1 + 5) / 2.
    assert metrics.compute("train") == {"train_loss": 0.0, "train_mae": pytest.approx(9 / 5, rel=1e-12)}


def test_torchmetrics_metric_equals_accuracy_over_all_samples():
    logits = torch.tensor(
        [[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]]
    )
    labels = torch.tensor([0, 1, 2, 0, 0, 0])
    metrics = MetricSet({"acc": MulticlassAccuracy(num_classes=3, average="micro")}, CPU)
    for rows in (slice(0, 4), slice(4, 5), slice(5, 6)):
        metrics.update(torch.tensor(0.5), logits[rows], labels[rows], len(labels[rows]))
    by_hand = (logits.argmax(1) == labels).float().mean().item()
    assert by_hand == pytest.approx(4 / 6)
    assert metrics.compute("val") == {"val_loss": 0.5, "val_acc": pytest.approx(by_hand, rel=1e-6)}


def test_unlabelled_batches_count_for_the_loss_only():
    metrics = MetricSet({"mae": mae}, CPU)
    metrics.update(torch.tensor(1.0), torch.ones(2), torch.zeros(2), 2)
    metrics.update(torch.tensor(4.0), torch.full((3,), 100.0), None, 3)
    result = metrics.compute("val")
    assert result["val_loss"] == pytest.approx((2 * 1.0 + 3 * 4.0) / 5, rel=1e-12)
    assert result["val_mae"] == pytest.approx(1.0, rel=1e-12)
    assert (metrics.samples, metrics.labelled) == (5, 2)


def test_no_labelled_batch_gives_nan_metrics():
    metrics = MetricSet({"mae": mae, "acc": MulticlassAccuracy(num_classes=3, average="micro")}, CPU)
    metrics.update(torch.tensor(2.0), torch.zeros(4, 3), None, 4)
    result = metrics.compute("val")
    assert list(result) == ["val_loss", "val_mae", "val_acc"]
    assert result["val_loss"] == 2.0
    assert math.isnan(result["val_mae"])
    assert math.isnan(result["val_acc"])


def test_no_batch_at_all_gives_nan_everywhere():
    result = MetricSet({"mae": mae}, CPU).compute("train")
    assert list(result) == ["train_loss", "train_mae"]
    assert all(math.isnan(v) for v in result.values())


def test_compute_returns_python_floats():
    metrics = MetricSet({"mae": mae, "acc": MulticlassAccuracy(num_classes=2, average="micro")}, CPU)
    metrics.update(torch.tensor(0.5), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), 2)
    result = metrics.compute("train")
    assert {k: type(v) for k, v in result.items()} == {"train_loss": float, "train_mae": float, "train_acc": float}
    assert result["train_acc"] == 0.5


def test_reset_clears_everything():
    metrics = MetricSet({"mae": mae, "acc": MulticlassAccuracy(num_classes=2, average="micro")}, CPU)
    wrong = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    right = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    metrics.update(torch.tensor(9.0), wrong, torch.tensor([0, 0]), 2)
    metrics.reset()
    assert (metrics.samples, metrics.labelled) == (0, 0)
    assert all(math.isnan(v) for v in metrics.compute("val").values())

    # After a reset only the new batch counts, for the loss, the callable and the torchmetrics metric alike.
    metrics.update(torch.tensor(1.0), right, torch.tensor([0, 0]), 2)
    assert metrics.compute("val") == {"val_loss": 1.0, "val_mae": 0.5, "val_acc": 1.0}


def test_running_loss_is_the_mean_so_far():
    metrics = MetricSet({}, CPU)
    assert metrics.running_loss() == 0.0
    metrics.update(torch.tensor(1.0), None, None, 1)
    metrics.update(torch.tensor(4.0), None, None, 3)
    assert metrics.running_loss() == pytest.approx(13 / 4, rel=1e-12)


def test_the_users_metric_object_is_never_updated():
    user_metric = MulticlassAccuracy(num_classes=3, average="micro")
    train = MetricSet({"acc": user_metric}, CPU)
    val = MetricSet({"acc": user_metric}, CPU)
    assert train.stateful["acc"] is not user_metric
    assert train.stateful["acc"] is not val.stateful["acc"]

    train.update(torch.tensor(0.0), torch.eye(3), torch.tensor([0, 1, 2]), 3)
    val.update(torch.tensor(0.0), torch.eye(3), torch.tensor([1, 2, 0]), 3)
    assert train.compute("train")["train_acc"] == 1.0
    assert val.compute("val")["val_acc"] == 0.0
    assert user_metric.update_called is False
    assert user_metric.update_count == 0


def test_non_scalar_callable_metric_raises_naming_it():
    metrics = MetricSet({"per_sample": lambda preds, labels: (preds - labels).abs()}, CPU)
    with pytest.raises(TypeError, match=r"metric 'per_sample' computed \(3,\), not a single number"):
        metrics.update(torch.tensor(0.0), torch.ones(3), torch.zeros(3), 3)


@pytest.mark.parametrize("to_number", [float, np.float32, np.float64], ids=["float", "np.float32", "np.float64"])
def test_number_metric_is_averaged_by_samples(to_number):
    metrics = MetricSet({"first": lambda preds, labels: to_number(preds[0])}, CPU)
    metrics.update(torch.tensor(0.0), torch.full((3,), 2.0), torch.zeros(3), 3)
    metrics.update(torch.tensor(0.0), torch.full((1,), 6.0), torch.zeros(1), 1)
    assert metrics.compute("val")["val_first"] == pytest.approx((3 * 2.0 + 1 * 6.0) / 4, rel=1e-12)


@pytest.mark.parametrize(("value", "shown"), [([0.5], "list"), ("0.5", "str"), (None, "NoneType")])
def test_non_number_callable_metric_raises_naming_it(value, shown):
    metrics = MetricSet({"odd": lambda preds, labels: value}, CPU)
    with pytest.raises(TypeError, match=rf"metric 'odd' computed {shown}, not a single number"):
        metrics.update(torch.tensor(0.0), torch.ones(3), torch.zeros(3), 3)


def test_non_scalar_torchmetrics_metric_raises_naming_it():
    metrics = MetricSet({"acc_per_class": MulticlassAccuracy(num_classes=3, average=None)}, CPU)
    metrics.update(torch.tensor(0.0), torch.eye(3), torch.tensor([0, 1, 2]), 3)
    with pytest.raises(
        TypeError, match=r"metric 'acc_per_class' computed \(3,\), not a single number.*average='micro'"
    ):
        metrics.compute("val")


def test_sums_accumulate_in_float64():
    generator = torch.Generator().manual_seed(0)
    losses = torch.rand(2000, generator=generator, dtype=torch.float32) + 0.1
    sizes = torch.randint(1, 5000, (2000,), generator=generator).tolist()
    metrics = MetricSet({}, CPU)
    for loss, size in zip(losses, sizes, strict=True):
        metrics.update(loss, None, None, size)
    expected = math.fsum(loss * size for loss, size in zip(losses.tolist(), sizes, strict=True)) / sum(sizes)
    assert metrics.loss_sum.dtype == torch.float64
    assert metrics.compute("train")["train_loss"] == pytest.approx(expected, rel=1e-12)

    # The same sum kept in float32 is visibly off, so the tolerance above does test the accumulation dtype.
    float32_sum = torch.zeros((), dtype=torch.float32)
    for loss, size in zip(losses, sizes, strict=True):
        float32_sum.add_(loss, alpha=size)
    assert (float32_sum / sum(sizes)).item() != pytest.approx(expected, rel=1e-9)
