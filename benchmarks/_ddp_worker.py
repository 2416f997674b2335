"""One rank of a two-process W1 run, started by ``torchrun`` (``ddp_run.py`` does it):

    torchrun --standalone --nproc_per_node=2 benchmarks/_ddp_worker.py hand|kerasish --epochs 20 --out /tmp/run

Each rank writes its record as JSON to ``<out>-rank<r>.json``: ``ddp_run.py`` takes the timings from rank 0 and
checks that every rank ended with the same history and the same weights. Nothing is printed. Epochs are timed by the
wall clock and by the main thread's CPU clock (``time.thread_time``), which other tenants of the machine disturb
far less: time a rank spends preempted or waiting for the other rank in a collective is not counted.
"""

from __future__ import annotations

import argparse
import faulthandler
import itertools
import json
import math
import os
import platform
import signal
from pathlib import Path

import torch
from workloads import WORKLOADS, Parts, RunResult, build, fingerprint

VARIANTS = ("hand", "kerasish")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="stem of the per-rank JSON files")
    return parser.parse_args(argv)


def fit_variant(variant: str, parts: Parts, epochs: int) -> tuple[RunResult, list[float]]:
    """Fits with the hand-written DDP loop or with kerasish; ``patience=epochs`` as in ``_worker.py``.

    Returns:
        The run's result and its main-thread CPU stamps: the fit's start, then each epoch's end.
    """
    if variant == "hand":
        from ddp_hand_loop import fit_hand_ddp

        return fit_hand_ddp(parts, epochs=epochs, patience=epochs)
    from ddp_kerasish_run import fit_kerasish_ddp

    return fit_kerasish_ddp(parts, epochs=epochs, patience=epochs)


def steps_per_epoch(parts: Parts, rank: int, world: int) -> tuple[int, int]:
    """This rank's train and val batches per epoch: a padded 1/world of the train set, a contiguous val shard."""
    batch = parts.train_loader.batch_size
    train = math.ceil(math.ceil(len(parts.train_loader.dataset) / world) / batch)
    base, extra = divmod(len(parts.val_loader.dataset), world)
    return train, math.ceil((base + (rank < extra)) / batch)


def main(argv: list[str] | None = None) -> None:
    faulthandler.register(signal.SIGUSR1)  # ddp_run.py asks for the stacks of a run that hangs, then kills it
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    parts = build(WORKLOADS["w1"], torch.device("cpu"), seed=args.seed)
    result, cpu_stamps = fit_variant(args.variant, parts, args.epochs)
    train_steps, val_steps = steps_per_epoch(parts, rank, world)
    record = {
        "workload": "w1",
        "variant": args.variant,
        "rank": rank,
        "world_size": world,
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "train_steps": train_steps,
        "val_steps": val_steps,
        "history": result.history,
        "epoch_seconds": result.epoch_seconds(),
        "epoch_cpu_seconds": [later - earlier for earlier, later in itertools.pairwise(cpu_stamps)],
        "fit_seconds": result.fit_end - result.fit_start,
        "weights": fingerprint(parts.net),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    Path(f"{args.out}-rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
