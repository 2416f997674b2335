"""Per-pass accumulation of the loss and the metrics, kept on the device until the pass ends.

Nothing here reads a value back to the host inside a step: sums stay device tensors, sample counts are Python ints
taken from shapes, and :meth:`MetricSet.compute` converts everything to floats with a single transfer (data-parallel,
after one gather of every rank's sums and counts).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torchmetrics import Metric

from kerasish.distributed import Strategy

MetricFn = Callable[[Any, Any], torch.Tensor | float]
MetricLike = Metric | MetricFn


def check_metrics(metrics_dict: Mapping[str, MetricLike] | None) -> dict[str, MetricLike]:
    """Validates ``metrics_dict`` and returns it as a plain dict."""
    if metrics_dict is None:
        return {}
    if not isinstance(metrics_dict, Mapping):
        raise TypeError(f"metrics_dict must be a dict of name -> metric; got {type(metrics_dict).__name__}")
    for name, metric in metrics_dict.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"metrics_dict key {name!r} is not valid; use a name like 'acc' or 'f1_macro'")
        if name == "loss":
            raise ValueError("metrics_dict key 'loss' is taken by the loss itself; pick another name")
        if not (isinstance(metric, Metric) or callable(metric)):
            raise TypeError(
                f"metrics_dict[{name!r}] must be a torchmetrics Metric or a callable fn(preds, labels) -> tensor; "
                f"got {type(metric).__name__}"
            )
    return dict(metrics_dict)


class MetricSet:
    """The loss and metrics of one stage (train or val), accumulated over one pass.

    The loss and plain-callable metrics are averaged weighted by samples, so a short last batch counts for what
    it holds. A torchmetrics ``Metric`` gets ``update`` each step and ``compute`` once per pass; each ``MetricSet``
    owns its own copy, so train and val state never mix.

    Data-parallel, :meth:`compute` first gathers every rank's sums and counts in one collective and adds them up,
    and torchmetrics syncs its own states, so every rank computes the numbers of the whole pass. In one process the
    metrics never sync, even when a process group exists (``strategy=None`` under torchrun).

    Args:
        metrics: name -> torchmetrics ``Metric`` or ``fn(preds, labels) -> tensor``.
        device: where the sums and the metrics' state live.
        strategy: the model's :class:`~kerasish.distributed.Strategy`; ``None``: one process.

    Attributes:
        seconds: the pass's wall time given to the last :meth:`compute`; data-parallel, the slowest rank's.
    """

    def __init__(
        self, metrics: Mapping[str, MetricLike], device: torch.device, *, strategy: Strategy | None = None
    ) -> None:
        self.device = device
        self.strategy = Strategy(device) if strategy is None else strategy
        # MPS has no float64; elsewhere float64 sums keep a long epoch's mean exact to float32 precision.
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.stateful = {
            n: _own_copy(m, device, self.strategy.distributed) for n, m in metrics.items() if isinstance(m, Metric)
        }
        self.functions = {n: m for n, m in metrics.items() if not isinstance(m, Metric)}
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
        """Adds one batch of ``size`` samples; ``labels=None`` leaves the metrics untouched."""
        self.loss_sum.add_(loss.detach(), alpha=size)
        self.samples += size
        if labels is None or not self.names:
            return
        self.labelled += size
        with torch.no_grad():
            for metric in self.stateful.values():
                metric.update(preds, labels)
            for name, fn in self.functions.items():
                value = fn(preds, labels)
                if isinstance(value, numbers.Real):
                    self.fn_sums[name].add_(value * size)
                else:
                    self.fn_sums[name].add_(_scalar(value, name).detach(), alpha=size)

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
                values[name] = _scalar(self._compute_stateful(name), name)
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

    def _compute_stateful(self, name: str) -> torch.Tensor:
        if self.labelled:
            return self.stateful[name].compute()
        with warnings.catch_warnings():
            # Data-parallel, a rank whose shard had no labelled batch still joins the metric's sync; its own empty
            # state is expected, and torchmetrics' "compute before update" warning would only alarm.
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            return self.stateful[name].compute()


def _own_copy(metric: Metric, device: torch.device, distributed: bool) -> Metric:
    """A copy of ``metric`` for one stage, on ``device``; syncing across ranks only when training is distributed."""
    copy = metric.clone().to(device)
    if not distributed:
        # torchmetrics syncs whenever a process group exists; independent workers (strategy=None) must not.
        copy.sync_on_compute = False
        copy._to_sync = False
    return copy


def _scalar(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(
            f"metric {name!r} computed {shape}, not a single number; a history column needs a scalar "
            "(for torchmetrics classification metrics, use average='micro' or 'macro')"
        )
    return value.reshape(())
