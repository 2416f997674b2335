"""Where a W1 step's microseconds go: cProfile of a kerasish fit next to the hand-written loop.

    python benchmarks/profile_step.py [--epochs 3] [--threads 1] [--top 15] [--verbose 0|1]

Each variant first runs a one-epoch fit unprofiled (warm-up), then a profiled fit on freshly built parts. The report
gives, per step (train and val steps together), the time in each kind of code (kerasish's own frames, torch's Python,
torchmetrics, C functions such as the torch ops, the rest), the kerasish functions by own time, and the top functions
overall. cProfile adds a fixed cost to every Python call, so code made of many small functions (a wrapper's) looks
dearer than it is; compare the two variants' totals with that in mind, and take the real overhead from ``run.py``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
from collections import defaultdict
from collections.abc import Callable

import torch
from hand_loop import HandLoop
from kerasish_run import fit_kerasish
from workloads import WORKLOADS, Parts, build

# (label, substring of a function's file name); the first that matches names the kind of code.
KINDS = (
    ("kerasish", "/kerasish/"),
    ("benchmark (hand loop)", "/benchmarks/"),
    ("torchmetrics", "/torchmetrics/"),
    ("torch (Python)", "/torch/"),
    ("C functions (torch ops, builtins)", "~"),
)
OTHER = "other Python (stdlib, tqdm, pandas)"
Stats = dict[tuple[str, int, str], tuple]


def kind_of(filename: str) -> str:
    """The label of the code ``filename`` holds (cProfile names C functions' file ``~``)."""
    normalized = filename.replace("\\", "/")
    return next((label for label, marker in KINDS if marker in normalized), OTHER)


def profiled(fit: Callable[[Parts], object], epochs: int, threads: int) -> tuple[Stats, int]:
    """Runs ``fit`` once unprofiled, then profiled on fresh parts; returns the raw stats and the steps profiled."""
    workload = WORKLOADS["w1"]
    device = torch.device("cpu")
    torch.set_num_threads(threads)
    fit(build(workload, device), 1)
    parts = build(workload, device)
    profiler = cProfile.Profile()
    profiler.enable()
    fit(parts, epochs)
    profiler.disable()
    steps = epochs * (len(parts.train_loader) + len(parts.val_loader))
    return pstats.Stats(profiler).stats, steps


def by_kind(stats: Stats) -> dict[str, float]:
    """Own time (tottime) in seconds, summed per kind of code."""
    totals: dict[str, float] = defaultdict(float)
    for (filename, _line, _name), (_cc, _calls, tottime, _cum, _callers) in stats.items():
        totals[kind_of(filename)] += tottime
    return totals


def top_functions(stats: Stats, count: int, only: str | None = None) -> list[tuple[float, float, str]]:
    """The ``count`` functions with the most own time (of one kind, if given): ``(tottime, calls, "file:line(fn)")``."""
    rows = [
        (tottime, calls, f"{_short(filename)}:{line}({name})")
        for (filename, line, name), (_cc, calls, tottime, _cum, _callers) in stats.items()
        if only is None or kind_of(filename) == only
    ]
    return sorted(rows, reverse=True)[:count]


def _short(filename: str) -> str:
    """``.../site-packages/torch/nn/modules/module.py`` -> ``torch/nn/modules/module.py``."""
    normalized = filename.replace("\\", "/")
    for marker in ("/site-packages/", "/main/", "/benchmarks/"):
        if marker in normalized:
            return normalized.split(marker, 1)[1]
    return normalized


def print_kinds(results: dict[str, tuple[Stats, int]]) -> None:
    labels = [label for label, _ in KINDS] + [OTHER]
    print(f"\nµs per step under cProfile, by kind of code (own time; {' | '.join(results)})")
    totals = {name: by_kind(stats) for name, (stats, _steps) in results.items()}
    for label in [*labels, "total"]:
        cells = []
        for name, (_stats, steps) in results.items():
            seconds = sum(totals[name].values()) if label == "total" else totals[name].get(label, 0.0)
            cells.append(f"{seconds / steps * 1e6:10.1f}")
        print(f"  {label:<38}" + "".join(cells))


def print_top(title: str, rows: list[tuple[float, float, str]], steps: int) -> None:
    print(f"\n{title}\n  {'µs/step':>9} {'calls/step':>10}  function")
    for tottime, calls, where in rows:
        print(f"  {tottime / steps * 1e6:9.2f} {calls / steps:10.2f}  {where}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="profiled epochs per variant (default 3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=15, help="functions per list (default 15)")
    parser.add_argument("--verbose", type=int, choices=(0, 1), default=0, help="kerasish's verbose (default 0)")
    args = parser.parse_args(argv)

    def hand(parts: Parts, epochs: int) -> object:
        return HandLoop(parts).fit(epochs=epochs, patience=epochs)

    def kerasish(parts: Parts, epochs: int) -> object:
        return fit_kerasish(parts, epochs=epochs, patience=epochs, verbose=args.verbose)

    name = f"kerasish v={args.verbose}"
    results = {
        name: profiled(kerasish, args.epochs, args.threads),
        "hand-written": profiled(hand, args.epochs, args.threads),
    }
    stats, steps = results[name]
    print(f"W1, {args.epochs} profiled epochs, {steps} steps per variant, {args.threads} thread(s)")
    print_kinds(results)
    print_top(f"kerasish functions by own time ({name})", top_functions(stats, args.top, "kerasish"), steps)
    print_top(f"all functions by own time ({name})", top_functions(stats, args.top), steps)
    hand_stats, hand_steps = results["hand-written"]
    print_top("all functions by own time (hand-written)", top_functions(hand_stats, args.top), hand_steps)


if __name__ == "__main__":
    main()
