"""Per-pass accumulation of the loss and the metrics, kept on the device until the pass ends.

A metric is one of two kinds:

- *stateful*: a torchmetrics ``Metric``, or any object with callable ``compute`` and ``reset`` attributes (such as
  torchkeras's metric modules, or a class of your own). Each step updates it with ``metric.update(preds, labels)``
  when it has a callable ``update``, else by calling ``metric(preds, labels)`` (whatever that returns is ignored);
  ``reset()`` runs before each pass and ``compute()`` once at its end, giving the pass's value: a tensor with one
  element or a Python real number. Each stage works on its own copy, so the object you pass is never changed.
- *a function* ``fn(preds, labels) -> tensor | float``: its batch values are averaged weighted by samples. This is
  exact for means over samples (accuracy, MAE), not for ratios of counts (precision, recall, F1): write those as
  stateful metrics.

Nothing here reads a value back to the host inside a step: sums stay device tensors, sample counts are Python ints
taken from shapes, and :meth:`MetricSet.compute` converts everything to floats with a single transfer (data-parallel,
after one gather of every rank's sums and counts).
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import nn
from torchmetrics import Metric

from kerasish.checks import not_a_class
from kerasish.distributed import Strategy

MetricFn = Callable[[Any, Any], torch.Tensor | float]


class StatefulMetric(Protocol):
    """A metric that accumulates over a pass: updated each step (by ``update(preds, labels)`` or by being called
    with them), ``compute()`` once per pass, ``reset()`` before each pass. See :func:`is_stateful`."""

    def compute(self) -> torch.Tensor | float: ...

    def reset(self) -> None: ...


MetricLike = Metric | StatefulMetric | MetricFn


def is_stateful(metric: Any) -> bool:
    """Whether ``metric`` accumulates over a pass: a torchmetrics ``Metric``, or has callable ``compute`` and ``reset``.

    Example:
        >>> from torchmetrics.regression import MeanSquaredError
        >>> is_stateful(MeanSquaredError()), is_stateful(lambda preds, labels: 0.0)
        (True, False)
    """
    if isinstance(metric, Metric):
        return True
    return callable(getattr(metric, "compute", None)) and callable(getattr(metric, "reset", None))


def higher_is_better(metric: Any) -> bool | None:
    """The metric's own ``higher_is_better`` attribute when it is a bool, else ``None`` (the direction is unknown).

    torchmetrics metrics carry the attribute; set it on any metric object or function to declare its direction.

    Example:
        >>> def hit_rate(preds, labels):
        ...     return (preds.argmax(1) == labels).float().mean()
        >>> higher_is_better(hit_rate)
        >>> hit_rate.higher_is_better = True
        >>> higher_is_better(hit_rate)
        True
    """
    value = getattr(metric, "higher_is_better", None)
    return value if isinstance(value, bool) else None


def check_metrics(metrics_dict: Mapping[str, MetricLike] | None) -> dict[str, MetricLike]:
    """Validates ``metrics_dict`` and returns it as a plain dict.

    Each value must be a torchmetrics ``Metric``, another stateful metric (callable ``compute`` and ``reset``, and a
    callable ``update(preds, labels)`` or being callable as ``metric(preds, labels)``), or a function
    ``fn(preds, labels) -> tensor``.

    Raises:
        TypeError: ``metrics_dict`` is not a mapping, or a value is none of the above.
        ValueError: a key is not an identifier, or is ``"loss"``.
    """
    if metrics_dict is None:
        return {}
    if not isinstance(metrics_dict, Mapping):
        raise TypeError(f"metrics_dict must be a dict of name -> metric; got {type(metrics_dict).__name__}")
    for name, metric in metrics_dict.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"metrics_dict key {name!r} is not valid; use a name like 'acc' or 'f1_macro'")
        if name == "loss":
            raise ValueError("metrics_dict key 'loss' is taken by the loss itself; pick another name")
        not_a_class(metric, f"metrics_dict[{name!r}]", "{cls}(...)")
        if is_stateful(metric) and not (isinstance(metric, Metric) or _has_update(metric) or callable(metric)):
            raise TypeError(
                f"metrics_dict[{name!r}] has compute() and reset() but no way to be updated: a stateful metric "
                f"needs an update(preds, labels) method or to be callable as metric(preds, labels); "
                f"got {type(metric).__name__}"
            )
        if not (isinstance(metric, Metric) or callable(metric) or is_stateful(metric)):
            raise TypeError(
                f"metrics_dict[{name!r}] must be a torchmetrics Metric or a callable fn(preds, labels) -> tensor; "
                f"got {type(metric).__name__}"
            )
    return dict(metrics_dict)


class MetricSet:
    """The loss and metrics of one stage (train or val), accumulated over one pass.

    The loss and function metrics are averaged weighted by samples, so a short last batch counts for what it holds.
    A stateful metric (see :func:`is_stateful`) is updated each step, with ``metric.update(preds, labels)`` when it
    has a callable ``update``, else with ``metric(preds, labels)`` (torchkeras style; the batch value it returns is
    ignored). It is reset before each pass and computed once at its end, to a tensor with one element or a Python
    real number. Each ``MetricSet`` owns a copy of every stateful metric, so train and val state never mix and the
    user's object is never changed: torchmetrics metrics are cloned, others deep-copied, and an ``nn.Module`` copy is
    moved to ``device`` (state kept in its parameters or buffers moves with it).

    Data-parallel, :meth:`compute` first gathers every rank's sums and counts in one collective and adds them up,
    and torchmetrics syncs its own states, so every rank computes the numbers of the whole pass. kerasish cannot add
    up the state of other stateful metrics across ranks, so data-parallel they are refused. In one process the
    metrics never sync, even when a process group exists (``strategy=None`` under torchrun).

    Args:
        metrics: name -> torchmetrics ``Metric``, other stateful metric, or ``fn(preds, labels) -> tensor``.
        device: where the sums and the metrics' state live.
        strategy: the model's :class:`~kerasish.distributed.Strategy`; ``None``: one process.

    Attributes:
        stateful: name -> this stage's copy of each stateful metric.
        functions: name -> each function metric.
        seconds: the pass's wall time given to the last :meth:`compute`; data-parallel, the slowest rank's.

    Raises:
        ValueError: data-parallel, with a stateful metric that is not a torchmetrics ``Metric``.
    """

    def __init__(
        self, metrics: Mapping[str, MetricLike], device: torch.device, *, strategy: Strategy | None = None
    ) -> None:
        self.device = device
        self.strategy = Strategy(device) if strategy is None else strategy
        # MPS has no float64; elsewhere float64 sums keep a long epoch's mean exact to float32 precision.
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        if self.strategy.distributed:
            _check_syncable(metrics)
        self.stateful = {
            n: _own_copy(m, device, self.strategy.distributed) for n, m in metrics.items() if is_stateful(m)
        }
        # How each copy takes a batch, chosen once here rather than looked up in every step.
        self._updates = {n: _update_fn(m) for n, m in self.stateful.items()}
        self.functions = {n: m for n, m in metrics.items() if not is_stateful(m)}
        self.names = list(metrics)
        self.seconds = 0.0
        self.reset()

    def reset(self) -> None:
        """Forgets the pass so far."""
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        self.loss_sum = zero.clone()
        self.samples = 0
        self.labelled = 0
        self.fn_sums = {name: zero.clone() for name in self.functions}
        for metric in self.stateful.values():
            metric.reset()

    def update(self, loss: torch.Tensor, preds: Any, labels: Any, size: int) -> None:
        """Adds one batch of ``size`` samples; ``labels=None`` leaves the metrics untouched.

        ``loss`` is the batch's detached loss. The metrics see ``preds`` and ``labels`` without gradients, so that
        no state they keep holds on to the step's graph.
        """
        self.loss_sum.add_(loss, alpha=size)
        self.samples += size
        if labels is None or not self.names:
            return
        self.labelled += size
        # A no_grad block costs as much as four tensor ops at every step: the val pass has no gradients already, and
        # one tensor of preds (the usual case) is cheaper detached.
        if not torch.is_grad_enabled():
            self._update_metrics(preds, labels, size)
        elif isinstance(preds, torch.Tensor) and not getattr(labels, "requires_grad", False):
            self._update_metrics(preds.detach(), labels, size)
        else:
            with torch.no_grad():
                self._update_metrics(preds, labels, size)

    def _update_metrics(self, preds: Any, labels: Any, size: int) -> None:
        for update in self._updates.values():
            update(preds, labels)
        for name, fn in self.functions.items():
            value = fn(preds, labels)
            if isinstance(value, numbers.Real):
                self.fn_sums[name].add_(value * size)
            else:
                self.fn_sums[name].add_(_scalar(value, name).detach(), alpha=size)

    def state_dict(self) -> dict[str, Any]:
        """The pass so far (sums, counts, each stateful metric's state), for a run state written within a pass.

        Raises:
            ValueError: a stateful metric keeps its state where kerasish cannot read it (see :meth:`check_saveable`).
        """
        self.check_saveable()
        return {
            "loss_sum": self.loss_sum,
            "samples": self.samples,
            "labelled": self.labelled,
            "fn_sums": dict(self.fn_sums),
            "stateful": {name: _metric_state(metric) for name, metric in self.stateful.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Goes on with a pass from what :meth:`state_dict` returned."""
        self.loss_sum = state["loss_sum"].to(self.device, self.dtype)
        self.samples, self.labelled = state["samples"], state["labelled"]
        self.fn_sums = {name: total.to(self.device, self.dtype) for name, total in state["fn_sums"].items()}
        for name, metric in self.stateful.items():
            _load_metric_state(metric, state["stateful"][name], self.device)

    def check_saveable(self) -> None:
        """Raises when a stateful metric's state cannot be saved within a pass: neither torchmetrics' nor a
        ``state_dict()`` / ``load_state_dict()`` of its own (an ``nn.Module`` metric has them)."""
        for name, metric in self.stateful.items():
            if not isinstance(metric, Metric) and not callable(getattr(metric, "load_state_dict", None)):
                raise ValueError(
                    f"metrics_dict[{name!r}] ({type(metric).__name__}) keeps its state where kerasish cannot save it "
                    "within a pass (state_every_n_steps); give it state_dict() and load_state_dict(), make it a "
                    "torchmetrics Metric or an nn.Module, or save the state at epoch ends only"
                )

    def running_loss(self) -> float:
        """The mean loss so far. A host sync: for throttled progress displays only."""
        return (self.loss_sum / max(self.samples, 1)).item()

    def compute(self, prefix: str, *, batches: int | None = None, seconds: float = 0.0) -> dict[str, float]:
        """The pass's ``{prefix}_loss`` and ``{prefix}_<metric>`` as floats, read back in one transfer.

        Args:
            prefix: the stage, ``"train"`` or ``"val"``.
            batches: how many batches the pass ran, to fail on an empty pass; ``None``: not checked.
            seconds: the pass's wall time, kept (data-parallel: the slowest rank's) as :attr:`seconds`.

        Raises:
            ValueError: ``batches`` is 0 (data-parallel: summed over the ranks).
        """
        loss_sum, fn_sums, samples, labelled = self.loss_sum, self.fn_sums, self.samples, self.labelled
        self.seconds = seconds
        if self.strategy.distributed:
            loss_sum, fn_sums, (samples, labelled, batches, self.seconds) = self._reduce(batches, seconds)
        if batches is not None and not batches:
            raise ValueError(f"the {prefix} loader yielded no batches")
        values = {"loss": loss_sum / samples if samples else None}
        for name in self.names:
            if not labelled:
                values[name] = None
            elif name in self.stateful:
                values[name] = _epoch_value(self._compute_stateful(name), name, self.dtype)
            else:
                values[name] = fn_sums[name] / labelled
        present = [v for v in values.values() if v is not None]
        floats = iter(torch.stack([v.to(self.device, self.dtype) for v in present]).tolist() if present else ())
        return {f"{prefix}_{name}": math.nan if v is None else next(floats) for name, v in values.items()}

    def _reduce(self, batches: int | None, seconds: float) -> tuple[torch.Tensor, dict, list]:
        """Every rank's sums and counts, added up (the time: its maximum), from one gather; the counts on the host."""
        counts = [self.samples, self.labelled, batches or 0, seconds]
        local = torch.cat(
            [
                self.loss_sum.reshape(1),
                *(total.reshape(1) for total in self.fn_sums.values()),
                torch.tensor(counts, dtype=self.dtype, device=self.device),
            ]
        )
        ranks = self.strategy.gather(local)
        totals = ranks[:, :-1].sum(0)
        samples, labelled, batches, seconds = torch.cat([totals[-3:], ranks[:, -1].max().reshape(1)]).tolist()
        fn_sums = dict(zip(self.fn_sums, totals[1 : 1 + len(self.fn_sums)], strict=True))
        return totals[0], fn_sums, [int(samples), int(labelled), int(batches), seconds]

    def _compute_stateful(self, name: str) -> Any:
        if self.labelled:
            return self.stateful[name].compute()
        with warnings.catch_warnings():
            # Data-parallel, a rank whose shard had no labelled batch still joins the metric's sync; its own empty
            # state is expected, and torchmetrics' "compute before update" warning would only alarm.
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            return self.stateful[name].compute()


def _check_syncable(metrics: Mapping[str, MetricLike]) -> None:
    """Refuses stateful metrics whose state kerasish cannot add up across ranks (all but torchmetrics')."""
    for name, metric in metrics.items():
        if is_stateful(metric) and not isinstance(metric, Metric):
            raise ValueError(
                f"metrics_dict[{name!r}] ({type(metric).__name__}) is a stateful metric that is not a torchmetrics "
                "Metric; data-parallel training needs its state summed over ranks, which kerasish can do for "
                "torchmetrics Metrics only. Use a torchmetrics Metric, or subclass torchmetrics.Metric and declare "
                "the state with add_state"
            )


def _own_copy(metric: StatefulMetric, device: torch.device, distributed: bool) -> StatefulMetric:
    """A copy of ``metric`` for one stage, on ``device``; a torchmetrics copy syncs across ranks only when training
    is distributed. A copy that is not an ``nn.Module`` stays where its state was."""
    if not isinstance(metric, Metric):
        own = copy.deepcopy(metric)
        return own.to(device) if isinstance(own, nn.Module) else own
    own = metric.clone().to(device)
    if not distributed:
        # torchmetrics syncs whenever a process group exists; independent workers (strategy=None) must not.
        own.sync_on_compute = False
        own._to_sync = False
    return own


def _metric_state(metric: Any) -> dict[str, Any]:
    if isinstance(metric, Metric):  # its states are not in state_dict (persistent=False): read them by name
        return {"state": dict(metric.metric_state), "updates": metric._update_count}
    return {"state_dict": metric.state_dict()}


def _load_metric_state(metric: Any, saved: dict[str, Any], device: torch.device) -> None:
    if not isinstance(metric, Metric):
        metric.load_state_dict(saved["state_dict"])
        return
    for name, value in saved["state"].items():
        moved = [item.to(device) for item in value] if isinstance(value, list) else value.to(device)
        setattr(metric, name, moved)
    metric._update_count = saved["updates"]
    metric._computed = None


def _has_update(metric: Any) -> bool:
    return callable(getattr(metric, "update", None))


def _update_fn(metric: StatefulMetric) -> Callable[[Any, Any], Any]:
    """How ``metric`` takes one batch: its ``update`` method, else the metric itself (torchkeras's ``forward``)."""
    return metric.update if _has_update(metric) else metric


def _epoch_value(value: Any, name: str, dtype: torch.dtype) -> torch.Tensor:
    """A stateful metric's ``compute()`` result as a 0-d tensor; a Python number becomes a host tensor of ``dtype``."""
    if isinstance(value, numbers.Real):
        return torch.tensor(float(value), dtype=dtype)
    return _scalar(value, name)


def _scalar(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(
            f"metric {name!r} computed {shape}, not a single number; a history column needs a scalar "
            "(for torchmetrics classification metrics, use average='micro' or 'macro')"
        )
    return value.reshape(())
