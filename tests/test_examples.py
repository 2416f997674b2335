"""The README's demo runs and reaches the accuracy it promises."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "examples" / "digits_mlp.py"


def test_digits_demo_reaches_95_percent_val_accuracy():
    spec = importlib.util.spec_from_file_location("digits_mlp", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    result = demo.main(verbose=0)
    assert result["val_acc"] >= 0.95
    assert result["predict_acc"] == result["val_acc"]
