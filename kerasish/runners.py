"""One batch (:class:`StepRunner`) and one pass over a loader (:class:`EpochRunner`).

Both are plugged into :class:`~kerasish.KerasModel` as class attributes; subclass either to change a step or a pass::

    class TwoTower(StepRunner):
        def compute_loss(self, batch):
            query, doc, target = batch
            sim = F.cosine_similarity(self.net.encode(query), self.net.encode(doc))
            return F.mse_loss(sim, target), sim, target

    class MyModel(KerasModel):
        StepRunner = TwoTower
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from kerasish.batches import batch_size, loss_of, preds_of, split_batch
from kerasish.callbacks.base import CallbackList
from kerasish.device import to_device
from kerasish.metrics import MetricSet
from kerasish.progress import PassProgress

STAGES = ("train", "val")


class StepRunner:
    """Runs one batch: moves it to the device, computes the loss, and in training steps the optimizer.

    Override :meth:`compute_loss` for a custom loss; the rest (backward, step, metrics) stays as it is.

    Args:
        net: the network.
        loss_fn: ``loss_fn(preds, labels) -> scalar tensor``, or ``None`` when the net's output carries its loss.
        stage: ``"train"`` (backward and optimizer step) or ``"val"`` (forward only).
        metrics: where the step's loss and metric updates accumulate.
        device: where batches go.
        optimizer: required for ``stage="train"``.
        lr_scheduler: stepped after each optimizer step when given; ``KerasModel`` passes it only when asked to
            step per batch.
    """

    def __init__(
        self,
        net: nn.Module,
        loss_fn: Callable | None,
        *,
        stage: str,
        metrics: MetricSet,
        device: torch.device,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r} is not valid; use one of {STAGES}")
        if stage == "train" and optimizer is None:
            raise ValueError("a train StepRunner needs an optimizer")
        self.net = net
        self.loss_fn = loss_fn
        self.stage = stage
        self.metrics = metrics
        self.device = device
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler

    def __call__(self, batch: Any) -> tuple[torch.Tensor, int]:
        """Runs the step; returns the batch's detached loss (a device tensor) and its number of samples."""
        batch = to_device(batch, self.device)
        loss, preds, labels = self.compute_loss(batch)
        _check_loss(loss)
        if self.stage == "train":
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.lr_scheduler is not None:
                self.lr_scheduler.step()
        loss = loss.detach()
        size = self.batch_size(batch)
        self.metrics.update(loss, preds, labels, size)
        return loss, size

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        """Returns ``(loss, preds, labels)`` for a batch already on the device.

        ``labels=None`` means the metrics skip this batch. The default follows :mod:`kerasish.batches`: the net gets
        the inputs, and the loss is ``loss_fn(preds, labels)``, or the net's own ``loss`` when ``loss_fn`` is None
        (a mapping batch then reaches the net with its ``"labels"``, so the net can compute it).
        """
        args, kwargs, labels = split_batch(batch, keep_mapping_labels=self.loss_fn is None)
        output = self.net(*args, **kwargs)
        preds = preds_of(output)
        if self.loss_fn is None:
            return loss_of(output), preds, labels
        if labels is None:
            raise ValueError(
                "loss_fn needs labels, but the batch has none: yield (x, y) tuples or dicts with a 'labels' key, "
                "or override StepRunner.compute_loss"
            )
        return self.loss_fn(preds, labels), preds, labels

    def batch_size(self, batch: Any) -> int:
        """How many samples the batch holds, for sample-weighted means; override for unusual batches."""
        return batch_size(batch)


def _check_loss(loss: Any) -> None:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"the loss must be a tensor; got {type(loss).__name__}: {loss!r}")
    if loss.dim() != 0:
        raise ValueError(
            f"the loss must be a scalar tensor; got shape {tuple(loss.shape)}. Use a mean- or sum-reduced loss "
            "(e.g. reduction='mean') or reduce it in StepRunner.compute_loss"
        )


class EpochRunner:
    """Runs one pass of a :class:`StepRunner` over a loader and returns the pass's logs.

    The net is put in train or eval mode and gradients are switched on or off for the pass; both are restored after,
    however the pass ends. The loss and metrics accumulate on the device and become floats once, at the end.

    Args:
        step_runner: runs each batch.
        model: passed to the batch hooks.
        callbacks: whose ``on_<stage>_batch_begin/end`` hooks run around each step.
        verbose: 1 shows a progress bar for the pass, 0 nothing.
    """

    def __init__(
        self,
        step_runner: StepRunner,
        *,
        model: Any = None,
        callbacks: CallbackList | None = None,
        verbose: int = 0,
    ) -> None:
        self.step_runner = step_runner
        self.stage = step_runner.stage
        self.model = model
        self.callbacks = callbacks or CallbackList()
        self.verbose = verbose

    def __call__(self, loader: Iterable, *, epoch: int | None = None, epochs: int | None = None) -> dict[str, float]:
        """Runs the pass; returns ``{"<stage>_loss": ..., "<stage>_<metric>": ...}``.

        Raises:
            ValueError: the loader yielded no batch.
        """
        metrics = self.step_runner.metrics
        metrics.reset()
        begin_hook, end_hook = f"on_{self.stage}_batch_begin", f"on_{self.stage}_batch_end"
        call_begin, call_end = self.callbacks.overrides(begin_hook), self.callbacks.overrides(end_hook)
        progress = PassProgress(
            enabled=self.verbose >= 1,
            description=self.stage if epoch is None else f"epoch {epoch}/{epochs} {self.stage}",
            total=loader_length(loader),
            read_loss=metrics.running_loss,
        )
        batches = 0
        with pass_mode(self.step_runner.net, training=self.stage == "train"):
            try:
                for batches, batch in enumerate(loader, start=1):
                    if call_begin:
                        self.callbacks.call(begin_hook, self.model, {"epoch": epoch, "batch": batches - 1})
                    loss, size = self.step_runner(batch)
                    progress.step()
                    if call_end:
                        logs = {"epoch": epoch, "batch": batches - 1, "loss": loss, "size": size}
                        self.callbacks.call(end_hook, self.model, logs)
                        if getattr(self.model, "stop_training", False):
                            break
            finally:
                progress.close()
        if batches == 0:
            raise ValueError(f"the {self.stage} loader yielded no batches")
        return metrics.compute(self.stage)


def loader_length(loader: Iterable) -> int | None:
    """The number of batches a loader yields, or ``None`` when it has no length (an ``IterableDataset``'s)."""
    try:
        return len(loader)
    except TypeError:
        return None


@contextlib.contextmanager
def pass_mode(net: nn.Module, *, training: bool) -> Iterator[None]:
    """Train or eval mode with gradients on or off, both put back as they were however the block ends."""
    was_training = net.training
    net.train(training)
    try:
        with torch.set_grad_enabled(training):
            yield
    finally:
        net.train(was_training)
