"""The README's demo runs and reaches the accuracy it promises."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.helpers import launch, rank_outputs

DEMO = Path(__file__).resolve().parents[1] / "examples" / "digits_mlp.py"
DDP_DEMO = DEMO.with_name("digits_ddp.py")


def test_digits_demo_reaches_95_percent_val_accuracy():
    spec = importlib.util.spec_from_file_location("digits_mlp", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    result = demo.main(verbose=0)
    assert result["val_acc"] >= 0.95
    assert result["predict_acc"] == result["val_acc"]


def test_distributed_demo_trains_on_two_processes_and_only_rank_0_prints(tmp_path):
    out = tmp_path / "run"
    launch([str(DDP_DEMO), "--out", str(out), "--min-acc", "0.95"], logs=tmp_path / "logs")  # exits 1 below it
    outputs = rank_outputs(tmp_path / "logs")
    assert outputs["1"] == ""
    assert "epoch 30/30" in outputs["0"] and "2 process(es) on cpu" in outputs["0"]
    assert sorted(path.name for path in out.iterdir()) == ["best.pt", "history.csv", "state.pt"]
