"""A run killed with SIGKILL in the middle of a pass, resumed by a fresh process: bit for bit the uninterrupted run,
without reading a trained-on sample again; in one process and under a 2-process torchrun.

The script is ``tests/scripts/long_run.py``; every launch has a timeout that kills it and its ranks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import kill_tree, launch

SCRIPT = str(Path(__file__).parent / "scripts" / "long_run.py")
ROOT = Path(__file__).resolve().parent.parent
KILL_AT = 8  # epoch 2's 4th batch: after the state written at optimizer step 8, before batch 8 trains


def run(out: Path, label: str, *extra: str) -> int:
    """One process of the script; its return code (-9 when it killed itself)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, SCRIPT, str(out), label, *extra], env=env, start_new_session=True)
    try:
        return process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        pytest.fail(f"{label} did not finish in 120 s")


def reads(out: Path, label: str, rank: int = 0) -> list[int]:
    path = out / f"{label}-reads-rank{rank}.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def assert_same_run(resumed: dict, whole: dict) -> None:
    assert resumed["history"] == whole["history"]
    for name, tensor in whole["net"].items():
        assert torch.equal(resumed["net"][name], tensor), name


def assert_no_sample_read_twice(out_whole: Path, out_cut: Path, rank: int) -> None:
    whole, cut, resumed = (
        reads(out_whole, "whole", rank),
        reads(out_cut, "cut", rank),
        reads(out_cut, "resumed", rank),
    )
    trained_before = len(whole) - len(resumed)
    assert resumed == whole[trained_before:]  # the resumed run reads only what the saved state had not trained on
    assert cut[:trained_before] == whole[:trained_before]
    assert 0 <= len(cut) - trained_before <= 4  # the killed run read at most the batch it died before


def test_a_run_killed_mid_pass_resumes_in_a_fresh_process_bit_for_bit(tmp_path):
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    whole_dir.mkdir(), cut_dir.mkdir()
    assert run(whole_dir, "whole") == 0
    assert run(cut_dir, "cut", "--kill-at", str(KILL_AT)) == -signal.SIGKILL
    saved = torch.load(cut_dir / "state.pt", weights_only=True)
    assert (saved["epoch"], saved["in_epoch"]["epoch"], saved["in_epoch"]["batches"]) == (1, 2, 3)
    assert run(cut_dir, "resumed", "--resume") == 0
    whole = torch.load(whole_dir / "whole-rank0.pt", weights_only=True)
    assert_same_run(torch.load(cut_dir / "resumed-rank0.pt", weights_only=True), whole)
    assert_no_sample_read_twice(whole_dir, cut_dir, rank=0)


def test_a_two_process_run_killed_mid_pass_resumes_bit_for_bit(tmp_path):
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    whole_dir.mkdir(), cut_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launch([SCRIPT, str(whole_dir), "whole"], logs=tmp_path / "logs-whole", env=env, timeout=120)
    launch([SCRIPT, str(cut_dir), "cut", "--kill-at", str(KILL_AT)], logs=tmp_path / "logs-cut", env=env,
           timeout=120, expect_failure=True)  # fmt: skip
    launch([SCRIPT, str(cut_dir), "resumed", "--resume"], logs=tmp_path / "logs-resumed", env=env, timeout=120)
    for rank in (0, 1):
        whole = torch.load(whole_dir / f"whole-rank{rank}.pt", weights_only=True)
        assert_same_run(torch.load(cut_dir / f"resumed-rank{rank}.pt", weights_only=True), whole)
        assert_no_sample_read_twice(whole_dir, cut_dir, rank)
    both = [torch.load(whole_dir / f"whole-rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert_same_run(both[1], both[0])  # every rank ends with the same history and weights
