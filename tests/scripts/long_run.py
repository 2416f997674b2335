"""A user's long-run script, as tests/test_long_runs.py runs it: killed in the middle of a pass, then resumed.

Epochs of ``steps_per_epoch`` batches over a shuffled data set that logs every ``__getitem__`` to a file, the run
state written every 2 optimizer steps. The same script runs in one process or under ``torchrun``::

    python tests/scripts/long_run.py OUT LABEL [--kill-at N] [--resume]
    torchrun --standalone --nproc_per_node=2 tests/scripts/long_run.py OUT LABEL ...

``--kill-at N`` sends SIGKILL to the process (rank 0 under torchrun) before its batch ``N`` (0-based, counted over
the fit) trains, as a crash or an out-of-memory kill would; without it the run ends and writes
``OUT/LABEL-rank<rank>.pt``: the history and the weights. ``OUT/LABEL-reads-rank<rank>.txt`` holds the indices read.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MeanSquaredError

from kerasish import Callback, KerasModel

WATCHDOG_SECONDS = 120
X = torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([[1.0], [-2.0], [0.5]])


class Logged(Dataset):
    """60 regression samples; every read is appended, flushed, to a file, so a killed run leaves its reads behind."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __len__(self) -> int:
        return len(X)

    def __getitem__(self, index: int):
        with open(self.path, "a") as log:
            log.write(f"{index}\n")
        return X[index], Y[index]


class Kill(Callback):
    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def on_train_batch_begin(self, model, logs):
        if self.seen == self.at and model.is_main_process:
            os.kill(os.getpid(), signal.SIGKILL)
        self.seen += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("label")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)  # never a rank left waiting forever
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))
    model = KerasModel(net, nn.MSELoss(), {"mse": MeanSquaredError()}, torch.optim.SGD(net.parameters(), lr=0.05))
    data = Logged(args.out / f"{args.label}-reads-rank{rank}.txt")
    train = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5))
    val = DataLoader(list(zip(X[:20], Y[:20], strict=True)), batch_size=10)
    callbacks = [Kill(-1 if args.kill_at is None else args.kill_at)]  # the same callbacks in every launch
    history = model.fit(
        train, val, epochs=4, steps_per_epoch=5, state_every_n_steps=2, state_path=args.out / "state.pt",
        resume=args.resume, callbacks=callbacks, verbose=0,
    )  # fmt: skip
    torch.save({"history": history.drop(columns="time").to_dict("list"), "net": net.state_dict()},
               args.out / f"{args.label}-rank{rank}.pt")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
