"""fit(state_path=..., resume=True): a stopped run goes on exactly where it stopped, or fails before any step."""

from __future__ import annotations

import contextlib
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from kerasish import Callback, KerasModel, ModelCheckpoint, StepRunner, TerminateOnNaN
from kerasish.resume import STATE_KEYS
from tests.helpers import regression_batches

# The digits run below: val_loss improves by more than min_delta=0.01 up to epoch 4, then not, so with patience=3 it
# stops at epoch 7 and restores epoch 4. A cut after epoch 5 falls between the best epoch and the stop.
CUT, STOP, BEST, EPOCHS = 5, 7, 4, 12
STEPS_PER_EPOCH = 22  # 1400 samples in batches of 64


class Tripwire(Callback):
    """Counts training steps; armed with ``(epoch, batch)``, raises KeyboardInterrupt after that step (Ctrl-C)."""

    def __init__(self, at: tuple[int, int] | None = None) -> None:
        self.at = at
        self.steps = 0

    def on_train_batch_end(self, model, logs):
        self.steps += 1
        if (logs["epoch"], logs["batch"]) == self.at:
            raise KeyboardInterrupt


def digits_run(
    digits, run_dir: Path, epochs: int, *, resume: bool = False, at=None, verbose: int = 0
) -> tuple[KerasModel, Tripwire]:
    """Builds the run from scratch as a relaunched script would (seeded), then fits it in ``run_dir``.

    Shuffled by the loader's own generator, dropout drawing from torch's global generator, Adam, StepLR, early
    stopping with best-weight restore, the best checkpoint and a rotating per-epoch checkpoint.
    """
    torch.manual_seed(1)
    train, val = digits
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(net.parameters(), 0.03)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    metrics = {"acc": MulticlassAccuracy(num_classes=10, average="micro")}
    model = KerasModel(net, nn.CrossEntropyLoss(), metrics, optimizer, scheduler, device="cpu")
    train_dl = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    tripwire = Tripwire(at)
    every_epoch = ModelCheckpoint(run_dir / "epoch{epoch:02d}.pt", every_n_epochs=1, keep_last=2)
    # Ctrl-C reaches the caller once fit has restored the best weights, as it would end a script.
    interrupted = pytest.raises(KeyboardInterrupt) if at is not None else contextlib.nullcontext()
    with interrupted:
        _fit_digits(model, train_dl, DataLoader(val, batch_size=128), epochs, every_epoch, tripwire, run_dir, resume,
                    verbose)  # fmt: skip
    return model, tripwire


def _fit_digits(model, train_dl, val_dl, epochs, every_epoch, tripwire, run_dir, resume, verbose) -> None:
    model.fit(
        train_dl,
        val_dl,
        epochs=epochs,
        patience=3,
        min_delta=0.01,
        ckpt_path=run_dir / "best.pt",
        callbacks=[every_epoch, tripwire],
        state_path=run_dir / "state.pt",
        resume=resume,
        verbose=verbose,
    )


def without_time(history: pd.DataFrame) -> pd.DataFrame:
    return history.drop(columns="time")


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    """The uninterrupted run: its model and its directory (state file, checkpoints)."""
    run_dir = tmp_path_factory.mktemp("reference")
    model, _ = digits_run(digits, run_dir, EPOCHS)
    return model, run_dir


def test_the_reference_run_stops_after_the_cut_and_restores_an_epoch_before_it(reference):
    model, run_dir = reference
    assert model.history["epoch"].tolist() == list(range(1, STOP + 1))
    assert model.history["val_loss"].idxmin() + 1 == STOP  # the least val_loss, but not by min_delta
    state = load(run_dir / "state.pt")
    early_stopping = state["callbacks"][2]
    assert early_stopping["class"] == "EarlyStopping"
    best = {"value": model.history["val_loss"][BEST - 1], "epoch": BEST}
    assert early_stopping["state"] == {"best": best, "wait": 3, "stopped_epoch": STOP}
    assert_same_tensors(model.net.state_dict(), torch.load(run_dir / "best.pt", weights_only=True))


