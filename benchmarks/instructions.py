"""Instructions per epoch under valgrind's callgrind: a cost measure the machine's other tenants cannot disturb.

Wall-clock timings on a shared machine move by tens of percent with the neighbours' load, which can hide a 5 %
target either way. Instruction counts hardly move: the same program on the same inputs executes nearly the same
instructions, whatever else runs (they repeat to about 0.2 %). Each variant runs twice in a fresh process under
callgrind, for ``--short`` and for ``--long`` epochs; the difference divided by the extra epochs is the cost of one
steady-state epoch, without start-up, imports and the first epoch's warm-up. An instruction is not a fixed amount of
time, but the two loops run the same torch kernels on the same data, so the ratio of their counts is a fair, nearly
noise-free view of the overhead.

Two things would make the counts wander from run to run, and both are pinned: string hashing is seeded afresh in
every process, which changes how long dict lookups probe (``PYTHONHASHSEED=0``), and an idle OpenBLAS thread pool
(scipy's, loaded with torchmetrics) spins for as long as the scheduler lets it (the thread counts of ``run.py``).

    python benchmarks/instructions.py [--workload w1] [--short 2] [--long 5] [--jobs 2]

Slow: callgrind runs the program about 50 times slower (about 3 minutes per W1 run; valgrind must be installed).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from run import worker_env

HERE = Path(__file__).resolve().parent
VARIANTS = ("hand", "kerasish-v0", "kerasish-v1")


def count(workload: str, variant: str, epochs: int, folder: Path) -> int:
    """Instructions executed by one fresh worker process running ``epochs`` epochs."""
    out = folder / f"{variant}-{epochs}.json"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={folder / f'{variant}-{epochs}.cg'}",
        sys.executable,
        str(HERE / "_worker.py"),
        workload,
        variant,
        f"--epochs={epochs}",
        "--threads=1",
        f"--out={out}",
    ]
    env = {**worker_env(threads=1), "PYTHONHASHSEED": "0"}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    match = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"{variant} ({epochs} epochs) failed under callgrind:\n{result.stderr[-2000:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="w1", choices=["w1", "w2"])
    parser.add_argument("--short", type=int, default=2, help="epochs of the short run (default 2)")
    parser.add_argument("--long", type=int, default=5, help="epochs of the long run (default 5)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2: counts do not depend on it)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    if not 1 <= args.short < args.long:
        sys.exit(f"need 1 <= --short < --long; got {args.short} and {args.long}")
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        jobs = {
            (variant, epochs): pool.submit(count, args.workload, variant, epochs, Path(tmp))
            for variant in VARIANTS
            for epochs in (args.short, args.long)
        }
        counts = {key: job.result() for key, job in jobs.items()}
    per_epoch = {v: (counts[v, args.long] - counts[v, args.short]) / (args.long - args.short) for v in VARIANTS}
    print(f"{args.workload}: instructions per steady-state epoch (callgrind, epochs {args.short} → {args.long})")
    for variant in VARIANTS:
        ratio = per_epoch[variant] / per_epoch["hand"]
        print(f"  {variant:<12} {per_epoch[variant] / 1e6:10.1f} M   × hand {ratio:.4f}")


if __name__ == "__main__":
    main()
