"""kerasish against the hand-written loop on two processes: W1 under ``torchrun --standalone --nproc_per_node=2``.

    python benchmarks/ddp_run.py [--repeats 6] [--epochs 16] [--quick] [--variants hand kerasish hand-aa]
                                 [--threads 1] [--timeout 90] [--retries 1] [--json out.json]

Every run is a fresh ``torchrun`` (two ranks of ``_ddp_worker.py``, gloo on CPU, one thread each). Three variants
take turns, repeat after repeat, each repeat starting one further along: the hand-written DDP loop, kerasish with
``strategy="auto"``, and the hand-written loop once more, an A/A control that shows how far two runs of the same
code differ on this machine. Prints two tables, by the wall clock and by the main thread's CPU clock (definitions
in ``report.py``; the ratios pair each run with the hand-written run of its repeat), and two checks: every rank of
a run ended with the same history and weights, and every run computed what the hand-written run of its repeat
computed (train and val loss and accuracy every epoch, final weights). Exits 1 when a run failed or a check did not
hold; the timing has no pass mark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import report
from run import machine, schedule, worker_env

HERE = Path(__file__).resolve().parent
WORLD = 2
# variant -> (label in the table, what _ddp_worker.py runs)
VARIANTS = {
    "hand": ("hand-written DDP", "hand"),
    "kerasish": ('kerasish "auto"', "kerasish"),
    "hand-aa": ("hand again (A/A)", "hand"),
}
QUICK = {"repeats": 1, "epochs": 3}
COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc")
# Both loops sum the loss in float64 and run the same kernels on the same batches: equal up to the last bits.
TOLERANCE = 1e-9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=6, help="runs per variant (default 6)")
    parser.add_argument("--epochs", type=int, default=16, help="epochs per run, >= 2 (default 16; epoch 1 dropped)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP/MKL threads per rank (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 repeat of 3 epochs")
    parser.add_argument("--timeout", type=float, default=90, help="seconds one torchrun may take (default 90)")
    parser.add_argument("--retries", type=int, default=1, help="new tries after a run times out (default 1)")
    parser.add_argument("--json", type=Path, help="also write every rank's raw record here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs = QUICK["repeats"], QUICK["epochs"]
    if args.epochs < 2:
        parser.error(f"--epochs {args.epochs}: use at least 2 (epoch 1 is dropped as warm-up)")
    if args.repeats < 1 or args.threads < 1 or args.retries < 0:
        parser.error("--repeats and --threads must be >= 1, --retries >= 0")
    if "hand" not in args.variants:
        parser.error("--variants must include hand: every ratio and check is against it")
    args.variants = [variant for variant in VARIANTS if variant in args.variants]
    return args


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc (empty elsewhere): torchrun starts each rank in a session of
    its own, so killing torchrun's process group alone would leave the ranks running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def kill_run(proc: subprocess.Popen, *, dump_stacks: bool = False) -> None:
    """SIGKILL to torchrun's process group and to the group of every process it started, then reaps torchrun.

    With ``dump_stacks`` the ranks are first asked for every thread's stack (``_ddp_worker.py`` registers
    ``faulthandler`` for SIGUSR1), which goes to the run's log: where a hung run was waiting.
    """
    below = descendants(proc.pid)
    if dump_stacks:
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGUSR1)
        time.sleep(1)
    groups = {proc.pid}
    for pid in below:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    groups.discard(os.getpgrp())  # never our own
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    proc.wait()


class RunFailed(Exception):
    """A run that ended without its records: the message, then the end of its log."""

    def __init__(self, message: str, log_path: Path, *, timed_out: bool) -> None:
        tail = log_path.read_text(errors="replace")[-4000:]
        super().__init__(f"{message}; the end of its output:\n{tail}")
        self.timed_out = timed_out


def launch(variant: str, args: argparse.Namespace, folder: Path) -> list[dict]:
    """One fresh ``torchrun`` of ``variant``; returns its ranks' records, rank 0 first.

    Raises:
        RunFailed: the run failed, or outlasted ``--timeout`` and was killed.
    """
    stem = folder / f"{variant}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"]
    command += [str(HERE / "_ddp_worker.py"), VARIANTS[variant][1], f"--epochs={args.epochs}"]
    command += [f"--threads={args.threads}", f"--out={stem}"]
    log_path = Path(f"{stem}.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=worker_env(args.threads), start_new_session=True
        )
        try:
            proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            kill_run(proc, dump_stacks=True)
            message = f"{variant}: no result after {args.timeout:.0f} s (--timeout); killed"
            raise RunFailed(message, log_path, timed_out=True) from None
        except BaseException:  # Ctrl-C, SIGTERM or anything else: leave no rank behind
            kill_run(proc)
            raise
    if proc.returncode != 0:
        raise RunFailed(f"{variant} failed with exit status {proc.returncode}", log_path, timed_out=False)
    return [json.loads(Path(f"{stem}-rank{rank}.json").read_text()) for rank in range(WORLD)]


def launch_retrying(variant: str, args: argparse.Namespace, folder: Path) -> list[dict]:
    """:func:`launch`, tried again after a timeout (``--retries``): on a shared machine a run can hang at its start
    for reasons outside it (seen once here, while other jobs ran torchrun too). Exits when the run fails."""
    for attempt in range(args.retries + 1):
        try:
            return launch(variant, args, folder)
        except RunFailed as failure:
            if not failure.timed_out or attempt == args.retries:
                sys.exit(str(failure))
            print(f"  {failure}\n  retrying", file=sys.stderr)
    raise AssertionError("unreachable")


def run_all(args: argparse.Namespace, folder: Path) -> list[list[dict]]:
    """All runs in :func:`run.schedule` order; each run's rank records tagged with its variant and repeat."""
    order = schedule(args.variants, args.repeats)
    runs = []
    for index, (repeat, variant) in enumerate(order, start=1):
        started = time.perf_counter()
        ranks = launch_retrying(variant, args, folder)
        for record in ranks:
            record["variant"], record["repeat"] = variant, repeat
        runs.append(ranks)
        seconds = time.perf_counter() - started
        print(f"  [{index}/{len(order)}] {variant:<8} repeat {repeat + 1}: {seconds:5.1f} s", file=sys.stderr)
    return runs


