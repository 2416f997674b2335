"""The reference for two processes: the data-parallel loop a PyTorch expert writes by hand for W1.

It does, on every rank, what ``KerasModel(..., strategy="auto").fit(...)`` does under ``torchrun``, and nothing more:

- a gloo process group from the torchrun environment; the net wrapped in ``DistributedDataParallel`` (CPU, no
  ``device_ids``), the optimizer over the plain net's parameters (the same tensors);
- the train loader rebuilt over a ``DistributedSampler`` (shuffled, seeded with the user's loader's generator,
  ``drop_last=False``, ``set_epoch(epoch)`` before each epoch, epochs counted from 1); the val set cut into
  contiguous shards without padding, the first ``n % world`` ranks one sample larger;
- train steps through the DDP wrapper, val steps through the plain module in ``eval`` mode under ``no_grad``;
- the loss summed as a float64 tensor weighted by batch size, ``metric.update`` per step; at the end of a pass one
  ``all_reduce(SUM)`` of ``[loss_sum, samples]``, then ``metric.compute()`` (torchmetrics syncs itself), one read to
  the host;
- after each epoch a host copy of the best weights whenever val accuracy strictly improves, an early-stopping
  counter, and one ``all_reduce(MAX)`` of the "stop" flag, so every rank stops at the same epoch; the best weights
  loaded back at the end.

It imports nothing from kerasish.
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from workloads import Parts, RunResult


def shard_bounds(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` samples: sizes differ by at most one, the first ranks larger."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def shard_train(loader: DataLoader, rank: int, world: int) -> tuple[DataLoader, DistributedSampler]:
    """The user's shuffled train loader, rebuilt so each rank reads its own share of every epoch's permutation."""
    seed = loader.generator.initial_seed()
    sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sharded = DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=sampler, generator=loader.generator, num_workers=0
    )
    return sharded, sampler


def shard_val(loader: DataLoader, rank: int, world: int) -> DataLoader:
    """The val loader over this rank's contiguous shard: no padding, so every sample counts exactly once."""
    indices = shard_bounds(len(loader.dataset), rank, world)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=indices, num_workers=0)


class HandDDPLoop:
    """The hand-written data-parallel fit over the :class:`~workloads.Parts` of a run; needs a process group."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.net = parts.net
        self.loss_fn = parts.loss_fn
        self.optimizer = parts.optimizer
        self.device = parts.device

    def setup(self) -> None:
        """Wraps the net and shards the loaders; part of the fit, as the wrapping is part of kerasish's."""
        rank, world = dist.get_rank(), dist.get_world_size()
        self.ddp = DistributedDataParallel(self.net)
        self.train_loader, self.sampler = shard_train(self.parts.train_loader, rank, world)
        self.val_loader = shard_val(self.parts.val_loader, rank, world)
        self.train_metric = self.parts.metric.clone().to(self.device)
        self.val_metric = self.parts.metric.clone().to(self.device)

    def fit(self, epochs: int, patience: int) -> RunResult:
        """Trains up to ``epochs`` epochs, stops after ``patience`` without improvement, restores the best weights.

        Besides the wall clock, the main thread's CPU clock is stamped at the same points (:attr:`cpu_stamps`).
        """
        fit_start = time.perf_counter()
        self.cpu_stamps = [time.thread_time()]
        self.setup()
        columns = ("train_loss", "train_acc", "val_loss", "val_acc", "time")
        history: dict[str, list[float]] = {column: [] for column in columns}
        epoch_ends: list[float] = []
        best_acc, best_state, wait = -math.inf, None, 0
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            self.sampler.set_epoch(epoch)
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
            # Every rank decided from the same reduced row; the reduction keeps them in step all the same.
            stop = torch.tensor([float(wait >= patience)], dtype=torch.float64, device=self.device)
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
            epoch_ends.append(time.perf_counter())
            self.cpu_stamps.append(time.thread_time())
            if stop.item():
                break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        return RunResult(history=history, fit_start=fit_start, epoch_ends=epoch_ends, fit_end=time.perf_counter())

    def train_pass(self) -> tuple[float, float]:
        """One pass over this rank's train shard; returns the mean loss and the accuracy over all ranks."""
        self.ddp.train()
        self.train_metric.reset()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        samples = 0
        for x, y in self.train_loader:
            x, y = x.to(self.device), y.to(self.device)
            logits = self.ddp(x)
            loss = self.loss_fn(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum.add_(loss.detach(), alpha=len(y))
            samples += len(y)
            self.train_metric.update(logits.detach(), y)
        return self.reduce(loss_sum, samples, self.train_metric)

    def val_pass(self) -> tuple[float, float]:
        """One pass over this rank's val shard through the plain module; returns the mean loss and the accuracy."""
        self.net.eval()
        self.val_metric.reset()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        samples = 0
        with torch.no_grad():
            for x, y in self.val_loader:
                x, y = x.to(self.device), y.to(self.device)
                logits = self.net(x)
                loss_sum.add_(self.loss_fn(logits, y), alpha=len(y))
                samples += len(y)
                self.val_metric.update(logits, y)
        return self.reduce(loss_sum, samples, self.val_metric)

    def reduce(self, loss_sum: torch.Tensor, samples: int, metric: torch.nn.Module) -> tuple[float, float]:
        """One all-reduce of the sums, the metric's own sync, one read to the host."""
        totals = torch.stack([loss_sum, torch.tensor(float(samples), dtype=torch.float64, device=self.device)])
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        accuracy = metric.compute()
        loss, acc = torch.stack([totals[0] / totals[1], accuracy.to(torch.float64)]).tolist()
        return loss, acc


def fit_hand_ddp(parts: Parts, *, epochs: int, patience: int) -> tuple[RunResult, list[float]]:
    """Joins the gloo process group torchrun set up, fits, and leaves the group; returns the result and the CPU
    stamps (``time.thread_time()`` at the fit's start and at each epoch's end).

    The DDP wrapper goes before the group does. Its reducer holds a reference to the group; dropped last, from the
    wrapper's deallocation, the group's destructor runs holding the GIL and joins gloo's worker threads, one of
    which may be waiting for the GIL to free a finished collective's tensors: a deadlock (torch 2.13; seen here in
    4 of about 45 runs under load). Dropped first, the group's last reference goes with ``destroy_process_group``.
    """
    dist.init_process_group("gloo")
    try:
        loop = HandDDPLoop(parts)
        result, stamps = loop.fit(epochs=epochs, patience=patience), loop.cpu_stamps
        del loop
        return result, stamps
    finally:
        dist.destroy_process_group()
