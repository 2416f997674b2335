"""How much ``import kerasish`` adds to ``import torch, torchmetrics, pandas``, in fresh processes.

    python benchmarks/import_time.py [--repeats 7]

Each process imports torch, torchmetrics and pandas, then kerasish, timing both with ``time.perf_counter``; the
second time is what kerasish adds. One unrecorded process runs first, so the files are in the OS cache for all the
recorded ones. A last process runs under ``python -X importtime`` to list the modules kerasish brings in and their
own import times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from statistics import median

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 0.3
MARKER = "---- kerasish starts here ----"
TIMED = """
import time
start = time.perf_counter()
import torch, torchmetrics, pandas
middle = time.perf_counter()
import kerasish
print(middle - start, time.perf_counter() - middle)
"""
TRACED = f"""
import sys
import torch, torchmetrics, pandas
print({MARKER!r}, file=sys.stderr, flush=True)
import kerasish
"""


def python(code: str, *flags: str) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter that imports this checkout's kerasish."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    )


def measure(repeats: int) -> dict:
    """``{"base": [seconds...], "added": [seconds...]}`` over ``repeats`` fresh processes (after one warm-up)."""
    python(TIMED)
    base, added = [], []
    for _ in range(repeats):
        first, second = python(TIMED).stdout.split()
        base.append(float(first))
        added.append(float(second))
    return {"base": base, "added": added}


def heaviest_modules(count: int) -> list[tuple[int, str]]:
    """The ``count`` modules imported after the base libraries with the most own import time: ``(µs, name)``."""
    trace = python(TRACED, "-X", "importtime").stderr.splitlines()
    after = trace[trace.index(MARKER) + 1 :] if MARKER in trace else []
    modules = []
    for line in after:
        if not line.startswith("import time:") or "|" not in line:
            continue
        own, _cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if own.isdigit():
            modules.append((int(own), name))
    return sorted(modules, reverse=True)[:count]


def format_report(result: dict, modules: list[tuple[int, str]]) -> tuple[str, bool]:
    """The text to print, and whether the median added time is within the target."""
    added, base = median(result["added"]), median(result["base"])
    ok = added <= TARGET_SECONDS
    lines = [
        f"Startup ({len(result['added'])} fresh processes, medians):",
        f"  import torch, torchmetrics, pandas   {base:6.3f} s  (min–max {min(result['base']):.3f}–"
        f"{max(result['base']):.3f})",
        f"  then import kerasish adds            {added:6.3f} s  (min–max {min(result['added']):.3f}–"
        f"{max(result['added']):.3f})  {'PASS' if ok else 'FAIL'} (≤ {TARGET_SECONDS} s)",
    ]
    if modules:
        lines.append("  heaviest modules kerasish brings in (own import time, one -X importtime run):")
        lines += [f"    {micros / 1e3:7.1f} ms  {name}" for micros, name in modules]
    return "\n".join(lines), ok


def run(repeats: int, top: int = 8) -> tuple[str, bool, dict]:
    """Measures and reports; returns the text, the verdict and the raw numbers."""
    result = measure(repeats)
    text, ok = format_report(result, heaviest_modules(top))
    return text, ok, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="recorded processes (default 7)")
    parser.add_argument("--top", type=int, default=8, help="modules to list (default 8)")
    args = parser.parse_args(argv)
    text, ok, _ = run(args.repeats, args.top)
    print(text)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
