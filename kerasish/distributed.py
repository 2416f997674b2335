"""Everything that knows about ranks: the process group, the DDP wrapper, loader sharding and reductions.

The rest of kerasish asks one small object, a :class:`Strategy`, and never imports ``torch.distributed`` itself. A
single-process run goes through the same calls, on the base class, which does nothing: no collective, no copy.

``KerasModel(strategy=...)`` picks one with :func:`make_strategy`:

- ``"auto"`` (the default): data-parallel (:class:`DataParallel`) when a process group is initialised, or when the
  environment ``torchrun`` sets up is present (a group is then initialised: NCCL for CUDA tensors and gloo for CPU
  ones on a CUDA device, gloo alone on CPU); one process otherwise.
- ``"ddp"``: data-parallel, and a clear error when neither a group nor the torchrun environment is there.
- ``None``: one process, whatever the environment (independent workers, such as a sweep under torchrun).

Collectives are reached by every rank in the same order: each one sits at a point of ``fit``, ``evaluate`` or
``predict`` that every rank passes (the end of a pass, the end of an epoch, the start of a fit), never behind a rank
check, a clock or data that can differ between ranks.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import os
import pickle
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, RandomSampler

from kerasish.device import resolve_device
from kerasish.sharding import ContiguousShard, shardable_sampler, with_sampler

T = TypeVar("T")

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# How long the main thread gives up the GIL at exit, for gloo's worker threads to free the last collectives' tensors.
EXIT_GRACE_S = 0.05
# Arguments of DistributedDataParallel that kerasish sets itself, or that would make its reductions disagree with the
# gradients' (they run over the default group).
RESERVED_DDP_KWARGS = ("module", "device_ids", "output_device", "process_group", "device_mesh")


class Strategy:
    """One process: every method is the identity or does nothing. The base of the data-parallel strategy.

    Attributes:
        rank: this process's global rank (0 here).
        world_size: how many processes train together (1 here).
        device: where this process's net, batches and metrics live.
    """

    rank = 0
    world_size = 1

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @property
    def is_main_process(self) -> bool:
        """Whether this process prints and writes files: global rank 0."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether several processes train one model together (torchmetrics states then sync across them)."""
        return False

    def wrap(self, net: nn.Module, given: nn.Module) -> nn.Module:
        """The module training steps run through: ``net`` is the plain module, on its device, and ``given`` what the
        user passed (the same, or a ``DistributedDataParallel`` around it)."""
        return net

    def train_loader(self, loader: Iterable, argument: str = "train_data") -> Iterable:
        """The loader this process trains on: its shard of ``loader`` (``argument`` names it in errors)."""
        return loader

    def eval_loader(self, loader: Iterable, argument: str = "data") -> tuple[Iterable, bool]:
        """The loader this process evaluates or predicts on, and whether it is a shard of ``loader``."""
        return loader, False

    def set_epoch(self, loader: Iterable, epoch: int) -> None:
        """Tells a sampler with ``set_epoch`` (a ``DistributedSampler``) which epoch begins, so it reshuffles."""
        sampler = getattr(loader, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-d ``values``, stacked in rank order: shape ``(world_size, len(values))``."""
        return values.unsqueeze(0)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank."""
        return flag

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run by the main process; its result, or the exception it raised, on every rank."""
        return fn()

    def gather_objects(self, obj: T) -> list[T]:
        """Every rank's picklable ``obj`` on the main process, in rank order (``[]`` on the others)."""
        return [obj]

    def all_gather_objects(self, obj: T) -> list[T]:
        """Every rank's picklable ``obj`` on every rank, in rank order (the shards of ``predict``'s outputs)."""
        return [obj]

    def no_sync(self, net: nn.Module) -> contextlib.AbstractContextManager:
        """A context in which a step's gradients stay local (for accumulation's non-final micro-batches)."""
        return contextlib.nullcontext()

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Averages gradients computed under :meth:`no_sync` across ranks, as DDP would have."""

    def sync_buffers(self, net: nn.Module) -> None:
        """Gives every rank the main process's buffers (batch-norm statistics), as DDP does before each forward."""


class DataParallel(Strategy):
    """Data-parallel training over the default process group, with ``DistributedDataParallel``.

    Each process trains on its shard of the train loader; the gradients are averaged by DDP in the backward pass;
    the loss and metric sums are reduced at the end of each pass, so every rank records the same history and takes
    the same decisions. Build it through :func:`make_strategy`.

    Args:
        device: this process's device (``cuda:LOCAL_RANK`` under torchrun on GPUs).
        ddp_kwargs: passed to ``DistributedDataParallel`` (``find_unused_parameters``, ``static_graph``, ...).
    """

    def __init__(self, device: torch.device, ddp_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__(device)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.ddp_kwargs = dict(ddp_kwargs or {})
        self.ddp: DistributedDataParallel | None = None

    @property
    def distributed(self) -> bool:
        return True

    def wrap(self, net: nn.Module, given: nn.Module) -> nn.Module:
        if isinstance(given, DistributedDataParallel):
            if self.ddp_kwargs:
                raise ValueError(
                    f"ddp_kwargs={self.ddp_kwargs!r} cannot reach a net you wrapped in DistributedDataParallel "
                    "yourself; pass the plain net and let kerasish wrap it, or drop ddp_kwargs"
                )
            self.ddp = given
        else:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(net, device_ids=device_ids, **self.ddp_kwargs)
        return self.ddp

    def train_loader(self, loader: Iterable, argument: str = "train_data") -> Iterable:
        sampler = shardable_sampler(loader, argument, self.world_size)
        if sampler is None or isinstance(sampler, DistributedSampler):
            return loader
        seed = loader.generator.initial_seed() if loader.generator is not None else torch.initial_seed()
        sharded = DistributedSampler(
            loader.dataset,
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=isinstance(sampler, RandomSampler),
            # One seed for all ranks: each would otherwise shuffle its own permutation and the shards would overlap.
            seed=self.from_main(lambda: seed),
            drop_last=loader.drop_last,
        )
        return with_sampler(loader, sharded)

    def eval_loader(self, loader: Iterable, argument: str = "data") -> tuple[Iterable, bool]:
        sampler = shardable_sampler(loader, argument, self.world_size)
        if sampler is None or isinstance(sampler, DistributedSampler):
            return loader, False
        return with_sampler(loader, ContiguousShard(len(loader.dataset), self.rank, self.world_size)), True

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(values) for _ in range(self.world_size)]
        dist.all_gather(gathered, values)
        return torch.stack(gathered)

    def any(self, flag: bool) -> bool:
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def from_main(self, fn: Callable[[], T]) -> T:
        box: list[Any] = [None]
        if self.is_main_process:
            try:
                box[0] = (True, fn())
            except Exception as err:  # raised again on every rank, below
                box[0] = (False, _picklable(err))
        dist.broadcast_object_list(box, src=0)
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def gather_objects(self, obj: T) -> list[T]:
        gathered: list[Any] | None = [None] * self.world_size if self.is_main_process else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered or []

    def all_gather_objects(self, obj: T) -> list[T]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def no_sync(self, net: nn.Module) -> contextlib.AbstractContextManager:
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        grads = [param.grad for param in params if param.grad is not None]
        for group in _by_dtype(grads):
            flat = torch.cat([grad.reshape(-1) for grad in group])
            dist.all_reduce(flat)
            flat.div_(self.world_size)
            _unflatten_into(flat, group)

    def sync_buffers(self, net: nn.Module) -> None:
        if self.ddp is None or not self.ddp.broadcast_buffers:
            return
        for group in _by_dtype([buffer for buffer in net.buffers()]):
            flat = torch.cat([buffer.reshape(-1) for buffer in group])
            dist.broadcast(flat, src=0)
            _unflatten_into(flat, group)


def is_main_process(model: Any) -> bool:
    """Whether ``model``'s process is the one that prints and writes files; anything without the attribute is."""
    return getattr(model, "is_main_process", True)


def make_strategy(strategy: Any, *, device: str | torch.device | None, ddp_kwargs: Any, net: nn.Module) -> Strategy:
    """Checks ``strategy`` and ``ddp_kwargs``, initialises a process group when one is wanted, picks the device.

    Under data parallelism ``device=None`` and ``"cuda"`` mean ``cuda:LOCAL_RANK``, and CUDA's current device is
    set to it (as NCCL needs).
    """
    ddp_kwargs = _check_ddp_kwargs(ddp_kwargs)
    if isinstance(strategy, Strategy):
        return strategy
    if strategy is not None and not (isinstance(strategy, str) and strategy in ("auto", "ddp")):
        raise ValueError(
            f"strategy={strategy!r} is not valid; use 'auto' (data-parallel under torchrun, else one process), "
            "'ddp' (data-parallel, required) or None (never distributed)"
        )
    wrapped = isinstance(net, DistributedDataParallel)
    if strategy is None or not _wants_ddp(strategy):
        if wrapped:
            raise ValueError(
                f"net is a DistributedDataParallel but strategy={strategy!r} trains in one process; pass "
                "strategy='auto' (kerasish then uses your wrapper) or the plain net.module"
            )
        return Strategy(_worker_device(device))
    local_device = _ddp_device(device, _local_rank())
    if not dist.is_initialized():
        _init_process_group(local_device)
    _give_workers_the_gil_at_exit()
    return DataParallel(local_device, ddp_kwargs)


def unwrap(net: nn.Module) -> nn.Module:
    """The plain module inside a ``DistributedDataParallel`` wrapper; any other net as it is."""
    return net.module if isinstance(net, DistributedDataParallel) else net


def _wants_ddp(strategy: str) -> bool:
    if dist.is_available() and dist.is_initialized():
        return True
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if not missing and dist.is_available():
        return True
    if strategy == "auto":
        return False
    reason = (
        "this torch has no torch.distributed"
        if not dist.is_available()
        else (f"no process group is initialised and the torchrun environment lacks {', '.join(missing)}")
    )
    raise RuntimeError(
        f"strategy='ddp' needs several processes, but {reason}. Launch the script with "
        "`torchrun --nproc_per_node=N script.py` (or call torch.distributed.init_process_group() before building "
        "KerasModel), or use strategy='auto' to train in one process when not launched so"
    )


def _local_rank() -> int:
    """torchrun's LOCAL_RANK; under a group initialised by hand without it, the global rank modulo the GPUs."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return dist.get_rank() % count if count and dist.is_initialized() else 0


def _worker_device(device: str | torch.device | None) -> torch.device:
    """One process's device; under torchrun (independent workers) ``None`` and ``"cuda"`` mean ``cuda:LOCAL_RANK``."""
    if "LOCAL_RANK" in os.environ and torch.cuda.is_available() and (device is None or str(device) == "cuda"):
        return _ddp_device(device, int(os.environ["LOCAL_RANK"]))
    return resolve_device(device)


def _picklable(err: Exception) -> Exception:
    """``err`` if it survives pickling (to reach the other ranks), else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # any failure to pickle or rebuild: send the words instead
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


def _ddp_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", local_rank)
    if resolved.type == "mps":
        raise ValueError(f"device={device!r}: MPS has no multi-process backend; use device='cpu' or strategy=None")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    return resolved


def _init_process_group(device: torch.device) -> None:
    # Not destroyed at exit on purpose: a net still alive then (a script's global) would free its DDP reducer after
    # the group, and gloo's destructor then waits, holding the GIL, on a thread that needs it (seen to hang).
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")


@functools.cache  # once per process, however many models are built
def _give_workers_the_gil_at_exit() -> None:
    """Makes the interpreter's exit wait a moment, GIL released, before it finalizes.

    gloo's worker threads free a collective's tensors just after its caller has the result, and freeing a tensor
    that Python has seen takes the GIL. A script that ends right after its last collective (``evaluate`` or
    ``predict`` as its last line) reaches finalization first; a worker asking for the GIL then is ended by the
    interpreter in the middle of a C++ destructor, and the process aborts ("terminate called without an active
    exception", SIGABRT; torch 2.13: 17 of 30 runs of a 2-rank script ending in ``evaluate``). A worker that is
    about to free is waiting for the GIL by then, or within microseconds, so a short release is enough: 0 of 30 runs
    aborted with it, and 0 of 30 that also called ``destroy_process_group()`` (10 of 20 without).
    """
    atexit.register(time.sleep, EXIT_GRACE_S)


def _check_ddp_kwargs(ddp_kwargs: Any) -> dict[str, Any]:
    if ddp_kwargs is None:
        return {}
    if not isinstance(ddp_kwargs, Mapping) or not all(isinstance(key, str) for key in ddp_kwargs):
        raise TypeError(
            f"ddp_kwargs={ddp_kwargs!r} is not valid; use a dict of DistributedDataParallel arguments, "
            "such as {'find_unused_parameters': True}"
        )
    known = set(inspect.signature(DistributedDataParallel.__init__).parameters) - {"self", *RESERVED_DDP_KWARGS}
    for key in ddp_kwargs:
        if key in RESERVED_DDP_KWARGS:
            raise ValueError(f"ddp_kwargs[{key!r}] is set by kerasish; leave it out")
        if key not in known:
            raise ValueError(
                f"ddp_kwargs[{key!r}] is not an argument of DistributedDataParallel; valid: {', '.join(sorted(known))}"
            )
    return dict(ddp_kwargs)


def _by_dtype(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    return list(groups.values())


def _unflatten_into(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()
