"""TensorBoard: the event file of a real fit read back and compared with the history; the optional dependency."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from kerasish import KerasModel
from kerasish.callbacks.tensorboard import TensorBoard
from tests.helpers import regression_batches

EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator


def mae(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (preds - labels).abs().mean()


def small_model() -> KerasModel:
    net = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    return KerasModel(net, nn.MSELoss(), metrics_dict={"mae": mae}, optimizer=optimizer, device="cpu")


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run directory -> its ``(step, value)`` pairs, in step order."""
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def as_float32(values) -> list[float]:
    """Event files hold scalars as float32."""
    return [float(np.float32(v)) for v in values]


def test_real_fit_writes_each_history_column_at_its_epoch(tmp_path):
    history = small_model().fit(
        regression_batches(n=12), regression_batches(n=8), epochs=3, callbacks=[TensorBoard(tmp_path)], verbose=0
    )
    scalars = read_scalars(tmp_path)
    tags = {
        "train_loss": "loss/train",
        "train_mae": "mae/train",
        "val_loss": "loss/val",
        "val_mae": "mae/val",
        "lr": "lr",
        "time": "time",
    }
    assert set(scalars) == set(tags.values())
    for column, tag in tags.items():
        assert [step for step, _ in scalars[tag]] == [1, 2, 3], tag
        assert [value for _, value in scalars[tag]] == as_float32(history[column]), tag


def test_each_fit_writes_a_new_event_file_and_closes_it(tmp_path):
    board = TensorBoard(tmp_path / "runs" / "a")  # created when the fit begins, parents included
    batches = regression_batches()
    small_model().fit(batches, epochs=2, callbacks=[board], verbose=0)
    assert board.writer is None
    small_model().fit(batches, epochs=1, callbacks=[board], verbose=0)
    assert board.writer is None
    files = sorted(p.name for p in (tmp_path / "runs" / "a").iterdir())
    assert len(files) == 2
    assert all(name.startswith("events.out.tfevents.") for name in files)


def test_scalars_are_flushed_when_their_epoch_ends(tmp_path):
    board = TensorBoard(tmp_path)
    model = SimpleNamespace()
    board.on_fit_begin(model, {})
    board.on_epoch_end(model, {"epoch": 1, "train_loss": 0.5, "val_acc": 0.75})
    seen = read_scalars(tmp_path)  # before on_fit_end closes the file
    board.on_fit_end(model, {})
    assert seen == {"loss/train": [(1, 0.5)], "acc/val": [(1, 0.75)]}


def test_columns_without_a_stage_keep_their_names_and_non_numbers_are_skipped(tmp_path):
    board = TensorBoard(tmp_path)
    model = SimpleNamespace()
    board.on_fit_begin(model, {})
    board.on_epoch_end(model, {"epoch": 4, "lr": 0.25, "grad_norm": 3, "note": "warm-up", "flag": True, "val_": 2.0})
    board.on_fit_end(model, {})
    assert read_scalars(tmp_path) == {"lr": [(4, 0.25)], "grad_norm": [(4, 3.0)], "val_": [(4, 2.0)]}


def test_missing_tensorboard_says_how_to_install_it(tmp_path, monkeypatch):
    # None in sys.modules makes an import fail, whether or not the module was loaded before.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    hint = (
        "needs the tensorboard package: pip install tensorboard"
        ' (or, in a clone of kerasish: pip install -e ".[tensorboard]")'
    )
    with pytest.raises(ImportError, match=re.escape(hint)):
        TensorBoard(tmp_path)


def test_importing_kerasish_does_not_need_tensorboard():
    code = (
        "import sys; sys.modules['tensorboard'] = sys.modules['torch.utils.tensorboard'] = None; "
        "import kerasish, kerasish.callbacks.tensorboard; "
        "print(sorted(m for m in sys.modules if 'tensorboard' in m and sys.modules[m] is not None))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "['kerasish.callbacks.tensorboard']"


def test_log_dir_that_is_a_file_fails_at_construction(tmp_path):
    path = tmp_path / "events"
    path.write_text("")
    with pytest.raises(ValueError, match=r"log_dir='.*events' is a file; give a directory"):
        TensorBoard(path)


def test_log_dir_under_a_file_fails_at_construction(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(
        ValueError, match=r"log_dir='.*file/run' cannot be created: '.*file' is not a writable directory"
    ):
        TensorBoard(tmp_path / "file" / "run")
