"""ModelCheckpoint: written on improvement or every N epochs, atomically, named by templates, rotated; the saved
weights record their epoch."""

from __future__ import annotations

import io
import math
import os
import re
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

import kerasish.checkpoint
from kerasish import KerasModel, ModelCheckpoint
from tests.helpers import regression_batches, tagged_linear


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


def test_a_missing_directory_is_created_with_the_first_file(tmp_path):
    path = tmp_path / "a" / "b" / "best.pt"
    fit = Fit(ModelCheckpoint(path))
    assert list(tmp_path.iterdir()) == []
    fit.epoch_end(0.5)
    assert saved_tag(path) == 1


def test_a_file_where_a_directory_should_be_raises(tmp_path):
    (tmp_path / "taken").write_text("a file")
    path = tmp_path / "taken" / "best.pt"
    message = f"path={str(path)!r}: {str(tmp_path / 'taken')!r} is a file, not a directory"
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


# --- templates, every_n_epochs, keep_last ---------------------------------------------------------------------------

TEMPLATE = "epoch{epoch:03d}-val_loss{val_loss:.4f}.pt"


def run(ckpt: ModelCheckpoint, values: list[float], folder) -> list[list[str]]:
    """One fit through ``values``; the folder's sorted listing after each epoch."""
    fit = Fit(ckpt)
    listings = []
    for value in values:
        fit.epoch_end(value)
        listings.append(sorted(os.listdir(folder)))
    return listings


def test_template_names_each_file_from_the_epochs_row(tmp_path):
    ckpt = ModelCheckpoint(tmp_path / TEMPLATE)
    run(ckpt, [0.5, 0.4, 0.45, 0.3], tmp_path)
    names = ["epoch001-val_loss0.5000.pt", "epoch002-val_loss0.4000.pt", "epoch004-val_loss0.3000.pt"]
    assert sorted(os.listdir(tmp_path)) == names
    assert [saved_tag(tmp_path / name) for name in names] == [1, 2, 4]
    assert ckpt.last_path == ckpt.best_path == tmp_path / names[-1]
    assert ckpt.written == [str(tmp_path / name) for name in names]


def test_keep_last_rotates_the_files_it_wrote(tmp_path):
    ckpt = ModelCheckpoint(tmp_path / "epoch{epoch}.pt", keep_last=2)
    listings = run(ckpt, [0.5, 0.4, 0.45, 0.3, 0.2], tmp_path)
    assert listings == [
        ["epoch1.pt"],
        ["epoch1.pt", "epoch2.pt"],
        ["epoch1.pt", "epoch2.pt"],
        ["epoch2.pt", "epoch4.pt"],
        ["epoch4.pt", "epoch5.pt"],
    ]
    assert saved_tag(tmp_path / "epoch5.pt") == 5


def test_every_n_epochs_saves_whether_or_not_it_improved(tmp_path):
    ckpt = ModelCheckpoint(tmp_path / "epoch{epoch}.pt", every_n_epochs=2)
    fit = Fit(ckpt)
    best_paths = []
    for value in [0.5, 0.4, 0.45, 0.46, 0.3, 0.2, 0.9]:
        fit.epoch_end(value)
        best_paths.append(None if ckpt.best_path is None else ckpt.best_path.name)
    assert sorted(os.listdir(tmp_path)) == ["epoch2.pt", "epoch4.pt", "epoch6.pt"]
    assert [saved_tag(tmp_path / f"epoch{e}.pt") for e in (2, 4, 6)] == [2, 4, 6]
    # Epochs 1 and 5 improved but were not saved: no file holds the best then.
    assert best_paths == [None, "epoch2.pt", "epoch2.pt", "epoch2.pt", None, "epoch6.pt", "epoch6.pt"]
    assert ckpt.last_path.name == "epoch6.pt"


def test_every_n_epochs_with_a_plain_path_keeps_the_latest(tmp_path):
    path = tmp_path / "last.pt"
    ckpt = ModelCheckpoint(path, every_n_epochs=1)
    fit = Fit(ckpt)
    fit.epoch_end(0.5)
    assert (saved_tag(path), ckpt.best_path) == (1, path)
    fit.epoch_end(0.6)  # overwrites the best epoch's file
    assert (saved_tag(path), ckpt.best_path, ckpt.last_path) == (2, None, path)
    assert ckpt.written == [str(path)]


