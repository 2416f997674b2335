"""The reference: the training loop a PyTorch expert writes by hand for the same job as ``KerasModel.fit``.

It does what a kerasish fit with ``monitor="val_acc", mode="max", patience=...`` does, and nothing more:

- a train pass and a val pass per epoch, with the train and val loss and accuracy of the epoch;
- the loss summed as a device tensor, weighted by batch size; ``metric.update`` per step, ``compute`` per pass, one
  read to the host per number per pass;
- validation in ``eval`` mode under ``torch.no_grad``;
- best weights kept as a host copy of the ``state_dict`` whenever val accuracy strictly improves, early stopping
  after ``patience`` epochs without improvement, and the best weights loaded back at the end.

The step is a method, so ``cuda_sync_check.py`` can wrap it in a subclass the way it wraps kerasish's ``StepRunner``;
a method call costs well under a microsecond.
"""

from __future__ import annotations

import math
import time

import torch
from workloads import Parts, RunResult


class HandLoop:
    """The hand-written fit over the :class:`~workloads.Parts` of a run."""

    def __init__(self, parts: Parts) -> None:
        self.net = parts.net
        self.loss_fn = parts.loss_fn
        self.optimizer = parts.optimizer
        self.metric = parts.metric
        self.train_loader = parts.train_loader
        self.val_loader = parts.val_loader
        self.device = parts.device
        self.non_blocking = parts.device.type != "cpu"

    def fit(self, epochs: int, patience: int) -> RunResult:
        """Trains up to ``epochs`` epochs, stops after ``patience`` without improvement, restores the best weights."""
        fit_start = time.perf_counter()
        self.train_metric = self.metric.clone().to(self.device)
        self.val_metric = self.metric.clone().to(self.device)
        columns = ("train_loss", "train_acc", "val_loss", "val_acc", "time")
        history: dict[str, list[float]] = {column: [] for column in columns}
        epoch_ends: list[float] = []
        best_acc, best_state, wait = -math.inf, None, 0
        for _epoch in range(epochs):
            start = time.perf_counter()
            train_loss, train_acc = self.train_pass()
            val_loss, val_acc = self.val_pass()
            row = (train_loss, train_acc, val_loss, val_acc, time.perf_counter() - start)
            for column, value in zip(columns, row, strict=True):
                history[column].append(value)
            if val_acc > best_acc:  # strictly better: a tie keeps the earlier epoch, as kerasish does
                best_acc, wait = val_acc, 0
                best_state = {key: value.detach().to("cpu", copy=True) for key, value in self.net.state_dict().items()}
            else:
                wait += 1
            epoch_ends.append(time.perf_counter())
            if wait >= patience:
                break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        return RunResult(history=history, fit_start=fit_start, epoch_ends=epoch_ends, fit_end=time.perf_counter())

    def train_pass(self) -> tuple[float, float]:
        """One pass over the train loader; returns the sample-weighted mean loss and the accuracy."""
        self.net.train()
        self.train_metric.reset()
        loss_sum = torch.zeros((), device=self.device)
        samples = 0
        for x, y in self.train_loader:
            samples += self.train_step(x, y, loss_sum)
        return (loss_sum / samples).item(), self.train_metric.compute().item()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor) -> int:
        """One optimizer step; adds the batch's summed loss to ``loss_sum`` in place and returns the batch size."""
        x, y = x.to(self.device, non_blocking=self.non_blocking), y.to(self.device, non_blocking=self.non_blocking)
        logits = self.net(x)
        loss = self.loss_fn(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss_sum += loss.detach() * len(y)
        self.train_metric.update(logits.detach(), y)
        return len(y)

    def val_pass(self) -> tuple[float, float]:
        """One pass over the val loader without gradients; returns the mean loss and the accuracy."""
        self.net.eval()
        self.val_metric.reset()
        loss_sum = torch.zeros((), device=self.device)
        samples = 0
        with torch.no_grad():
            for x, y in self.val_loader:
                samples += self.val_step(x, y, loss_sum)
        return (loss_sum / samples).item(), self.val_metric.compute().item()

    def val_step(self, x: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor) -> int:
        """One forward pass; adds the batch's summed loss to ``loss_sum`` in place and returns the batch size."""
        x, y = x.to(self.device, non_blocking=self.non_blocking), y.to(self.device, non_blocking=self.non_blocking)
        logits = self.net(x)
        loss_sum += self.loss_fn(logits, y) * len(y)
        self.val_metric.update(logits, y)
        return len(y)