def max_difference(values: list[float], reference: list[float]) -> float:
    """The largest absolute difference, relative where the reference is above 1; inf when the lengths differ."""
    if len(values) != len(reference):
        return math.inf
    return max((abs(a - b) / max(1.0, abs(b)) for a, b in zip(values, reference, strict=True)), default=0.0)


def check_ranks(runs: list[list[dict]]) -> list[str]:
    """Every rank of a run must end with rank 0's history (time aside) and weights, to the bit."""
    problems = []
    for ranks in runs:
        first = ranks[0]
        for record in ranks[1:]:
            for key in COMPARED:
                if record["history"][key] != first["history"][key]:
                    problems.append(f"{first['variant']} repeat {first['repeat'] + 1}: rank {record['rank']} {key}")
            if record["weights"] != first["weights"]:
                problems.append(f"{first['variant']} repeat {first['repeat'] + 1}: rank {record['rank']} weights")
    return problems


def check_same_numbers(records: list[dict]) -> tuple[list[str], dict[str, float]]:
    """Each run against the hand-written run of its repeat (rank 0's records).

    Returns:
        One message per column that differs by more than :data:`TOLERANCE` (with the first epoch that does), and the
        largest difference seen per column over all runs.
    """
    hand = report.by_repeat(records, report.HAND)
    problems, largest = [], dict.fromkeys((*COMPARED, "weights"), 0.0)
    for record in records:
        reference = hand.get(record["repeat"])
        if record["variant"] == report.HAND or reference is None:
            continue
        pairs = {key: (record["history"][key], reference["history"][key]) for key in COMPARED}
        pairs["weights"] = (record["weights"], reference["weights"])
        for key, (values, expected) in pairs.items():
            difference = max_difference(values, expected)
            largest[key] = max(largest[key], difference)
            if difference > TOLERANCE:
                names = ("sum", "norm") if key == "weights" else [f"epoch {i}" for i in range(1, len(values) + 1)]
                where = first_difference(values, expected, names)
                problems.append(f"{record['variant']} repeat {record['repeat'] + 1}: {key}: {where}")
    return problems, largest


