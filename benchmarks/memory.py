"""Peak memory (RSS) of a workload: kerasish against the hand-written loop, and kerasish with parts switched off.

    python benchmarks/memory.py [--workload w2] [--epochs 2] [--repeats 3] [--threads 1] [--variants ...]
                                [--env MALLOC_ARENA_MAX=1 ...] [--tracemalloc]

Every run is a fresh process (this script with ``--child``), as ``_worker.py`` runs them, so nothing one variant
allocated or imported is counted in another. A run reads its own ``/proc/self/status`` at fixed points: at start,
after ``import torch``, after ``workloads`` (which imports torchmetrics), after the variant's extra imports (pandas,
kerasish), after the parts are built (``workloads.build``), at the end of every epoch and after the fit. ``VmRSS`` is
the resident size then, ``VmHWM`` the highest it has been so far: the peak of the whole run is ``VmHWM`` at the end.

Variants take turns, repeat after repeat, each repeat starting one further along. The table shows per variant the
median over repeats of each column, and the difference of the peak to the hand loop's. The ``hand +`` rows are the
hand loop with kerasish's imports added and nothing else: peak(kerasish) − peak(hand + import kerasish) is what
``fit`` itself holds, and peak(hand + import kerasish) − peak(hand) what the import holds. ``--tracemalloc`` also
reports the Python-side allocations (tensors' data is not traced: torch allocates it outside Python's allocator).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent


class Variant(NamedTuple):
    """One kind of run.

    Attributes:
        label: its row's name in the table.
        modules: imported before the parts are built; ``"lazy pandas"`` puts a :class:`LazyPandas` in its place, so
            kerasish's ``import pandas`` costs nothing until the fit first uses pandas.
        overrides: kerasish ``fit`` arguments that differ from ``kerasish_run.py``'s (``metrics=False``: no metric,
            ``monitor="val_loss"``; ``columns_only=True``: ``model.history`` is the ``History`` object, not its
            DataFrame, so the callbacks' column check in ``on_fit_begin`` builds no frame); ``None`` runs the hand
            loop.
        frame_after: the hand loop, then ``import pandas`` and a DataFrame of its history: what returning a frame
            costs when pandas is first imported as the fit ends.
    """

    label: str
    modules: tuple[str, ...] = ()
    overrides: dict | None = None
    frame_after: bool = False


KERASISH = ("kerasish",)
OFF = {"restore_best_weights": False, "patience": None, "metrics": False}
VARIANTS = {
    "hand": Variant("hand-written"),
    "hand+pandas": Variant("hand + import pandas", ("pandas",)),
    "hand+kerasish": Variant("hand + import kerasish", KERASISH),
    "hand-then-frame": Variant("hand, then pandas + frame", frame_after=True),
    "kerasish": Variant("kerasish verbose=0", KERASISH, {}),
    "kerasish-v1": Variant("kerasish verbose=1", KERASISH, {"verbose": 1}),
    "no-restore": Variant("kerasish restore_best_weights=False", KERASISH, {"restore_best_weights": False}),
    "no-patience": Variant("kerasish patience=None", KERASISH, {"patience": None}),
    "no-metrics": Variant("kerasish no metrics (val_loss)", KERASISH, {"metrics": False}),
    "bare": Variant("kerasish all four off", KERASISH, OFF),
    "lazy-pandas": Variant("kerasish, pandas imported lazily", ("lazy pandas", *KERASISH), {}),
    "lazy+columns": Variant("…and no frame in on_fit_begin", ("lazy pandas", *KERASISH), {"columns_only": True}),
}
# Modules whose presence says a package is really loaded (pandas.core.frame: not merely registered lazily).
WATCHED = ("pandas.core.frame", "tqdm", "matplotlib", "matplotlib.pyplot", "scipy", "kerasish.plotting")
STATUS_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


def status() -> dict[str, float]:
    """This process's resident size now and at its highest so far, in MiB, from ``/proc/self/status``."""
    found = {}
    with open("/proc/self/status") as lines:
        for line in lines:
            key, _, value = line.partition(":")
            if key in STATUS_FIELDS:
                found[key] = int(value.split()[0]) / 1024
    return found


class Probe:
    """Readings of :func:`status` at named points, in order."""

    def __init__(self) -> None:
        self.points: list[tuple[str, dict[str, float]]] = []

    def read(self, name: str) -> None:
        # Whether pandas is really loaded (not only registered lazily) when the reading is taken.
        self.points.append((name, {**status(), "pandas": float("pandas.core.frame" in sys.modules)}))