def test_a_run_cut_after_five_epochs_and_resumed_ends_exactly_as_the_uninterrupted_one(reference, digits, tmp_path):
    ref_model, ref_dir = reference
    cut_model, _ = digits_run(digits, tmp_path, CUT)
    assert load(tmp_path / "state.pt")["finished"] == "epochs"
    resumed, tripwire = digits_run(digits, tmp_path, EPOCHS, resume=True)

    assert tripwire.steps == (STOP - CUT) * STEPS_PER_EPOCH
    pd.testing.assert_frame_equal(without_time(resumed.history), without_time(ref_model.history), check_exact=True)
    assert resumed.history["time"][:CUT].tolist() == cut_model.history["time"].tolist()  # the saved rows, as saved
    assert_same_tensors(resumed.net.state_dict(), ref_model.net.state_dict())  # epoch 4's, restored
    ref_state, state = load(ref_dir / "state.pt"), load(tmp_path / "state.pt")
    assert_same_tensors(state["net"], ref_state["net"])  # the last epoch's
    assert float(state["optimizer"]["state"][0]["step"]) == float(ref_state["optimizer"]["state"][0]["step"]) == 7 * 22
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg_sq"], ref_state["optimizer"]["state"][0]["exp_avg_sq"])
    assert state["lr_scheduler"] == ref_state["lr_scheduler"]
    assert torch.equal(state["loader_generators"][0], ref_state["loader_generators"][0])
    assert torch.equal(state["rng"]["torch"], ref_state["rng"]["torch"])
    # keep_last=2 went on rotating across the cut: the files of epochs 4 and 5 were deleted after resuming.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "epoch06.pt", "epoch07.pt", "state.pt"]
    assert sorted(p.name for p in ref_dir.iterdir()) == ["best.pt", "epoch06.pt", "epoch07.pt", "state.pt"]
    assert_same_tensors(load(tmp_path / "epoch07.pt"), load(ref_dir / "epoch07.pt"))


def test_ctrl_c_mid_epoch_leaves_the_last_finished_epoch_and_resuming_ends_as_the_uninterrupted_run(
    reference, digits, tmp_path
):
    ref_model, _ = reference
    interrupted, tripwire = digits_run(digits, tmp_path, EPOCHS, at=(CUT + 1, 10))
    assert tripwire.steps == CUT * STEPS_PER_EPOCH + 11
    assert len(interrupted.history) == CUT
    state = load(tmp_path / "state.pt")
    assert (state["epoch"], state["finished"], len(state["history"])) == (CUT, None, CUT)

    resumed, _ = digits_run(digits, tmp_path, EPOCHS, resume=True)
    pd.testing.assert_frame_equal(without_time(resumed.history), without_time(ref_model.history), check_exact=True)
    assert_same_tensors(resumed.net.state_dict(), ref_model.net.state_dict())


def test_resuming_a_run_that_early_stopping_ended_trains_nothing_and_restores_the_best_weights(
    reference, digits, tmp_path, capsys
):
    ref_model, ref_dir = reference
    shutil.copy(ref_dir / "state.pt", tmp_path / "state.pt")
    saved_bytes = (tmp_path / "state.pt").read_bytes()
    model, tripwire = digits_run(digits, tmp_path, EPOCHS, resume=True, verbose=2)
    assert tripwire.steps == 0
    pd.testing.assert_frame_equal(model.history, ref_model.history, check_exact=True)  # time included: the saved rows
    assert_same_tensors(model.net.state_dict(), ref_model.net.state_dict())
    assert (tmp_path / "state.pt").read_bytes() == saved_bytes
    assert capsys.readouterr().out.splitlines() == [
        f"resuming from epoch {STOP} of {tmp_path / 'state.pt'}: the run had been stopped (model.stop_training, "
        "e.g. early stopping); nothing to train",
        f"restored the weights of epoch {BEST} (val_loss={ref_model.history['val_loss'][BEST - 1]:.4f})",
    ]


