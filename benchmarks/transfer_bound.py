"""A transfer-bound job on CUDA: kerasish, reading a batch ahead, against a hand loop that copies synchronously.

    python benchmarks/transfer_bound.py [--repeats 5] [--epochs 5] [--samples 8192] [--size 128] [--batch-size 256]
                                        [--loaders slices samples] [--device cuda] [--json out.json]

**The job.** ``--samples`` uniform-noise images of 3×size×size float32 with random labels (10 classes), made once and
held in host memory (8192 × 3×128×128 is 1.6 GB, 48 MiB a batch of 256), and a tiny net: 1×1 conv 3→8, ReLU, global
average pool, linear 8→10, trained by SGD with momentum, no shuffling, no val pass. The net's step on a batch
already on the GPU should take a fraction of a millisecond, the batch's trip over PCIe milliseconds. The script
measures both alone first ("copy alone", "step alone"), so the table can be read against them.

**The variants.** All three train the same net from the same seeded weights on the same batches in the same order.

- *hand-written*: ``x, y = x.to(device), y.to(device)``, then forward, loss, backward, step; the loss summed on the
  device (float64, as kerasish sums it) and read once per epoch. ``.to`` without ``non_blocking`` is synchronous:
  the host waits for the copy, which waits behind the previous step's kernels; meanwhile no next batch is read and
  no kernel launched, and while the host reads the next batch the GPU idles.
- *kerasish*: ``KerasModel(net, loss_fn, optimizer, device)`` with ``prefetch`` left at its default (on for
  CUDA), ``fit(loader, epochs, verbose=0, patience=None, restore_best_weights=False)``: the batch after the current
  one is read, and its copy issued on a side stream, while the current step runs (``kerasish.prefetch``).
- *kerasish prefetch=False*, the control: kerasish's copy is non-blocking but on the step's stream, so the host
  runs ahead of the GPU (it reads and launches while the GPU works) yet the copies and the steps take turns.

**The loaders**, shared by the variants, differ in what a batch costs the host:

- ``slices``: the data is pinned once, and each batch is a contiguous slice of it (a sampler of ``slice`` objects,
  ``batch_size=None``; ``pin_memory=True`` then has nothing to do). A batch costs the host next to nothing: the copy
  is the job, and overlapping it with the step is the whole difference. Run first, so that a run a timeout stops
  still has it.
- ``samples``: ``DataLoader(TensorDataset(x, y), batch_size, pin_memory=True, num_workers=0)``. Per batch the main
  process indexes every sample, stacks them and copies the stack into pinned memory: a Python call per sample and
  two host copies of the batch, likely more time than the PCIe copy (compare "copy alone"). Such a job is bound by
  the loader, and hiding the copy can save at most its share of a batch's time.

**The measurement.** Each run builds a fresh seeded net and optimizer and trains ``--epochs`` epochs. Each epoch
ends with ``torch.cuda.synchronize()`` and a ``time.perf_counter()`` stamp: for kerasish in a callback's
``on_epoch_end`` (it turns on no batch hook), for the hand loop after its loss read. An epoch's time runs from the
previous stamp (or the fit's start, after a synchronize) to its own; epoch 1 (cuDNN start-up, the pinned host
allocator's first blocks) is dropped, and a run's s/epoch is the median of the rest. The variants take turns,
their order rotated each repeat, all in one process (the data is made once). Per variant: the median s/epoch over
repeats; ``× hand``: the median of the paired ratios, each repeat's kerasish run over that repeat's hand run.

**The checks.** Every kerasish run must match the hand run of its repeat, per-epoch train loss and final weights,
within 1e-6 on CPU, where the arithmetic is the same to the bit, and 1e-4 on CUDA, where kernels may reduce in a
different order from run to run (``torch.allclose`` with that as both ``rtol`` and ``atol``). The verdict per
loader, "kerasish faster than the hand loop: yes", when the median paired ratio is below 1.

Exit status: 0 when kerasish is faster with every loader and every result matched, 1 otherwise, 2 when there is
no CUDA device. ``--device cpu`` runs the plumbing on small sizes, with ``prefetch=True`` said explicitly (off is
CPU's default), checks the results, and exits 2 (1 if a result did not match): CPU timings mean nothing here.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# The checkout next to this folder, installed or not: the benchmark measures the code it ships with.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kerasish import Callback, KerasModel

VARIANTS = ("hand-written", "kerasish", "kerasish prefetch=False")
LOADERS = ("slices", "samples")  # the copy-bound one first: a run cut short by a timeout has it
NUM_CLASSES = 10
TOLERANCE = {"cpu": 1e-6, "cuda": 1e-4}
TABLE_ROW = "{:<26}{:>9}  {:>17}  {:>9}  {:>7}  {:>15}"
# Sizes per device type when not given: on an H200, a few seconds per fit with the samples loader (expected); on CPU,
# a plumbing run of seconds in all.
DEFAULTS = {
    "cuda": {"repeats": 5, "epochs": 5, "samples": 8192, "size": 128, "batch_size": 256},
    "cpu": {"repeats": 2, "epochs": 3, "samples": 256, "size": 32, "batch_size": 64},
}


@dataclass
class Run:
    """One fit of one variant: per-epoch train losses, epoch seconds, and the final weights (on the host)."""

    variant: str
    repeat: int
    losses: list[float]
    seconds: list[float]
    prefetch: bool | None  # kerasish's resolved setting (model.prefetch); None for the hand loop
    weights: dict[str, torch.Tensor] = field(repr=False)

    def per_epoch(self) -> float:
        """The median epoch, the first dropped as warm-up."""
        return statistics.median(self.seconds[1:])

    def record(self) -> dict:
        return {key: getattr(self, key) for key in ("variant", "repeat", "losses", "seconds", "prefetch")}


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work, so a stamp taken after it counts that work; nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(samples: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform-noise images and random labels, the same for every run; only the bytes to move matter."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(samples, 3, size, size, generator=generator)
    return x, torch.randint(0, NUM_CLASSES, (samples,), generator=generator)


def make_loader(kind: str, data: tuple[torch.Tensor, torch.Tensor], batch_size: int, pin: bool) -> DataLoader:
    """The loader both loops read; for ``"slices"``, ``data`` should already be pinned (see :func:`main`)."""
    dataset = TensorDataset(*data)
    if kind == "samples":
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, pin_memory=pin)
    # batch_size=None: each index the sampler yields is passed to dataset[...] as it is, and a slice gives views.
    batches = [slice(start, start + batch_size) for start in range(0, len(dataset), batch_size)]
    return DataLoader(dataset, batch_size=None, sampler=batches, num_workers=0, pin_memory=pin)


def make_net(device: torch.device) -> nn.Module:
    """The tiny net, seeded: every call gives the same weights."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES))
    return net.to(device)


