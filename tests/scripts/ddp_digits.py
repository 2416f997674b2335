"""A user's training script on the digits data, as tests/test_distributed.py runs it under torchrun.

Nothing here sets up processes, samplers or DDP: the same functions train in one process (the tests' references) or
data-parallel under ``torchrun``. Each scenario saves what it ends with (history, weights, evaluate, predict) to
``OUT/<scenario>-rank<rank>.pt`` for the tests to compare across ranks and against one process::

    torchrun --standalone --nproc_per_node=2 tests/scripts/ddp_digits.py OUT parity stops accumulate ...
"""

from __future__ import annotations

import faulthandler
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchmetrics.classification import MulticlassAccuracy

from kerasish import Callback, CSVLogger, EarlyStopping, KerasModel, ModelCheckpoint
from tests.helpers import digits_split

WATCHDOG_SECONDS = 150
WORKER_TIMEOUT_SECONDS = 60  # a loader worker that sends no batch for this long is an error, not a hang
TRAIN = 1400  # an even train set (no padded repeats), and a val set of 397 that does not divide by 2


def loaders(batch_size: int, *, shuffle: bool = False, workers: int = 0) -> tuple[DataLoader, DataLoader]:
    train, val = digits_split()
    generator = torch.Generator().manual_seed(0) if shuffle else None
    settings = {
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "timeout": WORKER_TIMEOUT_SECONDS if workers else 0,
    }
    return (
        DataLoader(train, batch_size=batch_size, shuffle=shuffle, generator=generator, **settings),
        DataLoader(val, batch_size=batch_size, **settings),
    )


def build(
    *, dropout: float = 0.0, adam: bool = False, wrap: Any = None, norm: bool = False, **kwargs: Any
) -> KerasModel:
    """The digits MLP with cross-entropy, a torchmetrics accuracy and a plain-function error rate."""
    torch.manual_seed(0)
    middle = nn.BatchNorm1d(32) if norm else nn.Dropout(dropout)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), middle, nn.Linear(32, 10))
    trained = net if wrap is None else wrap(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2) if adam else torch.optim.SGD(net.parameters(), lr=0.2)
    metrics = {
        "acc": MulticlassAccuracy(num_classes=10, average="micro"),
        "err": lambda preds, labels: (preds.argmax(1) != labels).float().mean(),
    }
    return KerasModel(trained, nn.CrossEntropyLoss(), metrics, optimizer, device="cpu", **kwargs)


def save(out: Path, name: str, model: KerasModel, **extra: Any) -> None:
    record = {
        "history": model.history.drop(columns="time", errors="ignore").to_dict("list"),
        "time": model.history["time"].tolist() if "time" in model.history else [],
        "weights": model.net.state_dict(),
        "world_size": model.world_size,
        **extra,
    }
    torch.save(record, out / f"{name}-rank{model.rank}.pt")


def parity(out: Path, batch_size: int = 16, strategy: Any = "auto") -> None:
    """Plain SGD, unshuffled: the same maths as one process with batches of ``batch_size * world_size``."""
    model = build(strategy=strategy)
    train_dl, val_dl = loaders(batch_size)
    model.fit(
        train_dl,
        val_dl,
        epochs=4,
        patience=None,
        ckpt_path=out / "best.pt",
        callbacks=[CSVLogger(out / "history.csv")],
        state_path=out / "state.pt",
        verbose=2,
    )
    save(out, "parity", model, evaluate=model.evaluate(val_dl), predict=model.predict(val_dl))


class StopOnOneRank(Callback):
    """Asks for a stop on rank 1 only: in a batch hook of epoch 2, or at the end of epoch 3."""

    def on_train_batch_end(self, model, logs):
        if model.rank == 1 and logs["epoch"] == 2 and logs["batch"] == 3:
            model.stop_training = True

    def on_epoch_end(self, model, logs):
        if model.rank == 1 and logs["epoch"] == 3:
            model.stop_training = True


def stops(out: Path, batch_size: int = 16, strategy: Any = "auto") -> None:
    """Early stopping (val_acc can never beat its first value by 0.5) and a stop asked for by one rank."""
    train_dl, val_dl = loaders(batch_size)
    model = build(strategy=strategy)
    model.fit(train_dl, val_dl, epochs=10, monitor="val_acc", mode="max", patience=2, min_delta=0.5, verbose=0)
    save(out, "early", model)
    model = build(strategy=strategy)
    model.fit(train_dl, val_dl, epochs=10, patience=None, callbacks=[StopOnOneRank()], verbose=0)
    save(out, "one_rank_stop", model)


