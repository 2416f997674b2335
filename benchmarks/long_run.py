"""Long runs: what writing the run state within a pass costs, and what resuming from inside a pass saves.

``fit(state_path=..., state_every_n_steps=K)`` writes the run's whole state (weights, optimizer, scheduler, random
states, history, the pass's partial sums, the data position) atomically, with ``fsync``, after every ``K`` optimizer
steps; ``fit(..., resume=True)`` goes on from the exact batch it was written after, skipping the batches already
trained on by index, without reading them (see :mod:`kerasish.cursor`). Three measurements, in one process:

- ``small``, ``big``: the time per epoch of a fit that writes its state at epoch ends only, or every ``K`` steps,
  against the same fit without ``state_path`` (paired by repeat: milliseconds more per epoch and the overhead in %),
  and the milliseconds of one write, timed around each write inside the fit (see :class:`Clock`). ``small`` is an
  MLP 64-32-10 (Adam), ``big`` an MLP with six 2048×2048 layers (25.2 M parameters, 101 MB of float32; plain SGD,
  whose state is empty, so the file is about the weights' size; Adam would triple it). Synthetic data, batch 16.
- ``resume``: a pass over a data set whose ``__getitem__`` sleeps (``--read-ms``, standing for a sample read from
  disk) is cut at 90 % (a callback raises ``KeyboardInterrupt``); then the wall time of ``fit(..., resume=True)`` to
  the end of that pass against rerunning the pass from its start (a 1-epoch fit without state), which is what a run
  without mid-pass resume has to do, and how many samples each read.

    .venv/bin/python benchmarks/long_run.py                        # all three, state files in the system temp dir
    .venv/bin/python benchmarks/long_run.py --dir /dev/shm         # the same in RAM: the CPU side of a write alone
    .venv/bin/python benchmarks/long_run.py --parts resume --repeats 9

Every fit runs with ``verbose=0``, ``patience=None`` and ``restore_best_weights=False``: with best-weight restore
the state file also holds the best epoch's weights, up to twice the size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from kerasish import Callback, KerasModel

PARTS = ("small", "big", "resume")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure")
    parser.add_argument("--dir", type=Path, default=None, help="where state files go (default: the system temp dir)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of small and resume")
    parser.add_argument("--big-repeats", type=int, default=3, help="repeats of big")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--small-steps", type=int, default=200, help="steps per epoch of small")
    parser.add_argument("--small-epochs", type=int, default=4, help="epochs per small fit; the first is dropped")
    parser.add_argument("--small-every", type=int, nargs="+", default=[100, 10, 1], help="K values of small")
    parser.add_argument("--big-steps", type=int, default=40, help="steps per epoch of big")
    parser.add_argument("--big-every", type=int, nargs="+", default=[20, 5], help="K values of big")
    parser.add_argument("--samples", type=int, default=4000, help="samples of the resume part's data set")
    parser.add_argument("--read-ms", type=float, default=0.2, help="sleep in each __getitem__ of the resume part")
    parser.add_argument("--cut", type=float, default=0.9, help="fraction of the pass after which the run is cut")
    parser.add_argument("--resume-every", type=int, default=25, help="state_every_n_steps of the resume part")
    args = parser.parse_args()
    counts = ("repeats", "big_repeats", "threads", "small_steps", "big_steps", "samples", "resume_every")
    for name in counts:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.small_epochs < 2:
        parser.error(f"--small-epochs must be >= 2 (the first is dropped); got {args.small_epochs}")
    if min(args.small_every + args.big_every) < 1:
        parser.error(f"--small-every and --big-every take counts >= 1; got {args.small_every} {args.big_every}")
    if args.read_ms < 0:
        parser.error(f"--read-ms must be >= 0; got {args.read_ms}")
    batches = -(-args.samples // 16)
    if not 0 < round(args.cut * batches) < batches:
        parser.error(f"--cut {args.cut} of {batches} batches (--samples {args.samples}) leaves no batch on one side")
    return args


def file_system(path: Path) -> str:
    """The type and device of the file system ``path`` is on, from ``/proc/mounts`` (Linux), for the report."""
    path, best = path.resolve(), ("?", "?", "")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "file system unknown"
    for line in mounts:
        device, point, kind = line.split()[:3]
        if path.is_relative_to(point) and len(point) >= len(best[2]):
            best = (kind, device, point)
    return f"{best[0]} on {best[1]}"


def loader(dataset: Dataset, batch: int, seed: int) -> DataLoader:
    """A shuffled loader with its own seeded generator, as a reproducible run has one."""
    return DataLoader(dataset, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed))


def fit(model: KerasModel, data: DataLoader, epochs: int, callbacks: list[Callback], **state: Any) -> None:
    """``model.fit`` as every run here calls it: no val data, bars, early stopping or best-weight copy."""
    model.fit(data, epochs=epochs, verbose=0, patience=None, restore_best_weights=False, callbacks=callbacks, **state)


class Clock(Callback):
    """Stamps each epoch's end, and the gap from each train batch's end hook to the next batch's begin hook.

    ``fit`` writes the state within a pass after a batch's hooks, so such a write falls in the gap after that batch,
    beside the loading of the next one; the epoch-end write falls in the gap from ``on_epoch_end`` to the next
    epoch's first batch. The hooks cost two Python calls a step, in every variant alike.
    """

    def on_fit_begin(self, model: KerasModel, logs: dict) -> None:
        self.ends: list[float] = []
        self.gaps: list[tuple[int, float]] = []  # (optimizer steps before the gap, seconds), within passes
        self.epoch_gaps: list[float] = []
        self._steps, self._last, self._after_epoch = 0, None, False

    def on_train_batch_begin(self, model: KerasModel, logs: dict) -> None:
        now = time.perf_counter()
        if self._after_epoch:
            self.epoch_gaps.append(now - self._last)
        elif self._last is not None:
            self.gaps.append((self._steps, now - self._last))

    def on_train_batch_end(self, model: KerasModel, logs: dict) -> None:
        self._steps += 1
        self._last, self._after_epoch = time.perf_counter(), False

    def on_epoch_end(self, model: KerasModel, logs: dict) -> None:
        self._last, self._after_epoch = time.perf_counter(), True
        self.ends.append(self._last)


# --- 1. the cost of writing the state ---------------------------------------------------------------------------


@dataclass
class Workload:
    """A net, its optimizer and data, and what to time: ``epochs`` per fit, the ``every`` values (K) to try."""

    name: str
    title: str
    make_model: Callable[[], KerasModel]
    features: int
    steps: int
    epochs: int
    every: list[int]
    repeats: int
    batch: int = 16

    def data(self) -> DataLoader:
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(self.steps * self.batch, self.features, generator=generator)
        y = torch.randint(0, 10, (self.steps * self.batch,), generator=generator)
        return loader(TensorDataset(x, y), self.batch, seed=2)

    def variants(self) -> list[tuple[str, bool, int | None]]:
        """(label, writes state, K); the first is the reference every other is paired with."""
        return [
            ("no state_path", False, None),
            ("epoch ends only", True, None),
            *((f"every {k} steps", True, k) for k in self.every),
        ]

    def writes(self, state: bool, every: int | None) -> float:
        """Writes in a timed epoch, on average: the previous epoch's end write, and one after every ``every``-th
        optimizer step, counted over the fit (the last may fall on a pass's end, just before the end write)."""
        return 0 if not state else 1 + (0 if every is None else self.steps / every)


def small_model() -> KerasModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return KerasModel(net, nn.CrossEntropyLoss(), optimizer=torch.optim.Adam(net.parameters(), 1e-3), device="cpu")


def big_model() -> KerasModel:
    torch.manual_seed(0)
    layers = [layer for _ in range(6) for layer in (nn.Linear(2048, 2048), nn.ReLU())]
    net = nn.Sequential(*layers, nn.Linear(2048, 10))
    return KerasModel(net, nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(net.parameters(), 1e-3), device="cpu")


@dataclass
class FitTimes:
    """One fit of the write-cost part: median s/epoch (epochs 2..), the clock's gaps, the state file's bytes."""

    seconds: float
    write_gaps: list[float]  # gaps holding a write within the pass
    plain_gaps: list[float]  # gaps within the pass without one
    epoch_gaps: list[float]  # from epoch 2 on
    size: int


def timed_fit(workload: Workload, state: bool, every: int | None, folder: Path) -> FitTimes:
    model, data, clock = workload.make_model(), workload.data(), Clock()
    path = folder / f"{workload.name}.pt"
    options = {"state_path": path, "state_every_n_steps": every} if state else {}
    fit(model, data, workload.epochs, [clock], **options)
    size = path.stat().st_size if state else 0
    path.unlink(missing_ok=True)
    intervals = [end - start for start, end in zip(clock.ends, clock.ends[1:], strict=False)]
    writes = every is not None and state
    return FitTimes(
        seconds=statistics.median(intervals),
        write_gaps=[gap for steps, gap in clock.gaps if writes and steps % every == 0],
        plain_gaps=[gap for steps, gap in clock.gaps if not writes or steps % every],
        epoch_gaps=clock.epoch_gaps,
        size=size,
    )


def measure_writes(workload: Workload, folder: Path) -> dict[str, list[FitTimes]]:
    """Every variant ``repeats`` times, taking turns (each repeat starts one further along); runs by variant."""
    variants = workload.variants()
    timed_fit(workload, False, None, folder)  # warm-up: allocator, first file in the directory; not recorded
    runs: dict[str, list[FitTimes]] = {label: [] for label, _, _ in variants}
    for repeat in range(workload.repeats):
        for label, state, every in variants[repeat % len(variants) :] + variants[: repeat % len(variants)]:
            runs[label].append(timed_fit(workload, state, every, folder))
    return runs


def write_ms(run: FitTimes, base: FitTimes, every: int | None) -> float:
    """Milliseconds a write adds to its gap: a within-pass write's (``every`` set) or an epoch-end write's, against
    the same gaps of the run without state. The epoch-end one when no gap holds a write within the pass (K larger
    than an epoch's steps)."""
    if every is None or not run.write_gaps:
        return (statistics.median(run.epoch_gaps) - statistics.median(base.epoch_gaps)) * 1e3
    return (statistics.median(run.write_gaps) - statistics.median(base.plain_gaps)) * 1e3


def print_writes(workload: Workload, runs: dict[str, list[FitTimes]]) -> None:
    """The table: s/epoch; against the same repeat's run without state: ms/epoch more, in %, per write."""
    print(f"\n{workload.title}\n{workload.steps} steps of batch {workload.batch} per epoch, {workload.repeats} repeats")
    print(
        f"{'state writes':<18}{'writes/epoch':>13}{'s/epoch':>10}{'spread (min–max)':>19}"
        f"{'+ms/epoch':>11}{'overhead':>10}{'ms/write':>10}{'from writes':>13}{'file MB':>9}"
    )
    base = runs["no state_path"]
    base_epoch = statistics.median(run.seconds for run in base)
    for label, state, every in workload.variants():
        times = [run.seconds for run in runs[label]]
        spread = f"{min(times):.4f}–{max(times):.4f}"
        writes = workload.writes(state, every)
        line = f"{label:<18}{writes:>13.4g}{statistics.median(times):>10.4f}{spread:>19}"
        if state:
            pairs = list(zip(runs[label], base, strict=True))
            extra = statistics.median(run.seconds - ref.seconds for run, ref in pairs) * 1e3
            overhead = statistics.median(run.seconds / ref.seconds - 1 for run, ref in pairs) * 100
            per_write = statistics.median(write_ms(run, ref, every) for run, ref in pairs)
            share = writes * per_write / (base_epoch * 1e3) * 100
            size = runs[label][-1].size / 1e6
            line += f"{extra:>+11.1f}{overhead:>+9.1f}%{per_write:>10.2f}{share:>+12.1f}%{size:>9.2f}"
        print(line)
    step_ms = base_epoch / workload.steps * 1e3
    print(f"a step without state: {step_ms:.2f} ms (s/epoch of the run without state_path / steps)")
    print_write_spread(workload, runs)


def print_write_spread(workload: Workload, runs: dict[str, list[FitTimes]]) -> None:
    """How much single writes within a pass vary (a disk's occasional slow write shows here)."""
    base = runs["no state_path"]
    each = [
        (gap - statistics.median(ref.plain_gaps)) * 1e3
        for label, _, every in workload.variants()
        if every is not None
        for run, ref in zip(runs[label], base, strict=True)
        for gap in run.write_gaps
    ]
    if len(each) > 1:
        deciles = statistics.quantiles(each, n=10, method="inclusive")
        print(
            f"each write within a pass, all K ({len(each)}): median {statistics.median(each):.2f} ms, "
            f"10–90 % {deciles[0]:.2f}–{deciles[-1]:.2f} ms, max {max(each):.2f} ms"
        )


# --- 2. resuming at 90 % of a pass ------------------------------------------------------------------------------


class SlowSamples(Dataset):
    """64 features and a label per sample; each ``__getitem__`` sleeps ``read_ms`` (a read from disk) and is counted."""

    def __init__(self, samples: int, read_ms: float) -> None:
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(samples, 64, generator=generator)
        self.y = torch.randint(0, 10, (samples,), generator=generator)
        self.delay = read_ms / 1e3
        self.reads = 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        time.sleep(self.delay)
        return self.x[index], self.y[index]


class Cut(Callback):
    """Raises ``KeyboardInterrupt`` before train batch ``at`` (0-based), as Ctrl-C or a killed job would; ``None``:
    never. Every fit of the resume part has one, since a resumed fit must have the saved run's callbacks."""

    def __init__(self, at: int | None) -> None:
        self.at = at

    def on_train_batch_begin(self, model: KerasModel, logs: dict) -> None:
        if logs["batch"] == self.at:
            raise KeyboardInterrupt


@dataclass
class ResumeRepeat:
    """One repeat of the resume part: seconds and ``__getitem__`` calls of each fit, and which runs agree."""

    cut_reads: int
    resumed: float
    resumed_reads: int
    rerun: float
    rerun_reads: int
    consumed_read: float
    consumed_reads: int
    same_as_positioned: bool
    same_as_rerun: bool


def resume_fit(samples: int, read_ms: float, cut_at: int | None, **state: Any) -> tuple[float, int, KerasModel]:
    """A 1-epoch fit of a fresh model on fresh data (the same seeds every time): wall seconds, reads, the model."""
    model, data = small_model(), SlowSamples(samples, read_ms)
    start = time.perf_counter()
    try:
        fit(model, loader(data, 16, seed=2), 1, [Cut(cut_at)], **state)
    except KeyboardInterrupt:
        if cut_at is None:
            raise
    return time.perf_counter() - start, data.reads, model


def same_run(one: KerasModel, other: KerasModel) -> bool:
    """Whether two fits computed the same: history (but its times) and final weights, to the bit."""
    history = one.history.drop(columns="time").equals(other.history.drop(columns="time"))
    pairs = zip(one.net.state_dict().values(), other.net.state_dict().values(), strict=True)
    return history and all(torch.equal(a, b) for a, b in pairs)


def resume_repeat(args: argparse.Namespace, folder: Path, cut_at: int) -> ResumeRepeat:
    """Cut, resume, rerun, read the consumed batches; then an uninterrupted run with the same state settings,
    without the sleep (its numbers do not depend on it), for the check."""
    path, samples, read_ms = folder / "resume.pt", args.samples, args.read_ms
    state = {"state_path": path, "state_every_n_steps": args.resume_every, "resume": True}
    _, cut_reads, _ = resume_fit(samples, read_ms, cut_at, **state)  # resume=True and no file yet: a new run
    resumed, resumed_reads, resumed_model = resume_fit(samples, read_ms, None, **state)
    path.unlink()
    rerun, rerun_reads, rerun_model = resume_fit(samples, read_ms, None)
    data = SlowSamples(samples, read_ms)
    start = time.perf_counter()
    for _ in zip(range(cut_at), loader(data, 16, seed=2), strict=False):
        pass
    consumed_read = time.perf_counter() - start
    _, _, positioned = resume_fit(samples, 0.0, None, **state)
    path.unlink()
    return ResumeRepeat(
        cut_reads=cut_reads,
        resumed=resumed,
        resumed_reads=resumed_reads,
        rerun=rerun,
        rerun_reads=rerun_reads,
        consumed_read=consumed_read,
        consumed_reads=data.reads,
        same_as_positioned=same_run(resumed_model, positioned),
        same_as_rerun=same_run(resumed_model, rerun_model),
    )


def measure_resume(args: argparse.Namespace, folder: Path) -> None:
    batches = -(-args.samples // 16)
    cut_at = round(args.cut * batches)
    data = SlowSamples(200, args.read_ms)
    start = time.perf_counter()
    for index in range(len(data)):
        data[index]
    per_read = (time.perf_counter() - start) / len(data) * 1e3
    resume_repeat(args, folder, cut_at)  # warm-up, not recorded
    repeats = [resume_repeat(args, folder, cut_at) for _ in range(args.repeats)]
    print_resume(args, repeats, batches=batches, cut_at=cut_at, per_read=per_read)


def print_resume(
    args: argparse.Namespace, repeats: list[ResumeRepeat], *, batches: int, cut_at: int, per_read: float
) -> None:
    """The table: seconds and reads of the resumed run, the rerun and the consumed batches' reading; the checks."""
    saved_at, first = cut_at // args.resume_every * args.resume_every, repeats[0]
    print(
        f"\nResuming at {args.cut:.0%} of a pass: MLP 64-32-10 (Adam), {args.samples} samples, batch 16, "
        f"{batches} batches; __getitem__ sleeps {args.read_ms} ms (measured {per_read:.3f} ms a call)\n"
        f"the run is cut before batch {cut_at + 1}; its last state was written after batch {saved_at} "
        f"(state_every_n_steps={args.resume_every}); the cut run read {first.cut_reads} samples; "
        f"{args.repeats} repeats"
    )
    print(f"{'':<46}{'s':>8}{'spread (min–max)':>19}{'__getitem__ calls':>19}")
    rows = [
        ("resumed: fit(..., resume=True) to pass end", [r.resumed for r in repeats], first.resumed_reads),
        ("rerun: the pass from its start, no state", [r.rerun for r in repeats], first.rerun_reads),
        (f"(reading the {cut_at} consumed batches alone)", [r.consumed_read for r in repeats], first.consumed_reads),
    ]
    for label, times, reads in rows:
        print(f"{label:<46}{statistics.median(times):>8.3f}{f'{min(times):.3f}–{max(times):.3f}':>19}{reads:>19}")
    ratios = [r.resumed / r.rerun for r in repeats]
    print(
        f"resumed / rerun (median of the paired ratios): {statistics.median(ratios):.3f} "
        f"(min–max {min(ratios):.3f}–{max(ratios):.3f}), {1 / statistics.median(ratios):.1f}× faster"
    )
    positioned, rerun = sum(r.same_as_positioned for r in repeats), sum(r.same_as_rerun for r in repeats)
    print(
        f"the resumed run's history and final weights equal, to the bit: an uninterrupted run's with the same "
        f"state_every_n_steps in {positioned} of {args.repeats} repeats; the rerun's in {rerun} of {args.repeats}"
    )


def workload_of(part: str, args: argparse.Namespace) -> Workload:
    if part == "small":
        title = f"Small: MLP 64-32-10 (2,410 parameters, Adam), {args.small_epochs - 1} timed epochs per fit"
        every, steps = args.small_every, args.small_steps
        return Workload("small", title, small_model, 64, steps, args.small_epochs, every, args.repeats)
    title = "Big: MLP 2048-(6× 2048)-10 (25.2 M parameters, SGD without momentum), epoch 2 of each fit timed"
    return Workload("big", title, big_model, 2048, args.big_steps, 2, args.big_every, args.big_repeats)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as name:
        folder = Path(name)
        print(f"state files in {folder} ({file_system(folder)}), {args.threads} torch thread(s)")
        for part in args.parts:
            start = time.perf_counter()
            if part == "resume":
                measure_resume(args, folder)
            else:
                workload = workload_of(part, args)
                print_writes(workload, measure_writes(workload, folder))
            print(f"({part}: {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