def make_optimizer(net: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)


def hand_fit(net: nn.Module, loader: DataLoader, *, epochs: int, device: torch.device) -> tuple[list, list]:
    """The hand loop: returns the per-epoch train losses and the stamps (the start, then each epoch's end)."""
    optimizer, loss_fn = make_optimizer(net), nn.CrossEntropyLoss()
    losses: list[float] = []
    net.train()
    synchronize(device)
    stamps = [time.perf_counter()]
    for _epoch in range(epochs):
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)  # synchronous: the host waits until the batch is on the GPU
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            optimizer.step()
            loss_sum.add_(loss.detach(), alpha=y.shape[0])
            seen += y.shape[0]
        losses.append((loss_sum / seen).item())
        synchronize(device)
        stamps.append(time.perf_counter())
    return losses, stamps


class EpochStamps(Callback):
    """Stamps each epoch's end after waiting for the device; overrides no batch hook, so the steps run as a user's."""

    def __init__(self, device: torch.device, start: float) -> None:
        self.device = device
        self.stamps = [start]

    def on_epoch_end(self, model: KerasModel, logs: dict) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())


def kerasish_fit(
    net: nn.Module, loader: DataLoader, *, epochs: int, device: torch.device, prefetch: bool | None
) -> tuple[list, list, bool]:
    """The same job through ``fit``; returns the losses, the stamps and whether kerasish prefetched."""
    model = KerasModel(net, nn.CrossEntropyLoss(), optimizer=make_optimizer(net), device=device, prefetch=prefetch)
    synchronize(device)
    clock = EpochStamps(device, time.perf_counter())
    frame = model.fit(loader, epochs=epochs, verbose=0, patience=None, restore_best_weights=False, callbacks=[clock])
    return [float(value) for value in frame["train_loss"]], clock.stamps, model.prefetch


def prefetch_option(variant: str, device: torch.device) -> bool | None:
    """``KerasModel(prefetch=...)`` for a kerasish variant: its default on CUDA; on CPU, on said explicitly."""
    if variant.endswith("prefetch=False"):
        return False
    return None if device.type == "cuda" else True


def run_variant(variant: str, loader: DataLoader, *, repeat: int, epochs: int, device: torch.device) -> Run:
    """One fresh fit of ``variant``."""
    net = make_net(device)
    if variant == "hand-written":
        (losses, stamps), prefetch = hand_fit(net, loader, epochs=epochs, device=device), None
    else:
        option = prefetch_option(variant, device)
        losses, stamps, prefetch = kerasish_fit(net, loader, epochs=epochs, device=device, prefetch=option)
    seconds = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    weights = {key: value.detach().to("cpu", copy=True) for key, value in net.state_dict().items()}
    return Run(variant, repeat, losses, seconds, prefetch, weights)