def child(args: argparse.Namespace) -> dict:
    """One run: imports, builds and fits, reading the memory at each point; returns the record the parent reads."""
    probe = Probe()
    probe.read("start")
    import torch

    probe.read("torch")
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    import workloads

    probe.read("workloads")
    variant = VARIANTS[args.child]
    import_modules(variant.modules)
    probe.read("imports")
    parts = workloads.build(workloads.WORKLOADS[args.workload], torch.device("cpu"), seed=0)
    probe.read("setup")
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    before = set(sys.modules)
    fit = fit_hand if variant.overrides is None else fit_kerasish
    history = fit(parts, args, probe)
    if variant.frame_after:
        import pandas

        pandas.DataFrame(history)
    probe.read("end")
    record = {"variant": args.child, "points": probe.points, "history": history}
    record["modules"] = sorted(name for name in WATCHED if name in sys.modules)
    record["fit_imported"] = sorted({name.split(".")[0] for name in set(sys.modules) - before})
    if args.tracemalloc:
        record["traced_mib"] = [value / 2**20 for value in tracemalloc.get_traced_memory()]
    return record


class LazyPandas(types.ModuleType):
    """Stands in for pandas until one of its attributes is read, then imports it: a lazy ``import pandas``.

    ``importlib.util.LazyLoader`` would not do: ``import pandas`` itself reads the module's ``__spec__``, which
    loads it. A plain module's attributes are read without a load, so only a real use (``pd.DataFrame``) loads
    pandas here; dunder reads (``inspect.getmodule`` asks every module in ``sys.modules`` for ``__file__``) do not.
    """

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        if sys.modules.get("pandas") is self:
            del sys.modules["pandas"]
        real = importlib.import_module("pandas")
        self.__dict__.update(real.__dict__)
        return getattr(real, name)


def import_modules(modules: tuple[str, ...]) -> None:
    """Imports ``modules`` in order; ``"lazy pandas"`` registers pandas to be loaded on its first attribute read."""
    for module in modules:
        if module == "lazy pandas":
            stand_in = LazyPandas("pandas")
            stand_in.__spec__ = importlib.util.find_spec("pandas")  # torch._dynamo's find_spec("pandas") wants one
            sys.modules["pandas"] = stand_in
            continue
        if module == "kerasish":  # the checkout next to this folder, as kerasish_run.py does
            sys.path.insert(0, str(HERE.parent))
        importlib.import_module(module)


def fit_hand(parts, args: argparse.Namespace, probe: Probe) -> dict:
    """The hand loop of ``hand_loop.py``, read at the end of each epoch's val pass (before its best-weight copy)."""
    from hand_loop import HandLoop

    class ProbedLoop(HandLoop):
        passes = 0

        def val_pass(self) -> tuple[float, float]:
            result = super().val_pass()
            self.passes += 1
            probe.read(f"epoch {self.passes}")
            return result

    return ProbedLoop(parts).fit(epochs=args.epochs, patience=args.epochs).history


def fit_kerasish(parts, args: argparse.Namespace, probe: Probe) -> dict:
    """The fit of ``kerasish_run.py`` with the variant's overrides; read at every epoch end, after the built-ins."""
    from kerasish import Callback, KerasModel

    class Reader(Callback):
        def on_epoch_end(self, model: KerasModel, logs: dict) -> None:
            probe.read(f"epoch {logs['epoch']}")

    class ColumnsOnly(KerasModel):
        @property
        def history(self) -> object:  # Monitor.for_fit reads only .columns, which History has too
            return self._history

    overrides = dict(VARIANTS[args.child].overrides)
    metrics = overrides.pop("metrics", True)
    model_class = ColumnsOnly if overrides.pop("columns_only", False) else KerasModel
    fit_args = {"monitor": "val_acc", "mode": "max", "patience": args.epochs, "verbose": 0}
    if not metrics:
        fit_args.update(monitor="val_loss", mode="min")
    fit_args.update(overrides)
    model = model_class(
        parts.net,
        loss_fn=parts.loss_fn,
        metrics_dict={"acc": parts.metric} if metrics else None,
        optimizer=parts.optimizer,
        device=parts.device,
    )
    frame = model.fit(parts.train_loader, parts.val_loader, epochs=args.epochs, callbacks=[Reader()], **fit_args)
    return {column: [float(value) for value in frame[column]] for column in frame.columns}


