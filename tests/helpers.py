"""Tiny nets, data and recording callbacks shared by the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from kerasish import Callback, KerasModel, StepRunner


def digits_split() -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits scaled to [0, 1]: 1400 train and 397 val samples, in a fixed order."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])


def mlp() -> nn.Module:
    """The digits classifier: 64 -> 32 -> 10."""
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def regression_batches(n: int = 10, batch_size: int = 4, features: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` random samples of a noiseless linear target in batches of ``batch_size`` (the last one short)."""
    x = torch.randn(n, features)
    y = x @ torch.arange(1.0, features + 1).unsqueeze(1) + 0.5
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]


# 40 samples of a noiseless linear target, shared by the long-run tests (kerasish.cursor).
X40 = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
Y40 = X40 @ torch.tensor([[1.0], [-2.0], [0.5]])


class Counted(Dataset):
    """The 40 samples of ``X40``/``Y40``; remembers every index read, in order, to show what a resume reads again."""

    def __init__(self) -> None:
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(X40)

    def __getitem__(self, index: int):
        self.reads.append(index)
        return X40[index], Y40[index]


class Interrupt(Callback):
    """Raises KeyboardInterrupt, as Ctrl-C would, before train batch ``at`` (0-based, over the whole fit) trains."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def on_train_batch_begin(self, model, logs):
        if self.seen == self.at:
            raise KeyboardInterrupt
        self.seen += 1


class CosineStep(StepRunner):
    """The README's two-tower step: a (query, doc) pair scored by the cosine of their embeddings, regressed on the
    target similarity; the net has ``query`` and ``doc`` towers and no ``forward``."""

    def compute_loss(self, batch):
        query, doc, target = batch
        similarity = F.cosine_similarity(self.net.query(query), self.net.doc(doc))
        return F.mse_loss(similarity, target), similarity, target


class TwoTowerModel(KerasModel):
    StepRunner = CosineStep


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


def launch(
    arguments: list[str],
    *,
    logs: Path,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    expect_failure: bool = False,
) -> None:
    """Runs ``torchrun --standalone --nproc_per_node=2 ARGUMENTS``, each rank's output under ``logs``.

    torchrun and every rank are killed if they outlive ``timeout`` seconds: a rank left waiting in a collective
    would otherwise block for gloo's own timeout, 30 minutes. A failure shows torchrun's output and every rank's;
    with ``expect_failure`` (a run that kills a rank on purpose), success is the failure.
    """
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("--redirects", "3", "--log-dir", str(logs)),
        *arguments,
    ]
    process = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        process.communicate()
        pytest.fail(f"torchrun {arguments} did not finish in {timeout} s: a rank was left waiting")
    if expect_failure:
        if process.returncode == 0:
            pytest.fail(f"torchrun {arguments} was meant to fail, and succeeded")
        return
    if process.returncode != 0:
        ranks = "\n".join(path.read_text() for path in sorted(logs.rglob("std*.log")))
        pytest.fail(f"torchrun {arguments} failed ({process.returncode}):\n{output.decode()[-3000:]}\n{ranks[-6000:]}")


def kill_tree(pid: int) -> None:
    """Kills a process, its process group and every descendant: torchrun starts each rank in a session of its own,
    out of reach of a kill of torchrun's group alone."""
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:  # torchrun ended meanwhile; its ranks may not have
        descendants = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def rank_outputs(logs: Path) -> dict[str, str]:
    """Each local rank's standard output from a :func:`launch`, by rank ("0", "1")."""
    return {path.parent.name: path.read_text() for path in logs.rglob("stdout.log")}
