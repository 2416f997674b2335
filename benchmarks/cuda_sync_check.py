"""No host sync inside a step: W2 on CUDA with ``torch.cuda.set_sync_debug_mode``, kerasish in several configurations.

    python benchmarks/cuda_sync_check.py [--epochs 3] [--device cuda] [--json out.json]

A *step* is one batch's work: the copy to the device, forward, loss, backward, optimizer step, loss accumulation and
``metric.update``; for kerasish that is ``StepRunner.__call__``, for the hand-written loop ``HandLoop.train_step`` and
``val_step``. With prefetching on (kerasish's default on CUDA) the copy moves out of the step into the *read-ahead*:
while step k runs, the next batch is pinned and its copy issued on a side stream, then handed to the step's stream
(``kerasish.prefetch``). A sync there would stall every batch just the same, so the read-ahead is checked too; the
loader's own work (collating, its ``pin_memory``) is not, as it is the same in either loop.

kerasish is checked in every configuration of :data:`CONFIGS`, all with prefetching on unless the label says
otherwise: float32 (also with ``verbose=1``, and with prefetching off), bf16, ``accumulate_grad_batches=2``,
``clip_grad_norm=1.0``, and the three together. Each is warmed up for one unchecked epoch first (CUDA, cuBLAS and
cuDNN start-up, the allocator's first allocations, bf16's kernels), then:

1. **Strict** (the verdict): the debug mode is ``"error"`` inside every step, train and val, and every read-ahead,
   and ``"default"`` elsewhere, so any sync there raises at once. The mode is switched by ``StepRunner`` and
   ``EpochRunner`` subclasses plugged in as class attributes, kerasish's documented extension point: no batch hook is
   turned on, so the checked fit runs the same code path as a user's. The hand loop is checked the same way (its
   steps), as a control.
2. **Census** (the explanation): the mode is ``"warn"`` over the whole fit, and each sync is counted by where it
   came from and whether it was inside a step. The known syncs all sit between steps: the float read of each pass's
   loss and metric, the best-weight copy to the host, the restore at the end, with ``verbose=1`` the progress bar's
   loss figure, read at most every half second, and with accumulation a short last window stepped at the pass's end.
   A sync in a read-ahead is counted as between steps, at its site in ``kerasish/prefetch.py``.

fp16 is not in the verdict: its ``GradScaler`` reads back whether a gradient overflowed, one sync inside every step
that steps the optimizer, by design (``StepRunner.optimizer_step`` says so). It gets a census of its own, which
checks that this is the only sync in its steps: one per optimizer step, all from ``optimizer_step``.

The metric is ``workloads.make_metric()``: with torchmetrics' defaults (``average="macro"``, ``validate_args=True``)
``update`` itself syncs (``torch.unique``, ``torch.bincount``), in the hand loop just as in kerasish.

Exit status: 0 when kerasish passes the strict check in every configuration, 1 when one fails, 2 when there is no
CUDA device. With ``--device cpu`` the script runs every configuration but fp16 (which needs CUDA) through its own
plumbing, checks nothing (CPU has no sync debug mode), and exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from hand_loop import HandLoop
from kerasish_run import fit_kerasish
from workloads import WORKLOADS, Parts, build

from kerasish import EpochRunner, KerasModel, StepRunner  # importable from this checkout once kerasish_run is imported

SYNC_MESSAGE = "synchronizing CUDA operation"
# torch's own Python files, as the interpreter may name them (through a symlinked venv or not).
TORCH_DIRS = tuple({str(Path(torch.__file__).parent), str(Path(torch.__file__).resolve().parent)})
REPO_ROOT = Path(__file__).resolve().parent.parent
Site = tuple[str, bool]  # (where, inside a step)
END = object()  # what next() returns for an exhausted iterator here; a loader may yield anything, even None


@dataclass(frozen=True)
class Config:
    """One kerasish configuration: its label, its ``KerasModel`` keyword arguments, the fit's ``verbose``.

    Prefetching is on unless ``options`` turns it off: it is kerasish's default on CUDA, and said explicitly so
    that a CPU plumbing run goes through it too.
    """

    label: str
    options: Mapping[str, Any] = field(default_factory=dict)
    verbose: int = 0

    def model_options(self) -> dict[str, Any]:
        return {"prefetch": True, **self.options}


CONFIGS = (
    Config("fp32"),
    Config("fp32 verbose=1", verbose=1),
    Config("fp32, prefetch off", {"prefetch": False}),
    Config("bf16", {"precision": "bf16"}),
    Config("accumulate 2", {"accumulate_grad_batches": 2}),
    Config("clip_grad_norm 1.0", {"clip_grad_norm": 1.0}),
    Config(
        "bf16 + accumulate 2 + clip_grad_norm 1.0",
        {"precision": "bf16", "accumulate_grad_batches": 2, "clip_grad_norm": 1.0},
    ),
)
FP16 = Config("fp16", {"precision": "fp16"})  # syncs once per optimizer step by design: reported apart


@contextlib.contextmanager
def sync_mode(mode: str, device: torch.device) -> Iterator[None]:
    """torch's sync debug mode is ``mode`` in the block and back as it was after, however the block ends.

    Nothing happens off CUDA (plumbing runs): there is no sync debug mode there.
    """
    if device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def syncs_raise(device: torch.device) -> contextlib.AbstractContextManager:
    """Any host sync in the block raises ``RuntimeError``."""
    return sync_mode("error", device)


def read_with_mode(batches: Iterable, mode: str, device: torch.device) -> Iterator[Any]:
    """The batches of ``batches``, each read (``iter`` and every ``next``) with the sync debug mode at ``mode``."""
    with sync_mode(mode, device):
        iterator = iter(batches)
    while True:
        with sync_mode(mode, device):
            batch = next(iterator, END)
        if batch is END:
            return
        yield batch


class CheckedStep(StepRunner):
    """kerasish's step with syncs made errors inside it, and only inside it."""

    def __call__(self, batch: Any) -> tuple[torch.Tensor, int]:
        with syncs_raise(self.device):
            return super().__call__(batch)


