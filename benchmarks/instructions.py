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
    python benchmarks/instructions.py --ddp [--short 2] [--long 5] [--jobs 1] [--timeout 2400] [--retries 1]

``--ddp`` counts W1 on two processes instead: the hand-written DDP loop and kerasish with ``strategy="auto"``, the
variants of ``_ddp_worker.py``. Every run is a fresh ``python -m torch.distributed.run --standalone
--nproc_per_node=2 --no-python valgrind --tool=callgrind ... python _ddp_worker.py``: each rank runs under a
callgrind of its own, which writes its own file (``--callgrind-out-file=...-rank%q{RANK}.cg``, valgrind puts in the
rank from the environment). A rank's count is its file's ``totals:`` line, the last line callgrind writes, so a file
cut short is seen as such (the ``Collected :`` lines of the two ranks would land in one stream, told apart only by
their process ids). Prints each rank's instructions per steady-state epoch, the mean of the ranks, and kerasish's
mean over the hand loop's against the target, ≤ 1.02 ×; exits 1 when it is missed. A run that outlasts
``--timeout`` is killed with every process below torchrun (``ddp_run.kill_run``: each rank has a session of its
own), and like a run that left a rank's record or file missing or incomplete, tried again (``--retries``). A run
whose torchrun exited non-zero although both ranks wrote their record and a complete file is counted, and named
under the table: its exit was cut short (before ac0c0e2, gloo's teardown could abort a rank with "terminate called
without an active exception"), so its count may lack part of a normal exit's instructions, which then do not cancel
between the short and the long run. ``--jobs 1`` is the default there: each run already keeps two
processes busy.

Slow: callgrind runs the program about 50 times slower (about 3 minutes per W1 run; valgrind must be installed). A
two-process run took 6–8 minutes on 2 busy cores, nearly all of it start-up, so a longer ``--long`` costs little:
``--ddp --short 2 --long 8 --jobs 2`` took 16 minutes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ddp_run import WORLD, RunFailed, kill_run
from run import worker_env

HERE = Path(__file__).resolve().parent
VARIANTS = ("hand", "kerasish-v0", "kerasish-v1")
DDP_VARIANTS = ("hand", "kerasish")
DDP_TARGET = 1.02
ABORT = "terminate called without an active exception"
# Pinned in every run: see the module docstring.
ENV = {**worker_env(threads=1), "PYTHONHASHSEED": "0"}


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
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=ENV)
    match = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"{variant} ({epochs} epochs) failed under callgrind:\n{result.stderr[-2000:]}")
    return int(match.group(1))


@dataclass
class DdpRun:
    """One torchrun under callgrind: the instructions each rank executed (rank 0 first), its wall time, and
    ``problem``, what went wrong at its exit when it was counted all the same."""

    variant: str
    epochs: int
    counts: list[int]
    seconds: float
    steps: tuple[int, int]
    problem: str | None = None


def ddp_command(variant: str, epochs: int, stem: Path) -> list[str]:
    """torchrun of ``_ddp_worker.py``, each rank under callgrind, writing ``<stem>-rank<r>.cg`` and ``.json``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"]
    command += ["--no-python", shutil.which("valgrind") or "valgrind", "--tool=callgrind"]
    command += [f"--callgrind-out-file={stem}-rank%q{{RANK}}.cg", sys.executable, str(HERE / "_ddp_worker.py")]
    return [*command, variant, f"--epochs={epochs}", "--threads=1", f"--out={stem}"]


def cg_total(path: Path) -> int | None:
    """The instructions a callgrind file counts, from its ``totals:`` line; None when the file is missing or has
    none (callgrind writes that line last, so a rank killed while writing leaves a file without it)."""
    if not path.exists():
        return None
    with open(path, "rb") as file:
        file.seek(max(0, path.stat().st_size - 200))
        match = re.search(rb"^totals: (\d+)\s*\Z", file.read(), re.MULTILINE)
    return int(match.group(1)) if match else None


class Launcher:
    """Starts the torchruns and keeps the live ones, so that the main thread can end them all (Ctrl-C, SIGTERM, a
    failed run) while other threads wait on them; once closed, it starts no more."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.closed = False

    def run(self, command: list[str], log_path: Path) -> int | None:
        """Runs ``command`` with its output in ``log_path``; its exit status, or None when it outlasted the timeout
        and was killed, with every process below it, after the ranks printed their stacks to the log."""
        with open(log_path, "w") as log, self.lock:
            if self.closed:
                raise RuntimeError("stopping: no new run is started")
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
            self.live.add(proc)
        try:
            return proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            kill_run(proc, dump_stacks=True)
            return None
        finally:
            with self.lock:
                self.live.discard(proc)

    def close(self) -> None:
        """Kills every live run, each with the processes below it."""
        with self.lock:
            self.closed = True
            live = list(self.live)
        for proc in live:
            kill_run(proc)


