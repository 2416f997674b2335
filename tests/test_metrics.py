"""check_metrics validation, MetricSet's sample-weighted accumulation over batches of unequal size, stateful metrics
of every kind (torchmetrics, torchkeras-style modules, plain objects), and higher_is_better."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.regression import MeanSquaredError

from kerasish import KerasModel
from kerasish.distributed import Strategy
from kerasish.metrics import MetricSet, check_metrics, higher_is_better
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


# Binary logits and labels in three batches; a logit > 0 predicts positive. Batch precisions: 3/4, 0/0 (no positive
# prediction), 1/2; over the pass: 4 true positives among 6 positive predictions.
LOGITS = [torch.tensor([2.0, 1.0, 3.0, 0.5]), torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([1.5, 0.2, -3.0])]
TARGETS = [torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])]


class ModulePrecision(nn.Module):
    """torchkeras style: ``forward`` adds a batch's counts to the state and returns the batch's precision."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("true_pos", torch.zeros((), dtype=torch.float64))
        self.register_buffer("false_pos", torch.zeros((), dtype=torch.float64))

    def forward(self, preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        predicted, actual = preds.reshape(-1) > 0, targets.reshape(-1) == 1
        true_pos, false_pos = (predicted & actual).sum(), (predicted & ~actual).sum()
        self.true_pos += true_pos
        self.false_pos += false_pos
        return true_pos / (true_pos + false_pos)

    def compute(self) -> torch.Tensor:
        return self.true_pos / (self.true_pos + self.false_pos)

    def reset(self) -> None:
        self.true_pos.zero_()
        self.false_pos.zero_()


class ObjectPrecision:
    """A plain object with ``update`` / ``compute`` / ``reset`` and tensor state."""

    def __init__(self) -> None:
        self.true_pos = torch.zeros(())
        self.predicted_pos = torch.zeros(())

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        predicted = preds > 0
        self.true_pos = self.true_pos + (predicted & (targets == 1)).sum()
        self.predicted_pos = self.predicted_pos + predicted.sum()

    def compute(self) -> torch.Tensor:
        return self.true_pos.double() / self.predicted_pos.double()

    def reset(self) -> None:
        self.true_pos = torch.zeros(())
        self.predicted_pos = torch.zeros(())


class SampleCount:
    """Counts labelled samples (from shapes: no device read) and computes a Python number of the given type."""

    def __init__(self, to_number: type = int) -> None:
        self.to_number = to_number
        self.seen = 0

    def __call__(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        self.seen += len(targets)

    def compute(self) -> int | float:
        return self.to_number(self.seen)

    def reset(self) -> None:
        self.seen = 0


class FakeDataParallel(Strategy):
    @property
    def distributed(self) -> bool:
        return True


def precision_by_hand(logits: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    predicted, actual = torch.cat(logits) > 0, torch.cat(targets) == 1
    return (predicted & actual).sum().item() / predicted.sum().item()


def run_pass(metrics: MetricSet, batches: list[int]) -> dict[str, float]:
    metrics.reset()
    for i in batches:
        metrics.update(torch.tensor(0.0), LOGITS[i], TARGETS[i], len(TARGETS[i]))
    return metrics.compute("val")


def test_the_data_tells_the_epoch_precision_from_a_mean_of_batch_precisions():
    assert precision_by_hand(LOGITS, TARGETS) == 4 / 6
    batch_values = [ModulePrecision()(logits, targets).item() for logits, targets in zip(LOGITS, TARGETS, strict=True)]
    assert batch_values[0] == 3 / 4
    assert math.isnan(batch_values[1])
    assert batch_values[2] == 1 / 2
    assert (batch_values[0] + batch_values[2]) / 2 != pytest.approx(4 / 6, rel=1e-3)


@pytest.mark.parametrize("make", [ModulePrecision, ObjectPrecision])
def test_stateful_metric_gives_the_exact_epoch_value(make):
    result = run_pass(MetricSet({"prec": make()}, CPU), [0, 1, 2])
    assert result == {"val_loss": 0.0, "val_prec": precision_by_hand(LOGITS, TARGETS)}


@pytest.mark.parametrize("make", [ModulePrecision, ObjectPrecision])
def test_stateful_metric_is_reset_before_each_pass(make):
    metrics = MetricSet({"prec": make()}, CPU)
    assert run_pass(metrics, [0, 1, 2])["val_prec"] == 4 / 6
    # Batch 0 alone would give 3/4, and with the first pass's counts kept (4 + 1) / (6 + 2).
    assert run_pass(metrics, [2])["val_prec"] == 1 / 2


def test_state_the_object_already_holds_is_reset_away():
    used = ModulePrecision()
    used(LOGITS[0], TARGETS[0])  # the user's own use: 3 of 4
    metrics = MetricSet({"prec": used}, CPU)
    metrics.update(torch.tensor(0.0), LOGITS[2], TARGETS[2], 3)
    assert metrics.compute("val")["val_prec"] == 1 / 2


@pytest.mark.parametrize("make", [ModulePrecision, ObjectPrecision])
def test_stages_get_independent_copies_and_the_users_object_is_untouched(make):
    user_metric = make()
    train, val = MetricSet({"prec": user_metric}, CPU), MetricSet({"prec": user_metric}, CPU)
    assert train.stateful["prec"] is not user_metric
    assert train.stateful["prec"] is not val.stateful["prec"]

    train.update(torch.tensor(0.0), LOGITS[0], TARGETS[0], 4)
    val.update(torch.tensor(0.0), LOGITS[2], TARGETS[2], 3)
    train.update(torch.tensor(0.0), LOGITS[1], TARGETS[1], 3)
    assert train.compute("train")["train_prec"] == 3 / 4
    assert val.compute("val")["val_prec"] == 1 / 2
    assert user_metric.true_pos.item() == 0
    assert (user_metric.false_pos if make is ModulePrecision else user_metric.predicted_pos).item() == 0


def test_module_copies_are_moved_to_the_device():
    # The meta device holds no data, yet a tensor there says where .to(device) sent it.
    user_metric = ModulePrecision()
    metrics = MetricSet({"prec": user_metric}, torch.device("meta"))
    assert metrics.stateful["prec"].true_pos.device.type == "meta"
    assert metrics.stateful["prec"].false_pos.device.type == "meta"
    assert user_metric.true_pos.device.type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_module_metric_runs_on_cuda():
    cuda = torch.device("cuda")
    user_metric = ModulePrecision()
    metrics = MetricSet({"prec": user_metric}, cuda)
    for logits, targets in zip(LOGITS, TARGETS, strict=True):
        metrics.update(torch.tensor(0.0, device=cuda), logits.to(cuda), targets.to(cuda), len(targets))
    assert metrics.stateful["prec"].true_pos.device.type == "cuda"
    assert metrics.compute("val")["val_prec"] == 4 / 6
    assert user_metric.true_pos.device.type == "cpu"


@pytest.mark.parametrize("to_number", [int, float, np.float64])
def test_a_python_number_from_compute_is_accepted(to_number):
    metrics = MetricSet({"count": SampleCount(to_number)}, CPU)
    result = run_pass(metrics, [0, 1, 2])
    assert result["val_count"] == 10.0
    assert type(result["val_count"]) is float


class PairMetric(SampleCount):
    def compute(self) -> torch.Tensor:
        return torch.tensor([1.0, 2.0])


class NamedMetric(SampleCount):
    def compute(self) -> str:
        return "precision"


@pytest.mark.parametrize(("metric", "shown"), [(PairMetric(), r"\(2,\)"), (NamedMetric(), "str")])
def test_a_non_scalar_from_compute_raises_naming_the_metric(metric, shown):
    metrics = MetricSet({"odd": metric}, CPU)
    metrics.update(torch.tensor(0.0), LOGITS[0], TARGETS[0], 4)
    with pytest.raises(TypeError, match=rf"^metric 'odd' computed {shown}, not a single number"):
        metrics.compute("val")


def test_check_metrics_accepts_every_kind_of_stateful_metric():
    given = {"mod": ModulePrecision(), "obj": ObjectPrecision(), "count": SampleCount(), "mae": mae}
    assert check_metrics(given) == given


class NoUpdate:
    def compute(self) -> float:
        return 0.0

    def reset(self) -> None:
        pass


def test_check_metrics_rejects_a_stateful_metric_that_cannot_be_updated():
    with pytest.raises(
        TypeError,
        match=r"^metrics_dict\['prec'\] has compute\(\) and reset\(\) but no way to be updated: a stateful metric "
        r"needs an update\(preds, labels\) method or to be callable as metric\(preds, labels\); got NoUpdate$",
    ):
        check_metrics({"mae": mae, "prec": NoUpdate()})


@pytest.mark.parametrize("make", [ModulePrecision, ObjectPrecision])
def test_data_parallel_refuses_a_stateful_metric_kerasish_cannot_sync(make):
    with pytest.raises(
        ValueError,
        match=rf"^metrics_dict\['prec'\] \({make.__name__}\) is a stateful metric that is not a torchmetrics Metric; "
        r"data-parallel training needs its state summed over ranks, which kerasish can do for torchmetrics Metrics "
        r"only\. Use a torchmetrics Metric, or subclass torchmetrics\.Metric and declare the state with add_state$",
    ):
        MetricSet({"mae": mae, "prec": make()}, CPU, strategy=FakeDataParallel(CPU))


def test_data_parallel_keeps_torchmetrics_and_functions():
    acc = MulticlassAccuracy(num_classes=3, average="micro")
    metrics = MetricSet({"acc": acc, "mae": mae}, CPU, strategy=FakeDataParallel(CPU))
    assert list(metrics.stateful) == ["acc"]
    assert list(metrics.functions) == ["mae"]


def declared_higher(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (preds == labels).float().mean()


declared_higher.higher_is_better = True


def declared_oddly(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (preds == labels).float().mean()


declared_oddly.higher_is_better = "yes"


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        (MulticlassAccuracy(num_classes=3), True),
        (MeanSquaredError(), False),
        (mae, None),
        (declared_higher, True),
        (declared_oddly, None),
        (ModulePrecision(), None),
    ],
    ids=["accuracy", "mse", "function", "function-declared", "not-a-bool", "module"],
)
def test_higher_is_better(metric, expected):
    assert higher_is_better(metric) is expected


def test_evaluate_gives_the_exact_epoch_precision():
    torch.manual_seed(0)
    net = nn.Linear(1, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(0.0)  # the net's output is its input: the logits above
    batches = [(logits.unsqueeze(1), targets.unsqueeze(1)) for logits, targets in zip(LOGITS, TARGETS, strict=True)]
    user_metric = ModulePrecision()
    model = KerasModel(net, loss_fn=nn.BCEWithLogitsLoss(), metrics_dict={"prec": user_metric}, device="cpu")
    result = model.evaluate(batches)
    assert result["val_prec"] == precision_by_hand(LOGITS, TARGETS) == 4 / 6
    assert user_metric.true_pos.item() == 0