def measure(loader: DataLoader, args: argparse.Namespace) -> list[Run]:
    """Every variant once per repeat, taking turns: the order rotates by one each repeat."""
    runs = []
    for repeat in range(args.repeats):
        shift = repeat % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            runs.append(run_variant(variant, loader, repeat=repeat, epochs=args.epochs, device=args.device))
    return runs


def ms_per_call(work: Callable[[], object], device: torch.device, calls: int = 20) -> float:
    """Milliseconds per call of ``work`` issued back to back, after one call as warm-up."""
    work()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        work()
    synchronize(device)
    return (time.perf_counter() - start) / calls * 1e3


def floors(data: tuple[torch.Tensor, torch.Tensor], batch_size: int, device: torch.device) -> dict[str, float]:
    """The copy of one pinned batch alone, and the step alone on a batch already on the device, in ms per batch.

    With no overlap a batch costs at least their sum; with the copy hidden behind the step, at least the larger.
    """
    x, y = data[0][:batch_size], data[1][:batch_size]
    if device.type == "cuda":
        x = x.pin_memory()
    x_on, y_on = x.to(device), y.to(device)
    net = make_net(device)
    optimizer, loss_fn = make_optimizer(net), nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x_on), y_on).backward()
        optimizer.step()

    copy_ms = ms_per_call(lambda: x.to(device, non_blocking=True), device)
    gigabytes = x.numel() * x.element_size() / 1e9
    return {"copy_ms": copy_ms, "copy_gb_per_s": gigabytes / copy_ms * 1e3, "step_ms": ms_per_call(step, device)}


def largest_difference(ours: list[torch.Tensor], theirs: list[torch.Tensor], tolerance: float) -> tuple[float, bool]:
    """The largest absolute difference between paired tensors, and whether every pair is close to ``tolerance``."""
    pairs = list(zip(ours, theirs, strict=True))
    if any(a.shape != b.shape for a, b in pairs):  # a fit that ran fewer epochs, say
        return math.inf, False
    close = all(torch.allclose(a, b, rtol=tolerance, atol=tolerance) for a, b in pairs)
    return max(float((a - b).abs().max()) for a, b in pairs), close


def compare(runs: list[Run], tolerance: float) -> dict[str, float | bool]:
    """Each kerasish run against the hand run of its repeat: the largest differences, and whether all are close."""
    hand = {run.repeat: run for run in runs if run.variant == "hand-written"}
    pairs = [(run, hand[run.repeat]) for run in runs if run.variant != "hand-written"]
    losses = [torch.tensor(run.losses, dtype=torch.float64) for run, _ in pairs]
    hand_losses = [torch.tensor(reference.losses, dtype=torch.float64) for _, reference in pairs]
    weights = [value for run, _ in pairs for value in run.weights.values()]
    hand_weights = [reference.weights[key] for run, reference in pairs for key in run.weights]
    loss_diff, losses_close = largest_difference(losses, hand_losses, tolerance)
    weight_diff, weights_close = largest_difference(weights, hand_weights, tolerance)
    return {
        "equal": losses_close and weights_close,
        "max_loss_diff": loss_diff,
        "max_weight_diff": weight_diff,
        "tolerance": tolerance,
    }


def summarize(runs: list[Run]) -> dict[str, dict[str, float]]:
    """Per variant: the median s/epoch over repeats, its min and max, and the paired ratio to the hand run."""
    hand = {run.repeat: run.per_epoch() for run in runs if run.variant == "hand-written"}
    table = {}
    for variant in VARIANTS:
        mine = [run for run in runs if run.variant == variant]
        ratios = [run.per_epoch() / hand[run.repeat] for run in mine]
        seconds = [run.per_epoch() for run in mine]
        table[variant] = {
            "s_per_epoch": statistics.median(seconds),
            "min": min(seconds),
            "max": max(seconds),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "faster_in": sum(ratio < 1 for ratio in ratios),
        }
    return table


def report(kind: str, loader: DataLoader, result: dict, args: argparse.Namespace) -> None:
    """Prints one loader's table, its check and its verdict."""
    batch = args.batch_size * 3 * args.size * args.size * 4 / 2**20
    print(f"\nloader '{kind}': {len(loader)} batches of {batch:.1f} MiB per epoch, {args.repeats} repeats")
    print(TABLE_ROW.format("variant", "s/epoch", "spread (min–max)", "ms/batch", "× hand", "× hand min–max"))
    for variant, row in result["summary"].items():
        cells = (
            f"{row['s_per_epoch']:.4f}",
            f"{row['min']:.4f}–{row['max']:.4f}",
            f"{row['s_per_epoch'] / len(loader) * 1e3:.3f}",
            f"{row['ratio']:.3f}",
            f"{row['ratio_min']:.3f}–{row['ratio_max']:.3f}",
        )
        print(TABLE_ROW.format(variant, *cells))
    check = result["check"]
    same = "yes" if check["equal"] else "NO, MISMATCH"
    print(
        f"same results as the hand loop: {same} (largest |Δ| per-epoch loss {check['max_loss_diff']:.2e}, "
        f"weight {check['max_weight_diff']:.2e}; tolerance {check['tolerance']:g})"
    )
    row = result["summary"]["kerasish"]
    answer = "yes" if result["faster"] else "no"
    print(
        f"kerasish faster than the hand loop: {answer} (× {row['ratio']:.3f}, faster in {row['faster_in']} of "
        f"{args.repeats} repeats)"
    )