def test_the_state_file_reads_back_with_weights_only_and_holds_the_whole_run(reference, tmp_path):
    _, ref_dir = reference
    state = torch.load(ref_dir / "state.pt", weights_only=True)
    assert tuple(state) == (*STATE_KEYS, "world_size")  # "ranks" too, data-parallel only
    assert state["world_size"] == 1
    assert (state["version"], state["epoch"], state["epochs"], state["finished"]) == (1, STOP, EPOCHS, "stopped")
    assert state["columns"] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time"]
    assert [row["epoch"] for row in state["history"]] == list(range(1, STOP + 1))
    assert [row["lr"] for row in state["history"]] == [0.03] * 3 + [0.015] * 3 + [0.0075]
    classes = [entry["class"] for entry in state["callbacks"]]
    assert classes == ["BestWeights", "ModelCheckpoint", "EarlyStopping", "ModelCheckpoint", "Tripwire"]
    assert state["callbacks"][0]["state"]["best"]["epoch"] == BEST
    assert state["lr_scheduler"]["last_epoch"] == STOP and state["grad_scaler"] is None
    assert state["net"]["0.weight"].shape == (32, 64)
    assert set(state["rng"]) == {"torch", "cuda", "mps", "numpy", "python"}
    assert state["rng"]["numpy"]["keys"].shape == (624,)
    assert len(state["rng"]["python"]["internal"]) == 625
    assert len(state["loader_generators"]) == 1


# --- small runs: regression batches, a linear net --------------------------------------------------------------------


def linear_model(seed: int = 0, **kwargs) -> KerasModel:
    torch.manual_seed(seed)
    net = nn.Linear(3, 1)
    kwargs.setdefault("optimizer", torch.optim.SGD(net.parameters(), lr=0.05))
    return KerasModel(net, nn.MSELoss(), device="cpu", **kwargs)


@pytest.fixture
def batches():
    return regression_batches(n=12, batch_size=4)