def count_ddp(launcher: Launcher, variant: str, epochs: int, *, folder: Path, retries: int) -> DdpRun:
    """One run of ``variant`` for ``epochs`` epochs, tried again (``retries`` times) while it times out or leaves a
    rank's record or callgrind file missing or incomplete.

    Raises:
        RunFailed: no try gave a count; the last try's reason and the end of its output.
    """
    for attempt in range(retries + 1):
        stem = folder / f"{variant}-{epochs}-try{attempt}"
        log_path = Path(f"{stem}.log")
        started = time.perf_counter()
        status = launcher.run(ddp_command(variant, epochs, stem), log_path)
        seconds = time.perf_counter() - started
        counts = [cg_total(Path(f"{stem}-rank{rank}.cg")) for rank in range(WORLD)]
        records = [Path(f"{stem}-rank{rank}.json") for rank in range(WORLD)]
        what = f"{variant} ({epochs} epochs, try {attempt + 1} of {retries + 1})"
        if status is None:
            message = f"{what}: no result after {launcher.timeout:.0f} s (--timeout); killed"
        elif None in counts or not all(record.exists() for record in records):
            missing = [f"rank {r}" for r in range(WORLD) if counts[r] is None or not records[r].exists()]
            message = f"{what}: exit status {status}; no record or complete callgrind file from {', '.join(missing)}"
        else:
            print(f"  {variant} {epochs} epochs: {seconds:.0f} s, exit status {status}", file=sys.stderr)
            return DdpRun(variant, epochs, counts, seconds, read_steps(records[0]), exit_problem(status, log_path))
        if attempt == retries:
            raise RunFailed(message, log_path, timed_out=status is None)
        print(f"  {message}; retrying", file=sys.stderr)
    raise AssertionError("unreachable")


def read_steps(record: Path) -> tuple[int, int]:
    """A rank's train and val steps per epoch, from the record ``_ddp_worker.py`` wrote."""
    fields = json.loads(record.read_text())
    return fields["train_steps"], fields["val_steps"]


def exit_problem(status: int, log_path: Path) -> str | None:
    """None for a clean exit; else the exit status in words, naming gloo's teardown abort when the log shows it."""
    if status == 0:
        return None
    aborted = f' ("{ABORT}" in its output)' if ABORT in log_path.read_text(errors="replace") else ""
    return (
        f"torchrun exited with status {status}{aborted} after both ranks wrote their record and a complete file: "
        "a rank's exit was cut short, so its count may lack what a clean exit executes"
    )


def measure_ddp(args: argparse.Namespace) -> dict[tuple[str, int], DdpRun]:
    """Every variant of ``_ddp_worker.py`` at both lengths, ``--jobs`` torchruns at a time; a failed run ends them
    all (as do Ctrl-C and SIGTERM), each with the processes below it.

    Raises:
        RunFailed: a run gave no count after its retries.
    """
    launcher = Launcher(args.timeout)
    with tempfile.TemporaryDirectory(prefix="kerasish-callgrind-") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        try:
            jobs = {
                (variant, epochs): pool.submit(
                    count_ddp, launcher, variant, epochs, folder=Path(tmp), retries=args.retries
                )
                for variant in DDP_VARIANTS
                for epochs in (args.short, args.long)
            }
            return {key: job.result() for key, job in jobs.items()}
        except BaseException:
            launcher.close()
            raise


