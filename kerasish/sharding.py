"""Splitting a ``DataLoader`` among processes without changing what it does; used by :mod:`kerasish.distributed`.

A map-style loader with a sequential or shuffling sampler can be rebuilt around a sampler that yields one rank's
share; anything else either shards itself (a ``DistributedSampler``), is the user's to shard (an
``IterableDataset``, a list of batches), or is refused, since swapping a custom sampler would silently change it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

# DataLoader arguments a rebuilt loader keeps (those this torch has): all but the data set and how it is sampled.
KEPT_SETTINGS = (
    "batch_size",
    "num_workers",
    "collate_fn",
    "pin_memory",
    "drop_last",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


class ContiguousShard(Sampler[int]):
    """Rank ``rank``'s contiguous block of ``range(size)``; blocks differ in length by at most one, none repeats.

    Evaluation counts every sample exactly once (``DistributedSampler`` pads with repeats instead), and the blocks
    in rank order are the data set in order, so gathered predictions come back in order.

    Example:
        >>> [list(ContiguousShard(5, rank, 2)) for rank in range(2)]
        [[0, 1, 2], [3, 4]]
    """

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        base, extra = divmod(size, world_size)
        self.start = rank * base + min(rank, extra)
        self.stop = self.start + base + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def shardable_sampler(loader: Iterable, argument: str, world_size: int) -> Sampler | None:
    """The sampler of a loader kerasish can shard; ``None`` for data that is used as given on every rank.

    Raises:
        ValueError: a loader kerasish would have to change to shard: a ``DataLoader`` subclass, a custom sampler
            or batch sampler, a ``RandomSampler`` with replacement or its own ``num_samples``.
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None  # lists of batches, IterableDatasets: the user's to shard
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        return sampler
    if type(loader) is not DataLoader:
        raise ValueError(
            f"{argument} is a {type(loader).__name__}, a DataLoader subclass kerasish cannot rebuild with a sharding "
            "sampler; give it a torch.utils.data.DistributedSampler yourself (kerasish calls its set_epoch)"
        )
    batch_sampler = loader.batch_sampler
    plain_batches = batch_sampler is None or type(batch_sampler) is BatchSampler
    plain = type(sampler) is SequentialSampler or (
        type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None
    )
    if not (plain and plain_batches):
        custom = sampler if not plain else batch_sampler
        raise ValueError(
            f"{argument} has a custom {type(custom).__name__}, which kerasish cannot shard across "
            f"{world_size} processes without changing what it does; use shuffle=True/False, or give the "
            "loader a torch.utils.data.DistributedSampler yourself (kerasish calls its set_epoch)"
        )
    return sampler


def with_sampler(loader: DataLoader, sampler: Sampler) -> DataLoader:
    """``loader`` with another sampler: every other setting kept (batch size, workers, collate, generator, ...)."""
    settings = {name: getattr(loader, name) for name in KEPT_SETTINGS if hasattr(loader, name)}
    return DataLoader(loader.dataset, sampler=sampler, **settings)