def test_epochs_is_the_total_so_raising_it_continues_a_run_whose_epochs_ran_out(batches, tmp_path, capsys):
    path = tmp_path / "state.pt"
    whole = linear_model().fit(batches, batches, epochs=5, verbose=0)
    linear_model().fit(batches, batches, epochs=3, state_path=path, resume=True, verbose=0)
    assert (load(path)["epoch"], load(path)["finished"]) == (3, "epochs")
    assert capsys.readouterr().out == ""  # no file yet: a fresh run, and verbose=0 says nothing

    same = linear_model(seed=1)
    same.fit(batches, batches, epochs=3, state_path=path, resume=True, verbose=2)
    assert capsys.readouterr().out.startswith(
        f"resuming from epoch 3 of {path}: epochs=3 are done; nothing to train (pass a larger epochs to go on)\n"
    )
    assert same.history["epoch"].tolist() == [1, 2, 3]

    more = linear_model(seed=1)
    history = more.fit(batches, batches, epochs=5, state_path=path, resume=True, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"resuming from epoch 3 of {path}"
    assert lines[1].startswith("epoch 4/5  train_loss=")
    pd.testing.assert_frame_equal(without_time(history), without_time(whole), check_exact=True)
    assert (load(path)["epoch"], load(path)["finished"]) == (5, "epochs")


def test_resume_without_a_state_file_starts_a_fresh_run_and_writes_one(batches, tmp_path):
    plain = linear_model().fit(batches, epochs=3, verbose=0)
    history = linear_model().fit(batches, epochs=3, state_path=tmp_path / "state.pt", resume=True, verbose=0)
    pd.testing.assert_frame_equal(without_time(history), without_time(plain), check_exact=True)
    assert load(tmp_path / "state.pt")["epoch"] == 3


def test_nothing_is_written_without_state_path(batches, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    linear_model().fit(batches, batches, epochs=2, verbose=0)
    assert list(tmp_path.iterdir()) == []


class NoisyBatches:
    """Batches re-ordered with Python's ``random`` and jittered with NumPy's global generator, every epoch."""

    def __init__(self, batches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        order = list(range(len(self.batches)))
        random.shuffle(order)
        for index in order:
            x, y = self.batches[index]
            yield x + torch.from_numpy(np.random.normal(0.0, 0.1, size=tuple(x.shape)).astype(np.float32)), y


def test_numpy_and_python_random_go_on_from_where_the_run_stopped(batches, tmp_path):
    def run(epochs: int, seed: int, **kwargs) -> KerasModel:
        random.seed(seed)
        np.random.seed(seed)
        model = linear_model()
        model.fit(NoisyBatches(batches), epochs=epochs, patience=None, verbose=0, **kwargs)
        return model

    whole = run(6, seed=0)
    run(3, seed=0, state_path=tmp_path / "state.pt")
    resumed = run(6, seed=1, state_path=tmp_path / "state.pt", resume=True)
    pd.testing.assert_frame_equal(without_time(resumed.history), without_time(whole.history), check_exact=True)
    assert_same_tensors(resumed.net.state_dict(), whole.net.state_dict())


class ScaledStep(StepRunner):
    """A CPU gradient scaler whose scale doubles every 3 optimizer steps, standing in for fp16's on CUDA."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.stage == "train":
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)


class ScaledModel(KerasModel):
    StepRunner = ScaledStep


def test_the_gradient_scaler_goes_on_from_its_saved_scale(batches, tmp_path):
    def run(epochs: int, path: Path, resume: bool = False) -> KerasModel:
        torch.manual_seed(0)
        net = nn.Linear(3, 1)
        model = ScaledModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.05), device="cpu")
        model.fit(batches, epochs=epochs, state_path=path, resume=resume, verbose=0)
        return model

    whole = run(4, tmp_path / "whole.pt")
    run(2, tmp_path / "cut.pt")
    resumed = run(4, tmp_path / "cut.pt", resume=True)
    # 3 steps an epoch: the scale doubles once per epoch, from 2**10.
    assert load(tmp_path / "whole.pt")["grad_scaler"]["scale"] == load(tmp_path / "cut.pt")["grad_scaler"]["scale"]
    assert load(tmp_path / "cut.pt")["grad_scaler"]["scale"] == 2.0**14
    assert_same_tensors(resumed.net.state_dict(), whole.net.state_dict())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_fp16_run_on_cuda_resumes_exactly(batches, tmp_path):
    def run(epochs: int, path: Path, resume: bool = False) -> KerasModel:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.1), nn.Linear(16, 1))
        model = KerasModel(
            net, nn.MSELoss(), optimizer=torch.optim.Adam(net.parameters()), device="cuda", precision="fp16"
        )
        model.fit(batches, epochs=epochs, patience=None, state_path=path, resume=resume, verbose=0)
        return model

    whole = run(4, tmp_path / "whole.pt")
    run(2, tmp_path / "cut.pt")
    resumed = run(4, tmp_path / "cut.pt", resume=True)
    assert load(tmp_path / "cut.pt")["grad_scaler"] == load(tmp_path / "whole.pt")["grad_scaler"]
    pd.testing.assert_frame_equal(without_time(resumed.history), without_time(whole.history), check_exact=True)
    assert_same_tensors(resumed.net.state_dict(), whole.net.state_dict())


# --- errors: before any step, with the user's file left as it was ---------------------------------------------------


@pytest.fixture
def saved(batches, tmp_path) -> Path:
    """A state file from a one-epoch run of :func:`linear_model` with val data."""
    path = tmp_path / "state.pt"
    linear_model().fit(batches, batches, epochs=1, callbacks=[Tripwire()], state_path=path, verbose=0)
    return path


def fails_untouched(model: KerasModel, path: Path | None, error: type, match: str, **fit_kwargs) -> None:
    """``fit`` raises ``error`` matching ``match`` with no step taken and the file at ``path`` unchanged."""
    weights = {k: v.clone() for k, v in model.net.state_dict().items()}
    before = path.read_bytes() if path is not None and path.is_file() else None
    tripwire = Tripwire()
    fit_kwargs.setdefault("callbacks", [tripwire])
    with pytest.raises(error, match=match):
        model.fit(fit_kwargs.pop("train", regression_batches(n=12)), epochs=3, verbose=0, **fit_kwargs)
    assert tripwire.steps == 0
    assert_same_tensors(model.net.state_dict(), weights)
    if before is not None:
        assert path.read_bytes() == before


def test_an_existing_state_file_is_never_replaced_without_resume(saved, batches):
    fails_untouched(
        linear_model(seed=3),
        saved,
        ValueError,
        f"state_path='{re.escape(str(saved))}' already exists; pass resume=True to continue the run saved there, or "
        r"choose another state_path \(or delete the file\) to start a new run",
        train=batches,
        state_path=saved,
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"resume": True}, ValueError, r"resume=True needs state_path: the file an earlier fit\(state_path=...\)"),
        ({"resume": "yes", "state_path": "x.pt"}, TypeError, "resume='yes' is not valid; use True or False"),
        ({"state_path": 3}, TypeError, "state_path must be a str or os.PathLike; got int: 3"),
    ],
)
def test_bad_resume_arguments_are_named(kwargs, error, match):
    fails_untouched(linear_model(), None, error, match, **kwargs)


def test_a_directory_or_a_path_under_a_file_as_state_path_is_named(tmp_path):
    fails_untouched(linear_model(), None, ValueError, "state_path='.*' is a directory", state_path=tmp_path)
    (tmp_path / "runs").write_text("")
    under_a_file = tmp_path / "runs" / "state.pt"
    fails_untouched(linear_model(), None, ValueError, "'.*runs' is a file, not a directory", state_path=under_a_file)


def test_callbacks_that_differ_from_the_saved_run_are_listed_both_ways(saved, batches):
    fails_untouched(
        linear_model(seed=3),
        saved,
        ValueError,
        r"the saved run's callbacks were \['BestWeights', 'EarlyStopping', 'Tripwire'\], this fit's are "
        r"\['BestWeights', 'EarlyStopping', 'TerminateOnNaN', 'Tripwire'\]; resume with the same fit arguments",
        train=batches,
        state_path=saved,
        resume=True,
        callbacks=[TerminateOnNaN(), Tripwire()],
    )


def test_a_state_that_does_not_match_the_fit_is_named(saved, batches):
    fit = {"train": batches, "state_path": saved, "resume": True}
    fails_untouched(
        linear_model(seed=3), saved, ValueError, r"history columns were \['epoch', 'train_loss', 'val_loss'", **fit
    )
    torch.manual_seed(0)
    wider = nn.Linear(4, 1)
    other = KerasModel(wider, nn.MSELoss(), optimizer=torch.optim.SGD(wider.parameters(), lr=0.1), device="cpu")
    with_val = {**fit, "val_data": batches}
    fails_untouched(
        other, saved, ValueError, r"the net's state differs from the saved run's in \['weight'\]", **with_val
    )
    model = linear_model(seed=3)
    model.lr_scheduler = torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=1)
    fails_untouched(model, saved, ValueError, "the saved run had no lr_scheduler and this fit has one", **with_val)
    shuffled = DataLoader(batches, batch_size=None, shuffle=True, generator=torch.Generator())
    match = r"train loader generators were 0, this fit's are 1"
    fails_untouched(linear_model(seed=3), saved, ValueError, match, **{**with_val, "train": shuffled})


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (
            "weights",
            r"is not a kerasish training state: it holds a dict with keys \['bias', 'weight'\] and no 'version'\. "
            r"Weights written by save_ckpt or ckpt_path are not one; fit\(state_path=\.\.\.\) writes them",
        ),
        ("garbage", r"is not a kerasish training state: torch.load\(weights_only=True\) could not read it \("),
        ("version", r"has a training state of version 2; this kerasish reads version 1"),
        ("damaged", r"is a damaged training state: it lacks the keys \['rng'\]"),
    ],
)
def test_a_file_that_is_not_a_state_of_this_version_is_named(content, match, saved, batches):
    if content == "weights":
        linear_model().save_ckpt(saved)
    elif content == "garbage":
        saved.write_bytes(b"epoch,train_loss\n1,0.5\n")
    else:
        state = load(saved)
        if content == "version":
            state["version"] = 2
        else:
            del state["rng"]
        torch.save(state, saved)
    fails_untouched(
        linear_model(seed=3),
        saved,
        ValueError,
        f"state_path='{re.escape(str(saved))}' " + match,
        train=batches,
        val_data=batches,
        state_path=saved,
        resume=True,
    )


class PathKeeper(Callback):
    """Keeps a ``Path`` in its state: weights-only loading could not read it back."""

    def state_dict(self):
        return {"log": Path("run.log")}


def test_a_callback_state_that_weights_only_loading_could_not_read_fails_before_the_first_step(batches, tmp_path):
    fails_untouched(
        linear_model(),
        None,
        TypeError,
        r"cannot hold state\['callbacks'\]\[2\]\['state'\]\['log'\], a PosixPath: torch.load\(weights_only=True\)",
        train=batches,
        state_path=tmp_path / "state.pt",
        callbacks=[PathKeeper(), Tripwire()],
    )
    assert not (tmp_path / "state.pt").exists()