def accumulate(out: Path, batch_size: int = 16, strategy: Any = "auto") -> None:
    """Windows of 3 batches; 44 batches a pass leave a short window of 2 at each pass's end."""
    model = build(strategy=strategy, accumulate_grad_batches=3)
    all_reduces = []
    if hasattr(model.step_net, "register_comm_hook"):  # DDP's: count its gradient all-reduces (one bucket here)

        def counted(state, bucket):
            all_reduces.append(1)
            return allreduce_hook(state, bucket)

        model.step_net.register_comm_hook(None, counted)
    train_dl, val_dl = loaders(batch_size)
    model.fit(train_dl, val_dl, epochs=2, patience=None, verbose=0)
    save(out, "accumulate", model, all_reduces=len(all_reduces))


def batchnorm(out: Path) -> None:
    """Batch-norm statistics differ per shard in training; every rank validates and keeps rank 0's."""
    model = build(norm=True)
    train_dl, val_dl = loaders(16, workers=2)
    model.fit(train_dl, val_dl, epochs=2, verbose=0)
    save(out, "batchnorm", model, evaluate=model.evaluate(val_dl))


class Recorded(Dataset):
    """A data set that records the index of every sample read, in order."""

    def __init__(self, data: Dataset) -> None:
        self.data, self.read = data, []

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        self.read.append(int(index))
        return self.data[index]


def shuffled(out: Path) -> None:
    """A shuffled loader: which train samples each rank reads, epoch by epoch."""
    train, val = digits_split()
    recorded = Recorded(train)
    model = build()
    shuffling = DataLoader(recorded, batch_size=16, shuffle=True)  # no generator: torch's seed, shared by rank 0
    model.fit(shuffling, DataLoader(val, batch_size=16), epochs=2, verbose=0)
    save(out, "shuffled", model, read=recorded.read)


def wrapped(out: Path) -> None:
    """A net the user wrapped in DDP: used as it is; checkpoints without ``module.``; a prefixed file still loads."""
    from torch.nn.parallel import DistributedDataParallel

    model = build(wrap=DistributedDataParallel)
    train_dl, val_dl = loaders(16)
    model.fit(train_dl, val_dl, epochs=1, ckpt_path=out / "wrapped_best.pt", verbose=0)
    if model.is_main_process:
        torch.save(model.step_net.state_dict(), out / "prefixed.pt")  # as a hand-written DDP script saves
    model.load_ckpt(out / "prefixed.pt")
    save(out, "wrapped", model, step_net_is_users=type(model.step_net).__name__)


def resumable(out: Path, epochs: int, state_path: Path | None, resume: bool = False, name: str = "whole") -> None:
    """Dropout (each rank its own seed), Adam, a shuffled loader, checkpoints kept in rotation."""
    model = build(dropout=0.2, adam=True)
    torch.manual_seed(100 + model.rank)
    train_dl, val_dl = loaders(16, shuffle=True)
    checkpoints = ModelCheckpoint(out / "epoch{epoch:02d}.pt", every_n_epochs=1, keep_last=2)
    stopping = EarlyStopping(patience=3, min_delta=0.01)
    model.fit(
        train_dl,
        val_dl,
        epochs=epochs,
        callbacks=[checkpoints, stopping],
        state_path=state_path,
        resume=resume,
        verbose=0,
    )
    save(out, name, model, written=list(checkpoints.written), evaluate=model.evaluate(val_dl))


def refused(out: Path) -> None:
    """Bad input under torchrun: the same clear error on every rank, before any step, and no rank left waiting."""
    model = build()
    train_dl, val_dl = loaders(16)
    weighted = DataLoader(train_dl.dataset, batch_size=16, sampler=WeightedRandomSampler(torch.ones(TRAIN), TRAIN))
    errors = []
    for train, kwargs in ((train_dl, {"state_path": out / "best.pt", "resume": True}), (weighted, {})):
        try:
            model.fit(train, val_dl, epochs=2, verbose=0, **kwargs)
        except ValueError as err:
            errors.append(str(err))
    save(out, "refused", model, errors=errors)


SCENARIOS = {
    "parity": parity,
    "stops": stops,
    "accumulate": accumulate,
    "wrapped": wrapped,
    "shuffled": shuffled,
    "batchnorm": batchnorm,
    "refused": refused,
    "cut": lambda out: resumable(out, 3, out / "run_state.pt", name="cut"),
    "whole": lambda out: resumable(out, 5, None),
    "resume": lambda out: resumable(out, 5, out / "run_state.pt", resume=True, name="resumed"),
}

if __name__ == "__main__":
    # Each rank ends itself, printing every thread's stack, if the script hangs (a rank left waiting in a collective
    # would otherwise wait for gloo's 30-minute timeout); tests/helpers.launch also kills the ranks, a little later.
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    folder = Path(sys.argv[1])
    for scenario in sys.argv[2:]:
        SCENARIOS[scenario](folder)
