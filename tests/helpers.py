"""Tiny nets, data and recording callbacks shared by the tests."""

from __future__ import annotations

import torch
from torch import nn

from kerasish import Callback


def mlp() -> nn.Module:
    """The digits classifier: 64 -> 32 -> 10."""
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def regression_batches(n: int = 10, batch_size: int = 4, features: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` random samples of a noiseless linear target in batches of ``batch_size`` (the last one short)."""
    x = torch.randn(n, features)
    y = x @ torch.arange(1.0, features + 1).unsqueeze(1) + 0.5
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]


class Recorder(Callback):
    """Records every hook call as ``(hook, epoch)`` or ``(hook, epoch, batch)``."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def _record(self, hook: str, logs: dict) -> None:
        self.calls.append((hook, *(logs[k] for k in ("epoch", "batch") if k in logs)))

    def on_fit_begin(self, model, logs):
        self._record("on_fit_begin", logs)

    def on_fit_end(self, model, logs):
        self._record("on_fit_end", logs)

    def on_epoch_begin(self, model, logs):
        self._record("on_epoch_begin", logs)

    def on_epoch_end(self, model, logs):
        self._record("on_epoch_end", logs)

    def on_train_batch_begin(self, model, logs):
        self._record("on_train_batch_begin", logs)

    def on_train_batch_end(self, model, logs):
        self._record("on_train_batch_end", logs)

    def on_val_batch_begin(self, model, logs):
        self._record("on_val_batch_begin", logs)

    def on_val_batch_end(self, model, logs):
        self._record("on_val_batch_end", logs)

    def on_predict_begin(self, model, logs):
        self._record("on_predict_begin", logs)

    def on_predict_batch_begin(self, model, logs):
        self._record("on_predict_batch_begin", logs)

    def on_predict_batch_end(self, model, logs):
        self._record("on_predict_batch_end", logs)

    def on_predict_end(self, model, logs):
        self._record("on_predict_end", logs)


class EpochTag(Callback):
    """Writes the epoch number into the net's ``tag`` buffer at each epoch's start, so weights record their epoch."""

    def on_epoch_begin(self, model, logs):
        model.net.tag.fill_(logs["epoch"])


def tagged_linear(features: int = 3) -> nn.Module:
    """``nn.Linear(features, 1)`` with a ``tag`` buffer (saved in its state dict) for :class:`EpochTag`."""
    net = nn.Linear(features, 1)
    net.register_buffer("tag", torch.zeros(()))
    return net