def run_loader(kind: str, data: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace) -> dict:
    """Measures, checks and reports one loader; returns its part of the JSON record."""
    loader = make_loader(kind, data, args.batch_size, pin=args.device.type == "cuda")
    runs = measure(loader, args)
    summary = summarize(runs)
    check = compare(runs, TOLERANCE[args.device.type])
    prefetched = {run.variant: run.prefetch for run in runs}
    result = {"summary": summary, "check": check, "faster": summary["kerasish"]["ratio"] < 1, "prefetch": prefetched}
    report(kind, loader, result, args)
    if prefetched["kerasish"] is not True:  # the variant is meant to measure prefetching; say so if it did not
        print(f"WARNING: the kerasish variant ran with prefetch={prefetched['kerasish']}")
    return {**result, "runs": [run.record() for run in runs]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="a CUDA device (default cuda); cpu: plumbing only")
    for name, meaning in [
        ("repeats", "fits per variant and loader"),
        ("epochs", "epochs per fit, the first dropped (at least 2)"),
        ("samples", "images in the data"),
        ("size", "image height and width"),
        ("batch-size", "samples per batch"),
    ]:
        key = name.replace("-", "_")
        cuda, cpu = DEFAULTS["cuda"][key], DEFAULTS["cpu"][key]
        parser.add_argument(f"--{name}", type=int, help=f"{meaning} (default: {cuda} on CUDA, {cpu} on CPU)")
    parser.add_argument(
        "--loaders", nargs="+", choices=LOADERS, default=list(LOADERS), help="which, in order (default: slices samples)"
    )
    parser.add_argument("--json", type=Path, help="write the settings, the tables and every run's record here")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    defaults = DEFAULTS["cuda" if args.device.type == "cuda" else "cpu"]
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fails before any data is made, naming the option, the value and what would do."""
    if args.device.type not in ("cuda", "cpu"):
        parser.error(f"--device {args.device} is not valid; use cuda (cuda:N) or cpu")
    least = {"repeats": 1, "epochs": 2, "samples": 1, "size": 1, "batch_size": 1}
    for name, minimum in least.items():
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is too small; it must be >= {minimum}")
    if args.batch_size > args.samples:
        parser.error(f"--batch-size {args.batch_size} is more than --samples {args.samples}; one batch needs as many")


def write_json(args: argparse.Namespace, floor: dict[str, float], results: dict[str, dict]) -> None:
    settings = {key: str(value) if key in ("device", "json") else value for key, value in vars(args).items()}
    args.json.write_text(json.dumps({"settings": settings, "floors": floor, "loaders": results}, indent=1))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = args.device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print(f"transfer_bound: CUDA is not available to torch {torch.__version__}; nothing was measured.")
        sys.exit(2)
    data = make_data(args.samples, args.size)
    name = torch.cuda.get_device_name(args.device) if cuda else "CPU: plumbing only, timings mean nothing"
    print(f"transfer_bound on {args.device} ({name}), torch {torch.__version__}")
    floor = floors(data, args.batch_size, args.device)
    print(
        f"copy alone {floor['copy_ms']:.3f} ms/batch ({floor['copy_gb_per_s']:.1f} GB/s), "
        f"step alone {floor['step_ms']:.3f} ms/batch"
    )
    results = {}
    for kind in args.loaders:
        # Pinned once for the slices loader, so that its batches need no pinning; the samples loader pins per batch.
        source = tuple(tensor.pin_memory() for tensor in data) if kind == "slices" and cuda else data
        results[kind] = run_loader(kind, source, args)
        if args.json:  # after each loader, so that a run stopped by a timeout leaves what it finished
            write_json(args, floor, results)
    matched = all(result["check"]["equal"] for result in results.values())
    if not cuda:
        print("\nno CUDA: plumbing only" + ("" if matched else "; a result did NOT match the hand loop's"))
        sys.exit(2 if matched else 1)
    sys.exit(0 if matched and all(result["faster"] for result in results.values()) else 1)


if __name__ == "__main__":
    main()
