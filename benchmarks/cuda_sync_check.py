"""No host sync inside a step: W2 on CUDA with ``torch.cuda.set_sync_debug_mode``.

    python benchmarks/cuda_sync_check.py [--epochs 3] [--device cuda]

A *step* is one batch's work: the copy to the device, forward, loss, backward, optimizer step, loss accumulation and
``metric.update``; for kerasish that is ``StepRunner.__call__``, for the hand-written loop ``HandLoop.train_step`` and
``val_step``. Two checks, each after an unchecked one-epoch warm-up of both variants (CUDA, cuBLAS and cuDNN start-up
and the allocator's first allocations happen there):

1. **Strict** (the verdict): the debug mode is ``"error"`` inside every step, train and val, and ``"default"``
   between steps, so any sync in a step raises at once. The mode is switched by a ``StepRunner`` subclass plugged in
   as a class attribute, kerasish's documented extension point: no batch hook is turned on, so the checked fit runs
   the same code path as a user's. The hand loop is checked the same way, as a control.
2. **Census** (the explanation): the mode is ``"warn"`` over the whole fit, and each sync is counted by where it
   came from and whether it was inside a step. The known syncs all sit between steps: the float read of each pass's
   loss and metric, the best-weight copy to the host, the restore at the end, and with ``verbose=1`` the progress
   bar's loss figure, read at most every half second.

The metric is ``workloads.make_metric()``: with torchmetrics' defaults (``average="macro"``, ``validate_args=True``)
``update`` itself syncs (``torch.unique``, ``torch.bincount``), in the hand loop just as in kerasish.

Exit status: 0 when kerasish passes the strict check, 1 when it fails, 2 when there is no CUDA device. With
``--device cpu`` the script only exercises its own plumbing (CPU has no sync debug mode) and checks nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from hand_loop import HandLoop
from kerasish_run import fit_kerasish
from workloads import WORKLOADS, Parts, build

from kerasish import KerasModel, StepRunner  # importable from this checkout once kerasish_run is imported

SYNC_MESSAGE = "synchronizing CUDA operation"
# torch's own Python files, as the interpreter may name them (through a symlinked venv or not).
TORCH_DIRS = tuple({str(Path(torch.__file__).parent), str(Path(torch.__file__).resolve().parent)})
REPO_ROOT = Path(__file__).resolve().parent.parent
Site = tuple[str, bool]  # (where, inside a step)


def set_sync_mode(mode: str, device: torch.device) -> None:
    """``torch.cuda.set_sync_debug_mode(mode)`` on CUDA; nothing on other devices (plumbing runs)."""
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode(mode)


@contextlib.contextmanager
def syncs_raise(device: torch.device) -> Iterator[None]:
    """Any host sync in the block raises ``RuntimeError``; the mode is back to ``"default"`` however it ends."""
    set_sync_mode("error", device)
    try:
        yield
    finally:
        set_sync_mode("default", device)


class CheckedStep(StepRunner):
    """kerasish's step with syncs made errors inside it, and only inside it."""

    def __call__(self, batch: Any) -> tuple[torch.Tensor, int]:
        with syncs_raise(self.device):
            return super().__call__(batch)


class CheckedModel(KerasModel):
    StepRunner = CheckedStep


class CheckedHandLoop(HandLoop):
    """The hand loop's steps, checked the same way."""

    def train_step(self, x: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor) -> int:
        with syncs_raise(self.device):
            return super().train_step(x, y, loss_sum)

    def val_step(self, x: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor) -> int:
        with syncs_raise(self.device):
            return super().val_step(x, y, loss_sum)


STEP_CODES = {
    StepRunner.__call__.__code__,
    HandLoop.train_step.__code__,
    HandLoop.val_step.__code__,
}


def fitters(epochs: int, *, checked: bool) -> dict[str, Callable[[Parts], object]]:
    """label -> a function fitting fresh parts for ``epochs`` epochs; ``checked`` puts the strict check in the steps."""
    hand_class = CheckedHandLoop if checked else HandLoop
    model_class = CheckedModel if checked else KerasModel

    def kerasish(verbose: int) -> Callable[[Parts], object]:
        return lambda parts: fit_kerasish(
            parts, epochs=epochs, patience=epochs, verbose=verbose, model_class=model_class
        )

    return {
        "hand-written": lambda parts: hand_class(parts).fit(epochs=epochs, patience=epochs),
        "kerasish verbose=0": kerasish(0),
        "kerasish verbose=1": kerasish(1),
    }


