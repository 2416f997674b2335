"""kerasish against the hand-written loop, in one command.

    python benchmarks/run.py [--workloads w1 w2] [--repeats 5] [--epochs N] [--threads 1] [--device cpu|cuda]
                             [--quick] [--json out.json] [--no-import-time] [--no-sync-check]

Every run is a fresh process (``_worker.py``) with a fixed thread count. The variants (hand-written, kerasish
``verbose=0``, kerasish ``verbose=1``) take turns, repeat after repeat, starting one further along each repeat, so
no variant always runs first or after the same neighbour. Prints a table per workload (see ``report.py`` for the
definitions), the startup check, and with ``--device cuda`` the host-sync check. Exits 1 when a target is missed or
the two loops did not compute the same thing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import import_time
import report
import torch
from _worker import VARIANTS
from workloads import WORKLOADS

HERE = Path(__file__).resolve().parent
QUICK = {"repeats": 2, "epochs": 3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), help="default: w1 w2 (cuda: w2)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per variant (default 5)")
    parser.add_argument("--epochs", type=int, help="epochs per run, >= 2 (default: w1 10, w2 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP/MKL threads per run (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 repeats of 3 epochs")
    parser.add_argument("--json", type=Path, help="also write every run's raw record and the tables here")
    parser.add_argument("--no-import-time", action="store_true", help="skip the startup check")
    parser.add_argument("--no-sync-check", action="store_true", help="skip the host-sync check (cuda only)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one run may take (default 1800)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs = QUICK["repeats"], QUICK["epochs"]
    if args.epochs is not None and args.epochs < 2:
        parser.error(f"--epochs {args.epochs}: use at least 2 (epoch 1 is dropped as warm-up)")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    try:
        torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device}: not a device name torch knows; use cpu or cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available to torch {torch.__version__}")
    args.workloads = args.workloads or (["w2"] if args.device.startswith("cuda") else ["w1", "w2"])
    return args


def schedule(variants: list[str], repeats: int) -> list[tuple[int, str]]:
    """``(repeat, variant)`` in running order: round-robin, each repeat starting one variant further along."""
    order = []
    for repeat in range(repeats):
        shift = repeat % len(variants)
        order += [(repeat, variant) for variant in variants[shift:] + variants[:shift]]
    return order


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a run: the thread count fixed for every library that reads one."""
    counts = dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"), str(threads))
    return {**os.environ, **counts}


def run_worker(workload: str, variant: str, epochs: int, args: argparse.Namespace, logs: Path) -> dict:
    """One fresh process; its output (bars and epoch lines included) goes to a log, its result to a JSON file."""
    stem = logs / f"{workload}-{variant}-{time.monotonic_ns()}"
    command = [sys.executable, str(HERE / "_worker.py"), workload, variant, f"--epochs={epochs}"]
    command += [f"--threads={args.threads}", f"--device={args.device}", f"--out={stem}.json"]
    log_path = Path(f"{stem}.log")
    with open(log_path, "w") as log:
        try:
            done = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, env=worker_env(args.threads), timeout=args.timeout
            )
        except subprocess.TimeoutExpired:
            give_up(f"{workload} {variant}: no result after {args.timeout:.0f} s (--timeout)", log_path)
    if done.returncode != 0:
        give_up(f"{workload} {variant} failed with exit status {done.returncode}", log_path)
    return json.loads(Path(f"{stem}.json").read_text())


def give_up(message: str, log_path: Path) -> None:
    """Exits with ``message`` and the end of the run's log (the log's folder is removed on exit)."""
    tail = log_path.read_text(errors="replace")[-3000:]
    sys.exit(f"{message}; the end of its output:\n{tail}")


def run_workload(name: str, args: argparse.Namespace, logs: Path) -> list[dict]:
    """All runs of one workload, in :func:`schedule` order, each record tagged with its repeat."""
    epochs = args.epochs or WORKLOADS[name].epochs
    order = schedule(list(VARIANTS), args.repeats)
    records = []
    for index, (repeat, variant) in enumerate(order, start=1):
        started = time.perf_counter()
        record = run_worker(name, variant, epochs, args, logs)
        record["repeat"] = repeat
        records.append(record)
        seconds = time.perf_counter() - started
        print(f"  [{name} {index}/{len(order)}] {variant:<12} repeat {repeat + 1}: {seconds:5.1f} s", file=sys.stderr)
    return records


def print_table(name: str, records: list[dict], args: argparse.Namespace) -> tuple[list[report.Row], bool]:
    """Prints a workload's table and the same-arithmetic check; returns the rows and whether all is well."""
    workload, first = WORKLOADS[name], records[0]
    epochs = len(first["epoch_seconds"])
    print(f"\n{workload.title}")
    print(
        f"  {first['train_steps']}+{first['val_steps']} steps/epoch, {args.device}, {first['threads']} thread(s), "
        f"{args.repeats} repeats × {epochs} epochs (epoch 1 dropped), torch {first['torch']}"
    )
    rows = report.summarize(records, list(VARIANTS))
    print(report.HEADER)
    for row in rows:
        print(report.format_row(row, VARIANTS[row.variant][0], workload.target))
    exact = args.device == "cpu"
    problems = report.same_arithmetic(records, exact=exact)
    for problem in problems:
        print(f"  {'MISMATCH' if exact else 'note'}: {problem}")
    if not problems:
        print("  same arithmetic: every kerasish run matched its repeat's hand run (val acc, losses, final weights)")
    return rows, report.passed(rows, workload.target) and not (problems and exact)


def machine(device: str) -> str:
    """One line on what the numbers were measured on, load average included (it says how quiet the machine was)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    line = f"{platform.system()} {cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"
    if device.startswith("cuda"):
        line += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return f"{line}; load average {' '.join(f'{load:.2f}' for load in os.getloadavg())}"


def sync_check(args: argparse.Namespace) -> bool:
    """Runs ``cuda_sync_check.py`` in a fresh process, its output shown as it comes; True when it passes."""
    print("\nHost-sync check (cuda_sync_check.py):", flush=True)
    command = [sys.executable, str(HERE / "cuda_sync_check.py"), f"--device={args.device}"]
    return subprocess.run(command, env=worker_env(args.threads)).returncode == 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "workloads": {}}
    results["machine_before"] = machine(args.device)
    print(f"machine: {results['machine_before']}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="kerasish-bench-") as logs:
        for name in args.workloads:
            print(f"running {name}: {args.repeats} repeats × {len(VARIANTS)} variants", file=sys.stderr)
            records = run_workload(name, args, Path(logs))
            rows, fine = print_table(name, records, args)
            ok &= fine
            results["workloads"][name] = {"runs": records, "rows": [vars(row) for row in rows]}
    if not args.no_import_time:
        text, fine, raw = import_time.run(args.repeats)
        print(f"\n{text}")
        ok &= fine
        results["import_time"] = raw
    if args.device.startswith("cuda") and not args.no_sync_check:
        ok &= sync_check(args)
    results["machine_after"] = machine(args.device)
    print(f"\nmachine after the runs: {results['machine_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