def first_difference(values: list[float], expected: list[float], names: list[str]) -> str:
    """Where ``values`` first part from the hand loop's ``expected``, in words."""
    if len(values) != len(expected):
        return f"{len(values)} values against the hand loop's {len(expected)}"
    for name, a, b in zip(names, values, expected, strict=True):
        if abs(a - b) / max(1.0, abs(b)) > TOLERANCE:
            return f"{a!r} against the hand loop's {b!r} first at {name}"
    return "no difference"


HEADER = (
    f"{'':<18} {'s/epoch':>8} {'spread (min–max)':>17} {'× hand':>7} {'× hand min–max':>15} "
    f"{'µs/step':>8} {'floor × hand':>12}"
)


def format_row(row: report.Row) -> str:
    """A table line as in ``report.py``, without a verdict (two processes have no target of their own), without
    ``pass × hand`` (data-parallel, kerasish's ``time`` column is the slowest rank's passes before their reduction,
    not the span the hand loop times) and without ``fit s`` (printed below the tables)."""
    label = VARIANTS[row.variant][0]
    line = f"{label:<18} {row.seconds:8.4f} {f'{row.low:.4f}–{row.high:.4f}':>17}"
    if row.ratio is None:
        return f"{line} {'1':>7}"
    return (
        f"{line} {row.ratio:7.3f} {f'{row.ratio_low:.3f}–{row.ratio_high:.3f}':>15} {row.extra_us:+8.1f} "
        f"{row.floor_ratio:12.3f}"
    )


def cpu_view(records: list[dict]) -> list[dict]:
    """The records with the main thread's CPU seconds per epoch in place of the wall seconds."""
    return [{**record, "epoch_seconds": record["epoch_cpu_seconds"]} for record in records]


def print_report(runs: list[list[dict]], args: argparse.Namespace) -> bool:
    """Prints the two tables (wall clock, main thread's CPU clock) and the two checks; True when both checks held."""
    records = [ranks[0] for ranks in runs]
    first = records[0]
    print(f"\nW1 on {WORLD} processes (torchrun, gloo, CPU): MLP 64-32-10 on digits, batch 16 per rank")
    print(
        f"  {first['train_steps']}+{first['val_steps']} steps/epoch per rank, {first['threads']} thread(s) per rank, "
        f"{args.repeats} repeats × {args.epochs} epochs (epoch 1 dropped), torch {first['torch']}, rank 0's clocks"
    )
    for title, view in (("wall clock", records), ("main thread's CPU clock", cpu_view(records))):
        print(f"{title}:\n{HEADER}")
        for row in report.summarize(view, args.variants):
            print(format_row(row))
    fits = (f"{VARIANTS[row.variant][0]} {row.fit_seconds:.2f}" for row in report.summarize(records, args.variants))
    print(f"whole fit, median s: {', '.join(fits)}")
    rank_problems = check_ranks(runs)
    for problem in rank_problems:
        print(f"  RANKS DIFFER: {problem}")
    if not rank_problems:
        print(f"  ranks agree: in every run all {WORLD} ranks ended with the same history and weights, to the bit")
    problems, largest = check_same_numbers(records)
    for problem in problems:
        print(f"  MISMATCH: {problem}")
    summary = ", ".join(f"{key} {value:.1e}" for key, value in largest.items())
    verdict = "every run matched its repeat's hand run" if not problems else "some runs did not match"
    print(f"  same numbers: {verdict} (largest difference: {summary})")
    return not rank_problems and not problems


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # A SIGTERM (a CI job cancelled) becomes SystemExit, so the running torchrun is killed on the way out too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    print(f"machine: {machine('cpu')}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kerasish-ddp-bench-") as folder:
        plan = f"{args.repeats} repeats × {len(args.variants)} variants"
        print(f"running W1 on {WORLD} processes: {plan}", file=sys.stderr)
        runs = run_all(args, Path(folder))
    ok = print_report(runs, args)
    print(f"\nmachine after the runs: {machine('cpu')}; {time.perf_counter() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