def where(frames: list[FrameType] | list[traceback.FrameSummary]) -> str:
    """The innermost frame outside torch's own Python code and the warnings machinery, as ``file:line function``."""
    for frame in frames:
        filename, line, name = _frame_parts(frame)
        if not filename.startswith(TORCH_DIRS) and not filename.endswith("warnings.py"):
            return f"{_short(filename)}:{line} {name}"
    return "?"


def _short(filename: str) -> str:
    """A file name relative to site-packages or to the checkout, when it is under one of them."""
    path = Path(filename)
    if "site-packages" in path.parts:
        return "/".join(path.parts[path.parts.index("site-packages") + 1 :])
    if path.is_relative_to(REPO_ROOT):
        return str(path.relative_to(REPO_ROOT))
    return filename


def _frame_parts(frame: FrameType | traceback.FrameSummary) -> tuple[str, int, str]:
    if isinstance(frame, traceback.FrameSummary):
        return frame.filename, frame.lineno or 0, frame.name
    return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name


def outward(frame: FrameType | None) -> list[FrameType]:
    """``frame`` and its callers, innermost first."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Sends the block's stdout and stderr (kerasish's bars and epoch lines) to the null device."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


def strict_check(label: str, fit: Callable[[Parts], object], device: torch.device) -> bool:
    """Fits W2 with syncs made errors inside the steps; prints PASS, or FAIL with where the sync happened."""
    try:
        with quiet():
            fit(build(WORKLOADS["w2"], device))
    except RuntimeError as err:
        if SYNC_MESSAGE not in str(err):
            raise
        frames = list(reversed(traceback.extract_tb(err.__traceback__)))
        print(f"  {label:<20} FAIL: host sync inside a step, at {where(frames)}")
        print("".join(traceback.format_list(frames[:6][::-1])).rstrip())
        return False
    print(f"  {label:<20} PASS: no host sync inside any train or val step")
    return True


@contextlib.contextmanager
def sync_census(device: torch.device) -> Iterator[Counter]:
    """Counts the block's host syncs by :data:`Site`, with torch's ``"warn"`` mode on; other warnings pass through."""
    sites: Counter = Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        show = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            if SYNC_MESSAGE not in str(message):  # not ours: shown as usual, past quiet()'s redirection
                return show(message, category, filename, lineno, file or sys.__stderr__, line)
            frames = outward(sys._getframe(1))
            sites[(where(frames), any(frame.f_code in STEP_CODES for frame in frames))] += 1

        warnings.showwarning = record
        set_sync_mode("warn", device)
        try:
            yield sites
        finally:
            set_sync_mode("default", device)


def print_census(label: str, sites: Counter, epochs: int) -> None:
    """The syncs of one fit, most frequent first, each marked inside or between steps."""
    inside = sum(count for (_where, in_step), count in sites.items() if in_step)
    print(f"  {label}: {sum(sites.values())} host syncs in {epochs} epochs, {inside} inside a step")
    for (site, in_step), count in sorted(sites.items(), key=lambda item: -item[1]):
        print(f"    {count:5d}  {count / epochs:6.1f}/epoch  {'IN A STEP  ' if in_step else 'between steps'}  {site}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per checked fit (default 3)")
    parser.add_argument("--device", default="cuda", help="a CUDA device (default cuda); cpu: plumbing only")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        print(f"cuda_sync_check: CUDA is not available to torch {torch.__version__}; nothing was checked.")
        sys.exit(2)
    if args.device.type != "cuda":
        print(f"cuda_sync_check on {args.device}: plumbing run only; there is no sync debug mode off CUDA.")
    with quiet():
        for fit in fitters(1, checked=False).values():
            fit(build(WORKLOADS["w2"], args.device))
    print(f"Strict check: W2, {args.epochs} epochs, sync debug mode 'error' inside each step")
    checked = fitters(args.epochs, checked=True)
    verdicts = {label: strict_check(label, fit, args.device) for label, fit in checked.items()}
    print(f"Census: W2, {args.epochs} epochs, sync debug mode 'warn' over the whole fit")
    for label, fit in fitters(args.epochs, checked=False).items():
        parts = build(WORKLOADS["w2"], args.device)
        with sync_census(args.device) as sites, quiet():
            fit(parts)
        print_census(label, sites, args.epochs)
    if args.device.type != "cuda":
        print("verdict: none, the plumbing ran; run on a CUDA device for a real check")
        return
    kerasish_ok = all(ok for label, ok in verdicts.items() if label.startswith("kerasish"))
    print(f"verdict: kerasish {'PASS' if kerasish_ok else 'FAIL'}: no host sync inside a step")
    sys.exit(0 if kerasish_ok else 1)


if __name__ == "__main__":
    main()