class CheckedPass(EpochRunner):
    """kerasish's pass with syncs made errors inside each read-ahead too, the loader's own reads left unchecked.

    kerasish has no public hook around the read-ahead, so this overrides ``EpochRunner._read_ahead``; ``__call__``
    fails loudly if a pass no longer goes through it, rather than checking less without a word.
    """

    def __call__(self, loader: Iterable, **kwargs: Any) -> dict[str, float]:
        self.reads_checked = False
        logs = super().__call__(loader, **kwargs)
        if not self.reads_checked:
            raise RuntimeError("EpochRunner no longer reads through _read_ahead: update CheckedPass to check it")
        return logs

    def _read_ahead(self, loader: Iterable) -> Iterable:
        self.reads_checked = True
        device = self.step_runner.device
        ahead = super()._read_ahead(read_with_mode(loader, "default", device))
        return read_with_mode(ahead, "error", device)


class CheckedModel(KerasModel):
    StepRunner = CheckedStep
    EpochRunner = CheckedPass


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


def fit_config(config: Config, parts: Parts, *, epochs: int, model_class: type[KerasModel] = KerasModel) -> object:
    """Fits ``parts`` through kerasish in ``config`` for ``epochs`` epochs, as ``run.py``'s kerasish runs do."""
    return fit_kerasish(
        parts,
        epochs=epochs,
        patience=epochs,
        verbose=config.verbose,
        model_class=model_class,
        options=config.model_options(),
    )


def fitters(epochs: int, configs: Sequence[Config], *, checked: bool) -> dict[str, Callable[[Parts], object]]:
    """label -> a function fitting fresh parts for ``epochs`` epochs: the hand loop, then kerasish in each config.

    ``checked`` puts the strict check in the steps (and kerasish's read-aheads).
    """
    hand_class = CheckedHandLoop if checked else HandLoop
    model_class = CheckedModel if checked else KerasModel
    fits: dict[str, Callable[[Parts], object]] = {
        "hand-written": lambda parts: hand_class(parts).fit(epochs=epochs, patience=epochs)
    }
    for config in configs:
        fits[f"kerasish {config.label}"] = functools.partial(fit_config, config, epochs=epochs, model_class=model_class)
    return fits


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


def warm_up(configs: Sequence[Config], device: torch.device) -> None:
    """One unchecked epoch of the hand loop and of kerasish in each config, so start-up costs are not checked."""
    with quiet():
        for fit in fitters(1, configs, checked=False).values():
            fit(build(WORKLOADS["w2"], device))


def strict_check(label: str, fit: Callable[[Parts], object], device: torch.device, width: int) -> bool:
    """Fits W2 with syncs made errors inside the steps; prints PASS, or FAIL with where the sync happened."""
    try:
        with quiet():
            fit(build(WORKLOADS["w2"], device))
    except RuntimeError as err:
        if SYNC_MESSAGE not in str(err):
            raise
        frames = list(reversed(traceback.extract_tb(err.__traceback__)))
        print(f"  {label:<{width}} FAIL: host sync inside a step or read-ahead, at {where(frames)}")
        print("".join(traceback.format_list(frames[:6][::-1])).rstrip())
        return False
    scope = "train or val step" if label == "hand-written" else "train or val step or read-ahead"
    print(f"  {label:<{width}} PASS: no host sync inside any {scope}")
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
        with sync_mode("warn", device):
            yield sites


def in_step(sites: Counter) -> dict[str, int]:
    """The syncs of a census that happened inside a step, by site."""
    return {site: count for (site, inside), count in sites.items() if inside}


