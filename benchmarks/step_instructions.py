"""Where a step's instructions go: kerasish's W1 train and val steps against the hand loop's, piece by piece.

``instructions.py`` counts whole epochs. This counts one step, and the parts of kerasish's step that the hand loop
does differently, so that each thousand instructions of the difference has a name. Everything runs in one process
under callgrind with collection on only inside ``operator.call``, which nothing else in a step calls: each measured
loop is started through it, and callgrind dumps a count when it returns (``--toggle-collect`` and ``--dump-after``).
Imports, data loading and set-up are not counted. Every loop runs over the same 87 full W1 train batches, three
times; the median round is reported per call.

    python benchmarks/step_instructions.py            # about 2 minutes; valgrind must be installed

The steps are :class:`kerasish.StepRunner` on a W1 batch as a loader yields it, and the hand loop's ``train_step``
and ``val_step`` (``hand_loop.py``). The passes are :class:`kerasish.EpochRunner` and the hand loop's
``train_pass`` and ``val_pass`` over the same batches, counted per batch: the step, the loop around it, and the
pass's start and end. The pieces are the functions a kerasish step calls, next to what the hand loop does in their
place (two ``.to`` calls for ``to_device``, ``len(y)`` for ``batch_size``, ...). A piece's count includes the
Python call that runs it (about 450 instructions, the ``nothing`` row).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import operator
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from run import worker_env

HERE = Path(__file__).resolve().parent
ROUNDS = 3


def measured_loops():
    """``(name, loop)`` pairs; each loop runs one thing over every batch. Imports torch, so only under callgrind."""
    import torch
    import workloads
    from hand_loop import HandLoop

    from kerasish.batches import batch_size, preds_of, split_batch
    from kerasish.device import to_device
    from kerasish.metrics import MetricSet
    from kerasish.runners import EpochRunner, StepRunner

    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    hand_parts, parts = workloads.build(workloads.WORKLOADS["w1"], cpu), workloads.build(workloads.WORKLOADS["w1"], cpu)
    full = parts.train_loader.batch_size
    batches = [batch for batch in hand_parts.train_loader if len(batch[1]) == full]
    hand = HandLoop(hand_parts)
    hand.train_metric, hand.val_metric = hand_parts.metric.clone(), hand_parts.metric.clone()
    hand_sum = torch.zeros(())

    def step_runner(stage: str, **kwargs) -> StepRunner:
        metrics = MetricSet({"acc": parts.metric}, cpu)
        return StepRunner(parts.net, parts.loss_fn, stage=stage, metrics=metrics, device=cpu, **kwargs)

    train, val = step_runner("train", optimizer=parts.optimizer), step_runner("val")
    logits = parts.net(batches[0][0]).detach()
    loss = parts.loss_fn(logits, batches[0][1]).detach()
    pieces = {
        "nothing": lambda batch: None,
        "hand: x.to(), y.to()": lambda batch: (batch[0].to(cpu), batch[1].to(cpu)),
        "kerasish: to_device": lambda batch: to_device(batch, cpu, non_blocking=False),
        "kerasish: split_batch": split_batch,
        "kerasish: preds_of": lambda batch: preds_of(logits),
        "hand: len(y)": lambda batch: len(batch[1]),
        "kerasish: batch_size": batch_size,
        "hand: loss sum, metric update": lambda batch: _hand_update(hand_sum, loss, logits, batch[1], hand.val_metric),
        "kerasish: MetricSet.update": lambda batch: val.metrics.update(loss, logits, batch[1], full),
    }
    loops = [(name, _over(batches, piece)) for name, piece in pieces.items()]
    steps = [
        ("hand: train step", _over(batches, lambda batch: hand.train_step(*batch, hand_sum)), True),
        ("kerasish: train step", _over(batches, train), True),
        ("hand: val step", _over(batches, lambda batch: hand.val_step(*batch, hand_sum)), False),
        ("kerasish: val step", _over(batches, val), False),
    ]
    for name, loop, training in steps:
        loops.append((name, functools.partial(_in_mode, loop, parts.net, hand_parts.net, training)))
    # Whole passes over the same batches, each counted per batch: the step, the loop around it, and the pass's own
    # start and end (kerasish: progress, hooks, train/eval mode, the metrics' reset and compute).
    hand.train_loader = hand.val_loader = batches
    train_pass, val_pass = EpochRunner(train), EpochRunner(val)
    loops += [
        ("hand: train pass", hand.train_pass),
        ("kerasish: train pass", functools.partial(train_pass, batches)),
        ("hand: val pass", hand.val_pass),
        ("kerasish: val pass", functools.partial(val_pass, batches)),
    ]
    return loops, len(batches)


def _hand_update(loss_sum, loss, logits, labels, metric) -> None:
    loss_sum += loss.detach() * len(labels)
    metric.update(logits.detach(), labels)


def _over(batches, piece):
    def loop() -> None:
        for batch in batches:
            piece(batch)

    return loop


def _in_mode(loop, net, hand_net, training: bool) -> None:
    import torch

    net.train(training)
    hand_net.train(training)
    with torch.set_grad_enabled(training):
        operator.call(loop)


def inside() -> None:
    """Runs every loop ROUNDS times, each through ``operator.call``; prints the names and the batch count."""
    loops, count = measured_loops()
    for _name, loop in loops:
        for _ in range(ROUNDS):
            if isinstance(loop, functools.partial) and loop.func is _in_mode:
                loop()  # switches the mode outside the count, then runs the loop through operator.call
            else:
                operator.call(loop)
    print("BATCHES", count)
    print("NAMES", "|".join(name for name, _ in loops))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    if parser.parse_args().inside:
        inside()
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        command = ["valgrind", "--tool=callgrind", "--toggle-collect=_operator_call", "--dump-after=_operator_call"]
        command += [f"--callgrind-out-file={tmp}/cg", sys.executable, __file__, "--inside"]
        env = {**worker_env(threads=1), "PYTHONHASHSEED": "0"}
        result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if result.returncode != 0:
            sys.exit(f"the run under callgrind failed:\n{result.stderr[-2000:]}")
        counts = _dump_totals(Path(tmp))
    batches = int(re.search(r"^BATCHES (\d+)", result.stdout, re.M).group(1))
    names = re.search(r"^NAMES (.*)$", result.stdout, re.M).group(1).split("|")
    _report(names, counts, batches)


def _dump_totals(folder: Path) -> list[int]:
    """The instructions of each dump, in the order callgrind wrote them (``cg.1``, ``cg.2``, ...)."""
    dumps = sorted(folder.glob("cg.*"), key=lambda path: int(path.suffix[1:]))
    return [int(re.search(r"^totals: (\d+)", path.read_text(), re.M).group(1)) for path in dumps]


def _report(names: list[str], counts: list[int], batches: int) -> None:
    if len(counts) != len(names) * ROUNDS:
        sys.exit(f"expected {len(names) * ROUNDS} dumps, got {len(counts)}: something else called operator.call")
    per_call = {
        name: statistics.median(counts[i * ROUNDS : (i + 1) * ROUNDS]) / batches for i, name in enumerate(names)
    }
    print(f"W1 instructions per call (callgrind, median of {ROUNDS} rounds of {batches} batches)")
    for name, value in per_call.items():
        print(f"  {name:<32} {value / 1e3:9.1f} k")
    for stage, what in itertools.product(("train", "val"), ("step", "pass")):
        kerasish, hand = per_call[f"kerasish: {stage} {what}"], per_call[f"hand: {stage} {what}"]
        extra = (kerasish - hand) / 1e3
        print(f"  kerasish {stage} {what} − hand, per batch: {extra:+.1f} k (× {kerasish / hand:.4f})")


if __name__ == "__main__":
    main()
