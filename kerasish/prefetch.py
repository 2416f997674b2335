"""Reads one batch ahead and starts its copy to the device while the current step runs.

For transfer-bound workloads (large inputs, a small model), where the host-to-device copy takes as long as the step:
on CUDA the copy of batch k+1 runs on the copy engine, on a side stream, while the GPU computes step k. The costs: one
more batch lives on the device, and a CPU tensor that the loader did not pin is pinned here, at the price of one host
memcpy per batch; ``DataLoader(pin_memory=True)`` pins in the loader's workers instead, which is best.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from kerasish.device import rebuild, to_device


def prefetch(batches: Iterable[Any], device: torch.device) -> Iterator[Any]:
    """Yields the batches of ``batches`` in order, each already on ``device``, reading and moving one batch ahead.

    Nothing is read before the first batch is asked for; then batches 0 and 1 are read, and from there on, when
    batch k is handed over, batch k+1 has been read and its copy issued, so that it overlaps with the step run on
    batch k. An error raised while reading or moving batch k+1 waits until batch k+1 is asked for, and is then raised
    as it was (same object, same traceback): the consumer sees what it would have seen without prefetching. A consumer
    that stops early (``break``) has had one batch more read from ``batches`` than it received; an iterator carried
    across epochs loses that batch, so bound each pass with ``itertools.islice``, which stops by itself.

    On CUDA, CPU tensors are pinned and copied on a side stream (see ``_CudaMover``); elsewhere batches are moved by
    ``kerasish.device.to_device``. Not thread-safe: iterate from one thread.

    Args:
        batches: Any iterable of batches: tensors, nested tuples, lists, namedtuples and mappings of them, or objects
            with their own ``.to`` (a Hugging Face ``BatchEncoding``). ``iter`` is called on the first request.
        device: Where the batches go; on CUDA, the consumer's current stream at each request is made to wait for
            that batch's copy.

    Example:
        >>> import torch
        >>> batches = [(torch.tensor([1.0, 2.0]), 0), (torch.tensor([3.0]), 1)]
        >>> [(x.sum().item(), y) for x, y in prefetch(batches, torch.device("cpu"))]
        [(3.0, 0), (3.0, 1)]
    """
    mover = _CudaMover(device) if device.type == "cuda" else _Mover(device)
    iterator = iter(batches)
    ahead = _read(iterator, mover)  # an error in batch 0 reaches the consumer's first request directly
    while ahead is not None:
        current = mover.hand_over(*ahead)  # before the next copy is issued, so step k waits for copy k only
        failure = None
        try:
            ahead = _read(iterator, mover)
        except Exception as error:  # not BaseException: Ctrl-C must stop the pass now, not one batch later
            ahead, failure = None, error
        yield current
        if failure is not None:
            try:
                raise failure
            finally:
                # The traceback keeps this frame; without this, the frame and the error would keep each other (and
                # batch k) alive until the cycle collector runs.
                del failure, current


def _read(iterator: Iterator[Any], mover: _Mover) -> tuple[Any, list[torch.Tensor]] | None:
    """The next batch, its copy issued, with the tensors copied for it; ``None`` once ``iterator`` is exhausted."""
    try:
        batch = next(iterator)
    except StopIteration:
        return None
    return mover.send(batch)


class _Mover:
    """Moves batches with ``to_device``: on a device without side streams the copy is issued in order."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def send(self, batch: Any) -> tuple[Any, list[torch.Tensor]]:
        return to_device(batch, self.device), []

    def hand_over(self, moved: Any, copied: list[torch.Tensor]) -> Any:
        return moved


class _CudaMover(_Mover):
    """Copies batches to one CUDA device on a side stream of its own, and hands them over to the consumer's stream."""

    def __init__(self, device: torch.device) -> None:
        # Compare tensors' devices with an indexed device: tensors say "cuda:0", never "cuda".
        index = torch.cuda.current_device() if device.index is None else device.index
        super().__init__(torch.device("cuda", index))
        self.side = torch.cuda.Stream(device=self.device)

    def send(self, batch: Any) -> tuple[Any, list[torch.Tensor]]:
        copied: list[torch.Tensor] = []
        return self._move(batch, copied), copied

    def hand_over(self, moved: Any, copied: list[torch.Tensor]) -> Any:
        consumer = torch.cuda.current_stream(self.device)
        # The consumer's kernels are queued on its own stream; without this wait they could read a tensor whose copy
        # on the side stream has not finished.
        consumer.wait_stream(self.side)
        for tensor in copied:
            # The memory was allocated on the side stream, so once the consumer drops the batch the allocator would
            # hand it to the next copy there, while the consumer's stream may still be reading it. This defers reuse
            # until the work queued on the consumer's stream so far is done.
            tensor.record_stream(consumer)
        return moved

    def _move(self, data: Any, copied: list[torch.Tensor]) -> Any:
        if isinstance(data, torch.Tensor):
            return self._copy(data, copied)
        if isinstance(data, (tuple, list)):
            return rebuild(data, [self._move(item, copied) for item in data])
        if callable(getattr(data, "to", None)):
            return self._move_own(data, copied)
        if isinstance(data, Mapping):
            return {key: self._move(value, copied) for key, value in data.items()}
        return data

    def _copy(self, tensor: torch.Tensor, copied: list[torch.Tensor]) -> torch.Tensor:
        if tensor.device == self.device:
            return tensor
        # A copy from pageable memory goes through a staging buffer and blocks the host; from pinned memory it is a
        # DMA that runs beside compute. The pinned buffer may be dropped at once: torch's host allocator keeps it until
        # the copy has finished.
        if tensor.device.type == "cpu" and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        with torch.cuda.stream(self.side):
            moved = tensor.to(self.device, non_blocking=True)
        copied.append(moved)
        return moved

    def _move_own(self, data: Any, copied: list[torch.Tensor]) -> Any:
        """Moves an object by its own ``.to``, so that it keeps its type, as ``to_device`` would."""
        if not isinstance(data, Mapping):
            # Its tensors are out of sight, so record_stream cannot guard them: copy on the consumer's stream, in
            # order with its steps, giving up the overlap for this object only.
            return _call_to(data, self.device)
        # A mapping (a BatchEncoding) shows its tensors: copy on the side stream and guard them like any other.
        with torch.cuda.stream(self.side):
            moved = _call_to(data, self.device)
        copied.extend(value for value in moved.values() if isinstance(value, torch.Tensor))
        return moved


def _call_to(data: Any, device: torch.device) -> Any:
    try:
        return data.to(device, non_blocking=True)
    except TypeError:  # an older ``.to(device)`` that takes no non_blocking
        return data.to(device)