def print_census(label: str, sites: Counter, epochs: int) -> None:
    """The syncs of one fit, most frequent first, each marked inside or between steps."""
    inside = sum(in_step(sites).values())
    print(f"  {label}: {sum(sites.values())} host syncs in {epochs} epochs, {inside} inside a step")
    for (site, inside_step), count in sorted(sites.items(), key=lambda item: -item[1]):
        place = "IN A STEP    " if inside_step else "between steps"
        print(f"    {count:5d}  {count / epochs:6.1f}/epoch  {place}  {site}")


def census(epochs: int, device: torch.device) -> dict[str, Counter]:
    """Prints where every fit's syncs happen, the hand loop's, then kerasish's in each config; returns them by label."""
    print(f"Census: W2, {epochs} epochs, sync debug mode 'warn' over the whole fit")
    counted = {}
    for label, fit in fitters(epochs, CONFIGS, checked=False).items():
        parts = build(WORKLOADS["w2"], device)
        with sync_census(device) as sites, quiet():
            fit(parts)
        print_census(label, sites, epochs)
        counted[label] = sites
    return counted


def census_record(sites: Counter) -> list[dict[str, Any]]:
    """A census as JSON can hold it, most frequent site first."""
    return [{"site": site, "in_step": inside, "count": count} for (site, inside), count in sites.most_common()]


def fp16_report(epochs: int, device: torch.device) -> dict[str, Any] | None:
    """fp16's census, apart from the verdict: its only syncs in a step should be GradScaler's, one per step.

    W2 steps the optimizer after every train batch, so a fit steps it ``epochs * len(train_loader)`` times. Returns
    what was counted, or ``None`` off CUDA, where fp16 does not run.
    """
    label = f"kerasish {FP16.label}"
    if device.type != "cuda":
        print(f"  {label}: skipped, fp16 needs CUDA (its gradient scaler)")
        return None
    parts = build(WORKLOADS["w2"], device)
    steps = epochs * len(parts.train_loader)
    with sync_census(device) as sites, quiet():
        fit_config(FP16, parts, epochs=epochs)
    print_census(label, sites, epochs)
    syncs = in_step(sites)
    expected = sum(syncs.values()) == steps and all(site.endswith(" optimizer_step") for site in syncs)
    verdict = "one per optimizer step, as documented" if expected else "UNEXPECTED"
    print(f"  fp16 (not in the verdict): {sum(syncs.values())} syncs inside steps, {steps} optimizer steps: {verdict}")
    return {"optimizer_steps": steps, "as_documented": expected, "census": census_record(sites)}


def verdict(verdicts: dict[str, bool], device: torch.device) -> int:
    """Prints the verdict on kerasish's configurations; returns the exit status."""
    if device.type != "cuda":
        print("verdict: none, the plumbing ran every configuration; run on a CUDA device for a real check")
        return 2
    failed = [label for label, ok in verdicts.items() if label.startswith("kerasish") and not ok]
    configs = f"{len(CONFIGS)} configurations"
    if failed:
        print(f"verdict: kerasish FAIL: a host sync inside a step in {len(failed)} of {configs}: {', '.join(failed)}")
    else:
        print(f"verdict: kerasish PASS: no host sync inside a step in any of {configs}")
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per checked fit (default 3)")
    parser.add_argument("--device", default="cuda", help="a CUDA device (default cuda); cpu: plumbing only")
    parser.add_argument("--json", type=Path, help="write the verdicts and the censuses here")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs} is too small; it must be >= 1")
    args.device = torch.device(args.device)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = args.device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print(f"cuda_sync_check: CUDA is not available to torch {torch.__version__}; nothing was checked.")
        sys.exit(2)
    if not cuda:
        print(f"cuda_sync_check on {args.device}: plumbing run only; there is no sync debug mode off CUDA.")
    warm_up([*CONFIGS, FP16] if cuda else CONFIGS, args.device)
    print(f"Strict check: W2, {args.epochs} epochs, sync debug mode 'error' inside each step and read-ahead")
    checked = fitters(args.epochs, CONFIGS, checked=True)
    width = max(map(len, checked))
    verdicts = {label: strict_check(label, fit, args.device, width) for label, fit in checked.items()}
    counted = census(args.epochs, args.device)
    fp16 = fp16_report(args.epochs, args.device)
    status = verdict(verdicts, args.device)
    if args.json:
        record = {
            "device": str(args.device),
            "torch": torch.__version__,
            "epochs": args.epochs,
            "strict": verdicts,
            "census": {label: census_record(sites) for label, sites in counted.items()},
            "fp16": fp16,
            "exit_status": status,
        }
        args.json.write_text(json.dumps(record, indent=1))
    sys.exit(status)


if __name__ == "__main__":
    main()
