"""ModelCheckpoint: written only on improvement, atomically, with the epoch recorded in the saved weights."""

from __future__ import annotations

import math
import os
import re
from types import SimpleNamespace

import pytest
import torch

import kerasish.checkpoint
from kerasish import ModelCheckpoint
from tests.helpers import tagged_linear


def saved_tag(path) -> float:
    return torch.load(path, weights_only=True)["tag"].item()


def file_id(path) -> tuple[int, int]:
    """Changes whenever the file is rewritten: an atomic write renames a new inode into place."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_mtime_ns


class Fit:
    """Steps a checkpoint through scripted epochs, tagging the net's weights with the epoch number."""

    def __init__(self, ckpt: ModelCheckpoint) -> None:
        self.ckpt = ckpt
        self.model = SimpleNamespace(stop_training=False, net=tagged_linear())
        self.epoch = 0
        ckpt.on_fit_begin(self.model, {})

    def epoch_end(self, value: float, column: str = "val_loss") -> None:
        self.epoch += 1
        self.model.net.tag.fill_(self.epoch)
        self.ckpt.on_epoch_end(self.model, {"epoch": self.epoch, column: value})


def test_writes_only_on_improvement(tmp_path):
    path = tmp_path / "best.pt"
    fit = Fit(ModelCheckpoint(path))
    assert not path.exists()

    fit.epoch_end(0.5)
    assert saved_tag(path) == 1
    fit.epoch_end(0.4)
    assert saved_tag(path) == 2
    written = file_id(path)

    fit.epoch_end(0.45)
    fit.epoch_end(0.4)  # a tie
    fit.epoch_end(math.nan)
    assert file_id(path) == written
    assert saved_tag(path) == 2

    fit.epoch_end(0.3)
    assert file_id(path) != written
    assert saved_tag(path) == 6


def test_saves_the_whole_state_dict(tmp_path):
    path = tmp_path / "best.pt"
    fit = Fit(ModelCheckpoint(path))
    fit.epoch_end(0.5)
    saved = torch.load(path, weights_only=True)
    state = fit.model.net.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in state)


def test_max_mode_and_min_delta(tmp_path):
    path = tmp_path / "best.pt"
    fit = Fit(ModelCheckpoint(path, monitor="val_acc", mode="max", min_delta=0.05))
    for value in [0.80, 0.84, 0.90, 0.93, 0.70]:
        fit.epoch_end(value, column="val_acc")
    assert saved_tag(path) == 3


def test_never_writes_without_improvement(tmp_path):
    path = tmp_path / "best.pt"
    fit = Fit(ModelCheckpoint(path))
    for value in [math.nan, math.nan, math.nan]:
        fit.epoch_end(value)
    assert os.listdir(tmp_path) == []


def test_reuse_across_fits_resets_the_best(tmp_path):
    path = tmp_path / "best.pt"
    ckpt = ModelCheckpoint(path)
    first = Fit(ckpt)
    first.epoch_end(0.1)
    assert saved_tag(path) == 1

    second = Fit(ckpt)
    assert ckpt.best.value is None
    second.epoch_end(0.2)
    second.epoch_end(0.15)
    # Worse than the first fit's best, but the best of this fit.
    assert saved_tag(path) == 2


def test_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "best.pt"
    fit = Fit(ModelCheckpoint(path))
    for value in [0.5, 0.4, 0.3, 0.35, 0.2]:
        fit.epoch_end(value)
    assert os.listdir(tmp_path) == ["best.pt"]
    assert saved_tag(path) == 5


@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt("Ctrl-C")])
def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    path = tmp_path / "best.pt"
    fit = Fit(ModelCheckpoint(path))
    fit.epoch_end(0.5)
    before = path.read_bytes()

    def half_written_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise error

    monkeypatch.setattr(kerasish.checkpoint.torch, "save", half_written_save)
    with pytest.raises(type(error), match=str(error)):
        fit.epoch_end(0.4)

    assert os.listdir(tmp_path) == ["best.pt"]
    assert path.read_bytes() == before
    assert saved_tag(path) == 1


def test_missing_directory_raises(tmp_path):
    path = tmp_path / "nowhere" / "best.pt"
    message = f"path={str(path)!r}: the directory {str(path.parent)!r} does not exist"
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelCheckpoint(path)


def test_directory_as_path_raises(tmp_path):
    message = f"path={str(tmp_path)!r} is a directory; give a file path such as {str(tmp_path / 'best.pt')!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelCheckpoint(tmp_path)
    assert os.listdir(tmp_path) == []


def test_accepts_a_string_path(tmp_path):
    ckpt = ModelCheckpoint(str(tmp_path / "best.pt"))
    assert ckpt.path == tmp_path / "best.pt"