def run_child(variant: str, args: argparse.Namespace, folder: Path) -> dict:
    """One fresh process with the thread count fixed for every library that reads one, plus ``--env``."""
    out = folder / f"{variant}-{time.monotonic_ns()}.json"
    command = [sys.executable, str(Path(__file__).resolve()), f"--child={variant}", f"--out={out}"]
    command += [f"--workload={args.workload}", f"--epochs={args.epochs}", f"--threads={args.threads}"]
    command += ["--tracemalloc"] if args.tracemalloc else []
    counts = dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"), str(args.threads))
    extra = dict(pair.split("=", 1) for pair in args.env)
    done = subprocess.run(command, env={**os.environ, **counts, **extra}, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{variant} failed with exit status {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads(out.read_text())


def reading(record: dict, point: str, field: str = "VmRSS") -> float:
    return dict(record["points"])[point][field]


def summary_row(records: list[dict], hand_peak: float | None) -> tuple[dict[str, float], str]:
    """Medians over a variant's runs; the second value is the spread of the peaks and where the peak was reached."""
    first_epoch = [reading(r, "epoch 1", "VmHWM") for r in records]
    peaks = [reading(r, "end", "VmHWM") for r in records]
    row = {
        "torch": statistics.median(reading(r, "torch") for r in records),
        "imports": statistics.median(reading(r, "imports") for r in records),
        "setup": statistics.median(reading(r, "setup") for r in records),
        "epoch 1": statistics.median(reading(r, "epoch 1") for r in records),
        "end": statistics.median(reading(r, "end") for r in records),
        "peak": statistics.median(peaks),
    }
    row["fit adds"] = statistics.median(reading(r, "end", "VmHWM") - reading(r, "imports") for r in records)
    row["Δ peak"] = row["peak"] - hand_peak if hand_peak is not None else 0.0
    by_epoch_1 = sum(abs(peak - early) < 0.5 for peak, early in zip(peaks, first_epoch, strict=True))
    note = f"{min(peaks):.1f}–{max(peaks):.1f}, peak by epoch 1 in {by_epoch_1}/{len(records)}"
    return row, note


COLUMNS = ("torch", "imports", "setup", "epoch 1", "end", "peak", "fit adds", "Δ peak")


def print_table(records: list[dict], variants: list[str]) -> None:
    """One row per variant, MiB, medians over repeats; ``Δ peak`` against the hand loop's median peak."""
    by_variant = {name: [r for r in records if r["variant"] == name] for name in variants}
    hand = by_variant.get("hand")
    hand_peak = statistics.median(reading(r, "end", "VmHWM") for r in hand) if hand else None
    print(f"{'variant (RSS in MiB)':<36}" + "".join(f"{column:>9}" for column in COLUMNS) + "  peak min–max")
    for name in variants:
        row, note = summary_row(by_variant[name], hand_peak)
        cells = "".join(f"{row[column]:>+9.1f}" if column == "Δ peak" else f"{row[column]:>9.1f}" for column in COLUMNS)
        print(f"{VARIANTS[name].label:<36}{cells}  {note}")
    for name in variants:
        extras = {tuple(r["modules"]) for r in by_variant[name]}
        traced = [r["traced_mib"] for r in by_variant[name] if "traced_mib" in r]
        imported = sorted({module for r in by_variant[name] for module in r["fit_imported"]})
        line = f"  {name}: loaded at the end: {', '.join(next(iter(extras))) or '-'}"
        line += f"; first imported during the fit: {', '.join(imported) or 'nothing'}"
        if traced:
            line += f"; tracemalloc during the fit: peak {statistics.median(t[1] for t in traced):.2f} MiB"
            line += f", held at the end {statistics.median(t[0] for t in traced):.2f} MiB"
        print(line)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=("w1", "w2"), default="w2", help="default w2")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP/MKL threads per run (default 1)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="more environment for the runs")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python-side allocations in the fit")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--epochs, --repeats and --threads must be >= 1")
    if any("=" not in pair for pair in args.env):
        parser.error(f"--env {' '.join(args.env)}: give KEY=VALUE pairs")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        args.out.write_text(json.dumps(child(args)))
        return
    # Here, not at the top: a child imports this module too, and run.py would load torch before its first reading.
    from run import schedule

    order = schedule(args.variants, args.repeats)
    records = []
    with tempfile.TemporaryDirectory(prefix="kerasish-memory-") as folder:
        for index, (repeat, variant) in enumerate(order, start=1):
            records.append(run_child(variant, args, Path(folder)))
            print(f"  [{index}/{len(order)}] {variant} repeat {repeat + 1}", file=sys.stderr)
    env = f", env {' '.join(args.env)}" if args.env else ""
    print(f"{args.workload}, {args.epochs} epoch(s), {args.threads} thread(s), {args.repeats} repeats{env}")
    print_table(records, args.variants)


if __name__ == "__main__":
    main()