def test_keep_last_with_every_n_epochs(tmp_path):
    ckpt = ModelCheckpoint(tmp_path / "epoch{epoch}.pt", every_n_epochs=1, keep_last=2)
    run(ckpt, [0.5, 0.1, 0.6, 0.7], tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["epoch3.pt", "epoch4.pt"]
    assert ckpt.best_path is None  # epoch 2's file was rotated away
    assert ckpt.best.epoch == 2


def test_a_rewritten_name_counts_as_the_newest(tmp_path):
    # val_loss rounds to the same name at epochs 1 and 3; rotation must not delete the file just written.
    ckpt = ModelCheckpoint(tmp_path / "loss{val_loss:.1f}.pt", every_n_epochs=1, keep_last=2)
    run(ckpt, [0.51, 0.72, 0.53], tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["loss0.5.pt", "loss0.7.pt"]
    assert saved_tag(tmp_path / "loss0.5.pt") == 3
    assert ckpt.written == [str(tmp_path / "loss0.7.pt"), str(tmp_path / "loss0.5.pt")]


def test_files_it_did_not_write_survive_rotation(tmp_path):
    others = {"notes.txt": b"mine", "epoch0.pt": b"older run", "epoch9.pt": b"another run"}
    for name, content in others.items():
        (tmp_path / name).write_bytes(content)
    ckpt = ModelCheckpoint(tmp_path / "epoch{epoch}.pt", every_n_epochs=1, keep_last=1)
    run(ckpt, [0.5, 0.4, 0.3], tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["epoch0.pt", "epoch3.pt", "epoch9.pt", "notes.txt"]
    assert {name: (tmp_path / name).read_bytes() for name in others} == others


def test_reuse_leaves_an_earlier_fits_files_alone(tmp_path):
    ckpt = ModelCheckpoint(tmp_path / "epoch{epoch}.pt", keep_last=2)
    run(ckpt, [0.5, 0.4, 0.3], tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["epoch2.pt", "epoch3.pt"]

    second = Fit(ckpt)
    assert (ckpt.written, ckpt.last_path, ckpt.best_path, ckpt.best.value) == ([], None, None, None)
    second.epoch_end(0.9)  # worse than the first fit's best, but this fit's first
    assert sorted(os.listdir(tmp_path)) == ["epoch1.pt", "epoch2.pt", "epoch3.pt"]
    assert ckpt.written == [str(tmp_path / "epoch1.pt")]


# --- state_dict -----------------------------------------------------------------------------------------------------


def name_of(path) -> str | None:
    return None if path is None else path.name


def through_disk(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trips_through_weights_only_load(tmp_path):
    ckpt = ModelCheckpoint(tmp_path / "epoch{epoch}.pt", keep_last=2)
    run(ckpt, [0.5, 0.4, 0.45], tmp_path)
    state = through_disk(ckpt.state_dict())
    assert state == {
        "best": {"value": 0.4, "epoch": 2},
        "written": [str(tmp_path / "epoch1.pt"), str(tmp_path / "epoch2.pt")],
        "last_path": str(tmp_path / "epoch2.pt"),
        "best_path": str(tmp_path / "epoch2.pt"),
    }


@pytest.mark.parametrize("kwargs", [{"keep_last": 2}, {"every_n_epochs": 2, "keep_last": 2}, {"every_n_epochs": 1}])
def test_a_resumed_instance_writes_and_rotates_as_the_uninterrupted_one(tmp_path, kwargs):
    values = [0.5, 0.4, 0.45, 0.3, 0.35, 0.2, 0.1]
    whole_dir, resumed_dir = tmp_path / "whole", tmp_path / "resumed"
    whole_dir.mkdir()
    resumed_dir.mkdir()
    whole = ModelCheckpoint(whole_dir / "epoch{epoch}.pt", **kwargs)
    expected = run(whole, values, whole_dir)

    first = ModelCheckpoint(resumed_dir / "epoch{epoch}.pt", **kwargs)
    before = run(first, values[:4], resumed_dir)
    resumed = ModelCheckpoint(resumed_dir / "epoch{epoch}.pt", **kwargs)
    fit = Fit(resumed)
    resumed.load_state_dict(through_disk(first.state_dict()))
    fit.epoch = 4
    after = []
    for value in values[4:]:
        fit.epoch_end(value)
        after.append(sorted(os.listdir(resumed_dir)))

    assert before + after == expected
    assert [os.path.basename(p) for p in resumed.written] == [os.path.basename(p) for p in whole.written]
    assert [name_of(resumed.best_path), name_of(resumed.last_path)] == [
        name_of(whole.best_path),
        name_of(whole.last_path),
    ]


def test_load_state_dict_names_the_missing_keys(tmp_path):
    with pytest.raises(ValueError, match=r"ModelCheckpoint state lacks \['best_path', 'last_path', 'written'\]"):
        ModelCheckpoint(tmp_path / "best.pt").load_state_dict({"best": {"value": None, "epoch": None}})


# --- argument checks ------------------------------------------------------------------------------------------------


def test_relative_min_delta_with_negative_values(tmp_path):
    path = tmp_path / "best.pt"
    fit = Fit(ModelCheckpoint(path, min_delta=0.1, delta_mode="rel"))  # the margin is 0.1 * |best| = 0.2
    fit.epoch_end(-2.0)
    fit.epoch_end(-2.1)
    assert saved_tag(path) == 1
    fit.epoch_end(-2.3)
    assert saved_tag(path) == 3


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("epoch{epoch.pt", r"is not a valid template \(.*\); write literal braces as \{\{ and \}\}"),
        ("epoch{}.pt", r"has the field \{\}; fields must be history column names"),
        ("loss{val_loss.real}.pt", r"has the field \{val_loss.real\}; fields must be history column names"),
        ("epoch{epoch:.2q}.pt", r"cannot be filled in with an epoch's row \(ValueError: Unknown format code 'q'"),
    ],
)
def test_bad_templates_raise(tmp_path, template, match):
    with pytest.raises(ValueError, match=match):
        ModelCheckpoint(tmp_path / template)


def test_directories_may_be_templates_too_and_are_created_as_files_are_written(tmp_path):
    fit = Fit(ModelCheckpoint(tmp_path / "ckpt" / "{epoch:03d}" / "w{{1}}.pt", keep_last=1))
    assert list(tmp_path.iterdir()) == []
    fit.epoch_end(0.5)
    fit.epoch_end(0.4)
    assert saved_tag(tmp_path / "ckpt" / "002" / "w{1}.pt") == 2
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["ckpt/002/w{1}.pt"]  # keep_last deleted epoch 1's file; its directory stays


def test_a_template_under_a_file_raises(tmp_path):
    (tmp_path / "taken").write_text("a file")
    path = tmp_path / "taken" / "{epoch:03d}" / "w.pt"
    message = f"the directory {str(path.parent)!r} cannot be created: {str(tmp_path / 'taken')!r} is a file"
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelCheckpoint(path)


def test_literal_braces_are_written_once(tmp_path):
    fit = Fit(ModelCheckpoint(tmp_path / "run{{1}}-epoch{epoch}.pt"))
    fit.epoch_end(0.5)
    assert os.listdir(tmp_path) == ["run{1}-epoch1.pt"]


def test_keep_last_with_a_plain_path_raises(tmp_path):
    message = "keep_last=3 needs a path template whose name changes per epoch, such as 'epoch{epoch:03d}.pt'"
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelCheckpoint(tmp_path / "best.pt", keep_last=3)


@pytest.mark.parametrize(("name", "value"), [("every_n_epochs", 0), ("every_n_epochs", 1.5), ("keep_last", True)])
def test_bad_counts_raise(tmp_path, name, value):
    with pytest.raises(ValueError, match=f"^{name}={value!r} is not valid; use an int >= 1, or None"):
        ModelCheckpoint(tmp_path / "epoch{epoch}.pt", **{name: value})


def fit_begin_with_columns(ckpt: ModelCheckpoint) -> None:
    columns = ["epoch", "train_loss", "val_loss", "lr", "time"]
    ckpt.on_fit_begin(SimpleNamespace(history=pd.DataFrame(columns=columns)), {})


def test_a_field_that_is_no_history_column_fails_when_the_fit_begins(tmp_path):
    ckpt = ModelCheckpoint(tmp_path / "epoch{epoch}-acc{val_acc:.3f}.pt")
    message = (
        f"ModelCheckpoint: path={str(tmp_path / 'epoch{epoch}-acc{val_acc:.3f}.pt')!r} has the field {{val_acc}}, "
        "which is not a history column of this fit; available: epoch, train_loss, val_loss, lr, time"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        fit_begin_with_columns(ckpt)


def test_a_monitor_typo_fails_when_the_fit_begins(tmp_path):
    ckpt = ModelCheckpoint(tmp_path / "best.pt", monitor="val_acc", mode="max")
    with pytest.raises(ValueError, match=r"^ModelCheckpoint: monitor='val_acc' is not a history column of this fit"):
        fit_begin_with_columns(ckpt)


def test_options_after_min_delta_are_keyword_only(tmp_path):
    with pytest.raises(TypeError, match="positional"):
        ModelCheckpoint(tmp_path / "best.pt", "val_loss", "min", 0.0, "abs")


# --- in a real fit --------------------------------------------------------------------------------------------------


def test_a_real_fit_names_and_rotates_files_from_its_history(tmp_path):
    data = regression_batches()
    net = nn.Linear(3, 1)
    model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.01), device="cpu")
    ckpt = ModelCheckpoint(tmp_path / "e{epoch}-{val_loss:.5f}.pt", every_n_epochs=1, keep_last=2)
    history = model.fit(data, data, epochs=3, patience=None, callbacks=[ckpt], verbose=0)
    expected = [f"e{row.epoch}-{row.val_loss:.5f}.pt" for row in history.iloc[1:].itertuples()]
    assert sorted(os.listdir(tmp_path)) == sorted(expected)
    assert ckpt.last_path.name == expected[-1]


def test_a_bad_field_fails_before_the_first_step_of_a_real_fit(tmp_path):
    data = regression_batches()
    net = nn.Linear(3, 1)
    before = net.weight.detach().clone()
    model = KerasModel(net, nn.MSELoss(), device="cpu")
    with pytest.raises(ValueError, match=r"has the field \{val_acc\}, which is not a history column"):
        model.fit(data, data, epochs=2, callbacks=[ModelCheckpoint(tmp_path / "{val_acc}.pt")], verbose=0)
    assert torch.equal(net.weight, before)
    assert os.listdir(tmp_path) == []
