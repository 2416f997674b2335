"""What writing the run state (``fit(state_path=...)``) costs per epoch, early in a run and after a long one.

A fit with ``state_path`` writes its whole state after every epoch (:meth:`kerasish.resume.RunState.save`). That
cost must not grow with the number of finished epochs, or a long run becomes quadratic. This script builds the
state of a small fit (MLP 64-32-10, Adam, StepLR, early stopping with best-weight restore) with a synthetic history
of ``--short`` and of ``--long`` epochs, then times ``--saves`` saves at each length, each after appending the
epoch's row as ``fit`` does, and prints the median milliseconds per save and the ratio long / short.

    .venv/bin/python benchmarks/state_save.py                    # epochs ~10 and ~1500, 40 saves each
    .venv/bin/python benchmarks/state_save.py --long 2000 --dir /dev/shm

The saves go to a file in ``--dir`` (a new temporary directory by default), with the ``fsync`` a real save does;
on a busy disk that part is noisy, and a directory on a RAM disk (``/dev/shm``) leaves the CPU work alone.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from kerasish import EarlyStopping, KerasModel, Monitor
from kerasish.callbacks import CallbackList
from kerasish.history import History, history_columns
from kerasish.resume import RunState

COLUMNS = history_columns(["acc"], has_val=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", type=int, default=10, help="finished epochs of the early measurement")
    parser.add_argument("--long", type=int, default=1500, help="finished epochs of the late measurement")
    parser.add_argument("--saves", type=int, default=40, help="timed saves at each length")
    parser.add_argument("--dir", type=Path, default=None, help="where the state file goes (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    for name in ("short", "long", "saves"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; got {getattr(args, name)}")
    if args.long <= args.short:
        parser.error(f"--long must be larger than --short; got --short {args.short} --long {args.long}")
    return args


def row(epoch: int, rng: random.Random) -> dict:
    """An epoch's row as a fit logs it: the epoch as an int, every other value a float."""
    return {"epoch": epoch, **{column: rng.random() for column in COLUMNS[1:]}}


def run_state(path: Path, epochs: int) -> RunState:
    """A fit's run state with ``epochs`` rows of history, its callbacks set up as ``fit`` sets them up."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    model = KerasModel(net, nn.CrossEntropyLoss(), optimizer=optimizer, lr_scheduler=scheduler, device="cpu")
    net(torch.zeros(1, 64)).sum().backward()
    optimizer.step()  # so the optimizer's state holds its moments, as after a real epoch
    history = History(COLUMNS)
    callbacks = CallbackList([EarlyStopping(Monitor("val_loss", "min"), patience=10**9, restore_best_weights=True)])
    callbacks.call("on_fit_begin", model, {})
    rng = random.Random(0)
    for epoch in range(1, epochs + 1):
        history.append(row(epoch, rng))
        callbacks.call("on_epoch_end", model, history.rows[-1])
    return RunState.open(path, False, model=model, history=history, callbacks=callbacks, runner=None, loader=[])


def time_saves(path: Path, epochs: int, saves: int) -> tuple[float, int]:
    """Median milliseconds per save from epoch ``epochs + 1`` on, and the file's final size in bytes."""
    run = run_state(path, epochs)
    run.save(epochs=10**9)  # the first save of a fit may do one-off work (a resumed run's earlier rows); not timed
    rng, times = random.Random(1), []
    for epoch in range(epochs + 1, epochs + saves + 1):
        run.history.append(row(epoch, rng))
        start = time.perf_counter()
        run.save(epochs=10**9)
        times.append(time.perf_counter() - start)
    size = path.stat().st_size
    path.unlink()
    return statistics.median(times) * 1e3, size


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "state.pt"
        time_saves(path, args.short, 5)  # warm-up: imports, allocator, first file in the directory
        short_ms, short_size = time_saves(path, args.short, args.saves)
        long_ms, long_size = time_saves(path, args.long, args.saves)
    print(f"{'epochs':>7}  {'ms/save':>8}  {'file KiB':>8}")
    print(f"{args.short:>7}  {short_ms:8.3f}  {short_size / 1024:8.1f}")
    print(f"{args.long:>7}  {long_ms:8.3f}  {long_size / 1024:8.1f}")
    print(f"ratio {args.long} / {args.short} epochs: {long_ms / short_ms:.2f}")


if __name__ == "__main__":
    main()
