"""From the workers' records to the table ``run.py`` prints.

Definitions (also in README.md):

- A run's **s/epoch** is the median, over its epochs 2..N, of the wall time from one epoch's end to the next: train
  pass, val pass, and the epoch-end bookkeeping (best-weight copy, early-stopping check). Epoch 1 is warm-up.
- A variant's **s/epoch** is the median of its runs' s/epoch; **spread** is their min–max.
- **× hand** is the median over repeats of the paired ratio (this repeat's kerasish run / this repeat's hand run).
  Runs of one repeat are adjacent in time, so pairing cancels slow drifts in the machine's load.
- **µs/step** is the median paired difference divided by the steps of an epoch (train steps + val steps).
- **pass × hand** is the same paired ratio on the train+val passes alone (kerasish's history ``time`` column).
- **floor × hand** is the paired ratio of each run's *fastest* epoch (2..N). Other tenants of a shared machine only
  ever add time, in bursts lasting seconds, so the fastest epoch is the least disturbed estimate of what the code
  itself costs; it is shown next to the median-based ratio, which the verdict uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median

HAND = "hand"


@dataclass
class Row:
    """One line of a workload's table."""

    variant: str
    seconds: float
    low: float
    high: float
    fit_seconds: float
    ratio: float | None = None
    ratio_low: float | None = None
    ratio_high: float | None = None
    extra_us: float | None = None
    pass_ratio: float | None = None
    floor_ratio: float | None = None


def epoch_seconds(record: dict) -> float:
    """A run's s/epoch: the median boundary-to-boundary epoch time, epoch 1 dropped."""
    return median(record["epoch_seconds"][1:])


def floor_seconds(record: dict) -> float:
    """A run's fastest epoch, epoch 1 dropped."""
    return min(record["epoch_seconds"][1:])


def pass_seconds(record: dict) -> float:
    """A run's median train+val pass time, epoch 1 dropped."""
    return median(record["history"]["time"][1:])


def by_repeat(records: list[dict], variant: str) -> dict[int, dict]:
    return {record["repeat"]: record for record in records if record["variant"] == variant}


def summarize(records: list[dict], variants: list[str]) -> list[Row]:
    """One :class:`Row` per variant, in the given order; ratios against the hand-written runs of the same repeat."""
    hand = by_repeat(records, HAND)
    rows = []
    for variant in variants:
        runs = by_repeat(records, variant)
        seconds = [epoch_seconds(run) for run in runs.values()]
        row = Row(
            variant=variant,
            seconds=median(seconds),
            low=min(seconds),
            high=max(seconds),
            fit_seconds=median(run["fit_seconds"] for run in runs.values()),
        )
        paired = sorted(set(runs) & set(hand))
        if variant != HAND and paired:
            ratios = [epoch_seconds(runs[r]) / epoch_seconds(hand[r]) for r in paired]
            steps = [runs[r]["train_steps"] + runs[r]["val_steps"] for r in paired]
            extra = [(epoch_seconds(runs[r]) - epoch_seconds(hand[r])) / n for r, n in zip(paired, steps, strict=True)]
            row.ratio, row.ratio_low, row.ratio_high = median(ratios), min(ratios), max(ratios)
            row.extra_us = median(extra) * 1e6
            row.pass_ratio = median(pass_seconds(runs[r]) / pass_seconds(hand[r]) for r in paired)
            row.floor_ratio = median(floor_seconds(runs[r]) / floor_seconds(hand[r]) for r in paired)
        rows.append(row)
    return rows


def same_arithmetic(records: list[dict], *, exact: bool) -> list[str]:
    """Checks that each kerasish run computed what the hand-written run of its repeat computed.

    Same val accuracy every epoch, same losses (kerasish sums them in float64, the hand loop in float32) and the
    same restored weights. On CPU with a fixed thread count the arithmetic is the same to the bit, so anything but a
    rounding difference means the two variants did not do the same work. GPU kernels may reduce in a different
    order from run to run, so with ``exact=False`` mismatches are reported as notes only by the caller.

    Returns:
        One message per mismatch; empty when everything agrees.
    """
    tolerance = 1e-5 if exact else 1e-2
    hand = by_repeat(records, HAND)
    problems = []
    for record in records:
        reference = hand.get(record["repeat"])
        if record["variant"] == HAND or reference is None:
            continue
        for key in ("val_acc", "train_loss", "val_loss"):
            if not _close(record["history"][key], reference["history"][key], tolerance):
                problems.append(f"repeat {record['repeat']} {record['variant']}: {key} differs from the hand loop")
        if not _close(record["weights"], reference["weights"], tolerance):
            problems.append(f"repeat {record['repeat']} {record['variant']}: final weights differ from the hand loop")
    return problems


def _close(values: list[float], reference: list[float], tolerance: float) -> bool:
    return len(values) == len(reference) and all(
        math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance) for a, b in zip(values, reference, strict=True)
    )


HEADER = (
    f"{'variant':<20} {'s/epoch':>8} {'spread (min–max)':>17} {'× hand':>7} {'× hand min–max':>15} "
    f"{'µs/step':>8} {'pass × hand':>11} {'floor × hand':>12} {'fit s':>7}  verdict"
)


def format_row(row: Row, label: str, target: float) -> str:
    """One table line; the verdict compares the ratio with ``target``."""
    spread = f"{row.low:.4f}–{row.high:.4f}"
    if row.ratio is None:
        blank = f"{'':>15} {'':>8} {'':>11} {'':>12}"
        return f"{label:<20} {row.seconds:8.4f} {spread:>17} {'1':>7} {blank} {row.fit_seconds:7.2f}"
    ratio_spread = f"{row.ratio_low:.3f}–{row.ratio_high:.3f}"
    verdict = f"{'PASS' if row.ratio <= target else 'FAIL'} (≤ {target:.2f})"
    return (
        f"{label:<20} {row.seconds:8.4f} {spread:>17} {row.ratio:7.3f} {ratio_spread:>15} "
        f"{row.extra_us:+8.1f} {row.pass_ratio:11.3f} {row.floor_ratio:12.3f} {row.fit_seconds:7.2f}  {verdict}"
    )


def passed(rows: list[Row], target: float) -> bool:
    """Whether every kerasish variant is within ``target`` of the hand-written loop."""
    return all(row.ratio <= target for row in rows if row.ratio is not None)
