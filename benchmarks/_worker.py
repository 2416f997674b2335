"""One benchmark run in a fresh process: ``python benchmarks/_worker.py <workload> <variant> --out result.json``.

Started by ``run.py``, which sends this process's stdout and stderr (kerasish's progress bars and epoch lines with
``verbose=1``) to a log file; the result goes to the JSON file named by ``--out``, so no output can corrupt it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
from workloads import WORKLOADS, Parts, RunResult, build, fingerprint

# variant name -> (label in the report, kerasish verbose level or None for the hand-written loop)
VARIANTS = {
    "hand": ("hand-written", None),
    "kerasish-v0": ("kerasish verbose=0", 0),
    "kerasish-v1": ("kerasish verbose=1", 1),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("variant", choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="where to write the result as JSON")
    return parser.parse_args(argv)


def fix_threads(threads: int) -> None:
    """The same thread count in every run; set before any parallel work, as torch requires."""
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def fit_variant(variant: str, parts: Parts, epochs: int) -> RunResult:
    """Fits ``parts`` with the hand-written loop or with kerasish.

    ``patience`` equals ``epochs``: early stopping and best-weight tracking run every epoch, as a user would have
    them, yet never stop the fit early, so every variant trains the same number of epochs.
    """
    verbose = VARIANTS[variant][1]
    if verbose is None:
        from hand_loop import HandLoop

        return HandLoop(parts).fit(epochs=epochs, patience=epochs)
    from kerasish_run import fit_kerasish

    return fit_kerasish(parts, epochs=epochs, patience=epochs, verbose=verbose)


def run(args: argparse.Namespace) -> dict:
    """Builds the workload's parts, fits them with the chosen variant and returns the record ``run.py`` reads."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: CUDA is not available to torch {torch.__version__}")
    parts = build(WORKLOADS[args.workload], device, seed=args.seed)
    result = fit_variant(args.variant, parts, args.epochs)
    return {
        "workload": args.workload,
        "variant": args.variant,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "seed": args.seed,
        "train_steps": len(parts.train_loader),
        "val_steps": len(parts.val_loader),
        "history": result.history,
        "epoch_seconds": result.epoch_seconds(),
        "fit_seconds": result.fit_end - result.fit_start,
        "weights": fingerprint(parts.net),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fix_threads(args.threads)
    record = run(args)
    args.out.write_text(json.dumps(record))


if __name__ == "__main__":
    main()