def report_ddp(runs: dict[tuple[str, int], DdpRun], short: int, long: int) -> bool:
    """Prints the counts per steady-state epoch, per rank and their mean, the ratio against the target, and each
    run's whole counts; True when the target is met."""
    per_epoch = {}
    for variant in DDP_VARIANTS:
        pairs = zip(runs[variant, short].counts, runs[variant, long].counts, strict=True)
        per_epoch[variant] = [(later - earlier) / (long - short) for earlier, later in pairs]
    mean = {variant: sum(counts) / len(counts) for variant, counts in per_epoch.items()}
    train, val = runs["hand", short].steps
    print(f"W1 on {WORLD} processes (torchrun, gloo, CPU), 1 thread per rank, {train}+{val} steps per epoch per rank")
    print(f"instructions per steady-state epoch (callgrind, epochs {short} → {long}):")
    print(f"  {'variant':<10}" + "".join(f"{f'rank {rank}':>12}" for rank in range(WORLD)) + f"{'mean':>12}   × hand")
    for variant in DDP_VARIANTS:
        ranks = "".join(f"{count / 1e6:10.1f} M" for count in per_epoch[variant])
        print(f"  {variant:<10}{ranks}{mean[variant] / 1e6:10.1f} M   {mean[variant] / mean['hand']:.4f}")
    ratio = mean["kerasish"] / mean["hand"]
    extra = (mean["kerasish"] - mean["hand"]) / (train + val)
    verdict = "PASS" if ratio <= DDP_TARGET else "FAIL"
    print(f"kerasish × hand {ratio:.4f}: {verdict} (≤ {DDP_TARGET}); {extra / 1e3:+.1f} k instructions per step")
    print("whole runs, instructions per rank:")
    for run in runs.values():
        ranks = "".join(f"  rank {rank} {count / 1e6:10.1f} M" for rank, count in enumerate(run.counts))
        print(f"  {run.variant:<10}{run.epochs:3d} epochs{ranks}  {run.seconds:6.0f} s")
        if run.problem:
            print(f"    counted, but {run.problem}")
    return ratio <= DDP_TARGET


def measure_one_process(args: argparse.Namespace) -> None:
    """The variants of ``_worker.py`` at both lengths, ``--jobs`` at a time; prints the counts per epoch."""
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="w1", choices=["w1", "w2"])
    parser.add_argument("--short", type=int, default=2, help="epochs of the short run (default 2)")
    parser.add_argument("--long", type=int, default=5, help="epochs of the long run (default 5)")
    parser.add_argument("--ddp", action="store_true", help="W1 on two processes under torchrun: hand, kerasish")
    parser.add_argument("--jobs", type=int, help="runs at once (default 2, with --ddp 1): counts do not depend on it")
    parser.add_argument("--timeout", type=float, default=2400, help="--ddp: seconds one torchrun may take (2400)")
    parser.add_argument("--retries", type=int, default=1, help="--ddp: new tries after a run gave no count (1)")
    args = parser.parse_args()
    if not 1 <= args.short < args.long:
        parser.error(f"need 1 <= --short < --long; got {args.short} and {args.long}")
    if args.ddp and args.workload != "w1":
        parser.error(f"--workload {args.workload} with --ddp: the two-process benchmark runs w1 only")
    if args.jobs is None:
        args.jobs = 1 if args.ddp else 2
    if args.jobs < 1 or args.retries < 0 or args.timeout <= 0:
        got = f"--jobs {args.jobs}, --retries {args.retries}, --timeout {args.timeout}"
        parser.error(f"need --jobs >= 1, --retries >= 0 and --timeout > 0; got {got}")
    return args


def main() -> None:
    args = parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    if not args.ddp:
        measure_one_process(args)
        return
    # A SIGTERM becomes SystemExit, so the running torchruns are killed on the way out too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.perf_counter()
    try:
        runs = measure_ddp(args)
    except RunFailed as failure:
        sys.exit(str(failure))
    met = report_ddp(runs, args.short, args.long)
    print(f"{time.perf_counter() - started:.0f} s in all")
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
