"""fit(state_path=..., resume=True): a stopped run goes on exactly where it stopped, or fails before any step."""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import ExponentialLR, StepLR
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from kerasish import Callback, KerasModel, ModelCheckpoint, StepRunner, TerminateOnNaN
from kerasish.callbacks import CallbackList
from kerasish.history import History
from kerasish.resume import STATE_KEYS, RunState
from kerasish.state_parts import history_rows
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
    assert (state["epoch"], state["finished"], state["history"]["length"]) == (CUT, None, CUT)

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
    assert set(STATE_KEYS) < set(state)
    assert tuple(state) == (  # "ranks" too, data-parallel only
        *("version", "epoch", "epochs", "finished", "columns", "history", "net", "optimizer", "optimizer_class"),
        *("lr_scheduler", "lr_scheduler_class", "grad_scaler", "callbacks", "steps_per_epoch", "rng"),
        *("loader_generators", "val_loader_generators", "world_size"),
    )
    assert (state["world_size"], state["steps_per_epoch"]) == (1, None)
    assert (state["version"], state["epoch"], state["epochs"], state["finished"]) == (2, STOP, EPOCHS, "stopped")
    assert (state["optimizer_class"], state["lr_scheduler_class"]) == ("Adam", "StepLR")
    assert state["columns"] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time"]
    columns = state["history"]["columns"]
    assert (state["history"]["length"], list(columns)) == (STOP, state["columns"])
    assert columns["epoch"].dtype == torch.int64 and columns["lr"].dtype == torch.float64
    assert columns["epoch"].tolist() == list(range(1, STOP + 1))
    assert columns["lr"].tolist() == [0.03] * 3 + [0.015] * 3 + [0.0075]
    classes = [entry["class"] for entry in state["callbacks"]]
    assert classes == ["BestWeights", "ModelCheckpoint", "EarlyStopping", "ModelCheckpoint", "Tripwire"]
    assert state["callbacks"][0]["state"]["best"]["epoch"] == BEST
    assert state["lr_scheduler"]["last_epoch"] == STOP and state["grad_scaler"] is None
    assert state["net"]["0.weight"].shape == (32, 64)
    assert set(state["rng"]) == {"torch", "cuda", "mps", "numpy", "python"}
    assert state["rng"]["numpy"]["keys"].shape == (624,)
    assert len(state["rng"]["python"]["internal"]) == 625
    assert (len(state["loader_generators"]), state["val_loader_generators"]) == (1, [])


# --- small runs: regression batches, a linear net --------------------------------------------------------------------


SCHEDULER_ARGS = {StepLR: {"step_size": 1, "gamma": 0.5}, ExponentialLR: {"gamma": 0.9}}


def linear_model(seed: int = 0, optimizer: type = torch.optim.SGD, scheduler: type | None = None) -> KerasModel:
    """A seeded ``nn.Linear(3, 1)`` with an ``optimizer`` of that class (lr 0.05) and a ``scheduler`` of that class."""
    torch.manual_seed(seed)
    net = nn.Linear(3, 1)
    opt = optimizer(net.parameters(), lr=0.05)
    lr_scheduler = None if scheduler is None else scheduler(opt, **SCHEDULER_ARGS[scheduler])
    return KerasModel(net, nn.MSELoss(), optimizer=opt, lr_scheduler=lr_scheduler, device="cpu")


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
        ("version", r"has a training state of version 3; this kerasish reads versions 1 to 2"),
        ("damaged", r"is a damaged training state: it lacks the keys \['rng'\]"),
        ("history", r"is a damaged training state: its history cannot be read \(ValueError\('zip\(\) argument 2"),
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
            state["version"] = 3
        elif content == "history":
            state["history"]["columns"]["epoch"] = torch.tensor([1, 2])  # the run had one epoch
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


# --- the optimizer's and the scheduler's kinds ----------------------------------------------------------------------


@pytest.fixture
def saved_adam(batches, tmp_path) -> Path:
    """A state file from a one-epoch run of :func:`linear_model` with Adam and StepLR, without val data."""
    path = tmp_path / "state.pt"
    model = linear_model(optimizer=torch.optim.Adam, scheduler=StepLR)
    model.fit(batches, epochs=1, callbacks=[Tripwire()], state_path=path, verbose=0)
    return path


@pytest.mark.parametrize(
    ("optimizer", "scheduler", "match"),
    [
        # Adam's state loads into SGD, which then fails at its first step: KeyError: 'momentum'.
        (
            torch.optim.SGD,
            StepLR,
            r"the saved run's optimizer was Adam and this fit's is SGD: Adam's state cannot go on in SGD\. Resume "
            r"with the same kind of optimizer as the saved run \(Adam\), or start a new run with another state_path",
        ),
        # StepLR's state loads into ExponentialLR silently, which then halves the lr instead of multiplying it by 0.9.
        (torch.optim.Adam, ExponentialLR, r"lr_scheduler was StepLR and this fit's is ExponentialLR: StepLR's state"),
    ],
)
def test_another_kind_of_optimizer_or_scheduler_than_the_saved_run_had_is_named(
    optimizer, scheduler, match, saved_adam, batches
):
    model = linear_model(seed=3, optimizer=optimizer, scheduler=scheduler)
    fails_untouched(model, saved_adam, ValueError, match, train=batches, state_path=saved_adam, resume=True)


class RenamedSGD(torch.optim.SGD):
    """SGD under another name: a run saved with SGD goes on with it unchanged, but its class name differs."""


def written_by_version_1(path: Path, history: pd.DataFrame) -> None:
    """Rewrites the state at ``path`` as kerasish wrote it before version 2: rows, no classes, no val generators."""
    state = load(path)
    for key in ("optimizer_class", "lr_scheduler_class", "val_loader_generators"):
        del state[key]
    state["version"], state["history"] = 1, history.to_dict("records")
    torch.save(state, path)


def test_a_version_1_file_resumes_exactly_and_its_unnamed_classes_are_not_checked(batches, tmp_path):
    path, fit = tmp_path / "state.pt", {"callbacks": [Tripwire()], "verbose": 0}
    whole = linear_model().fit(batches, batches, epochs=4, **fit)
    cut = linear_model()
    cut.fit(batches, batches, epochs=2, state_path=path, **fit)
    written_by_version_1(path, cut.history)
    assert [type(value) for value in load(path)["history"][1].values()] == [int, float, float, float, float]

    resumed = linear_model(seed=1, optimizer=RenamedSGD).fit(
        batches, batches, epochs=4, state_path=path, resume=True, **fit
    )
    pd.testing.assert_frame_equal(without_time(resumed), without_time(whole), check_exact=True)
    state = load(path)
    assert (state["version"], state["optimizer_class"], state["history"]["length"]) == (2, "RenamedSGD", 4)
    match = "the saved run's optimizer was RenamedSGD and this fit's is SGD"  # now that the file names it
    fails_untouched(
        linear_model(), path, ValueError, match, train=batches, val_data=batches, state_path=path, resume=True
    )


# --- the history in the file: by column, each row converted and checked once ----------------------------------------

COLUMNS = ["epoch", "train_loss", "lr", "time"]


def bare_run(path: Path, *, resume: bool = False) -> RunState:
    """The run state of a fit of :func:`linear_model` without callbacks or val data, before its first epoch."""
    model = linear_model()
    history = History(COLUMNS)
    return RunState.open(path, resume, model=model, history=history, callbacks=CallbackList(), runner=None, loader=[])


def bits(rows: list[dict]) -> list[dict]:
    """Each value with its type, a float as its 8 bytes: NaN then equals NaN, and -0.0 differs from 0.0."""
    return [{key: (type(v), struct.pack("<d", v) if type(v) is float else v) for key, v in row.items()} for row in rows]


def test_a_long_history_is_written_by_column_and_read_back_bit_for_bit(tmp_path):
    rng = random.Random(0)
    specials = [float("nan"), float("inf"), -0.0, 5e-324, 0.1 + 0.2, -1.7976931348623157e308]
    rows = [
        {"epoch": epoch, "train_loss": rng.random() if epoch % 50 else specials[epoch // 50 % 6], "lr": 0.1 / epoch}
        | {"time": rng.expovariate(10.0)}
        for epoch in range(1, 1501)
    ]
    run = bare_run(tmp_path / "state.pt")
    for row in rows:
        run.history.append(row)
        if row["epoch"] in (1, 2, 999, 1500):
            run.save(epochs=2000)
    columns = load(tmp_path / "state.pt")["history"]["columns"]
    assert {name: (column.dtype, len(column)) for name, column in columns.items()} == {
        "epoch": (torch.int64, 1500),
        **{name: (torch.float64, 1500) for name in COLUMNS[1:]},
    }
    resumed = bare_run(tmp_path / "state.pt", resume=True)
    assert resumed.restore(epochs=2000, verbose=0) == 1501
    assert bits(resumed.history.rows) == bits(rows)


class Sealed(dict):
    """A history row that fails the test when anything reads it."""

    def _read(self, *args, **kwargs):
        raise AssertionError("a save read an earlier epoch's row again")

    __getitem__ = __iter__ = __len__ = __contains__ = get = keys = values = items = _read


def test_a_save_reads_only_the_rows_added_since_the_last_one(tmp_path):
    rows = [{"epoch": epoch, "train_loss": 1.0 / epoch, "lr": 0.05, "time": 0.5} for epoch in (1, 2, 3)]
    run = bare_run(tmp_path / "state.pt")
    for row in rows[:2]:
        run.history.append(row)
        run.save(epochs=3)
    run.history.rows[:] = [Sealed(row) for row in run.history.rows]
    run.history.append(rows[2])
    run.save(epochs=3)
    assert bits(history_rows(load(tmp_path / "state.pt")["history"])) == bits(rows)


def test_columns_of_other_values_or_with_gaps_come_back_as_they_were(tmp_path):
    rows = [
        {"epoch": 1, "train_loss": 0.5, "lr": 0.1, "time": 1.5, "note": "warm-up"},
        {"epoch": 2, "train_loss": None, "lr": np.float32(0.25), "time": 1.5, "flag": True},
        {"epoch": 3, "train_loss": 0.25, "lr": 0.1, "time": 2, "flag": False, "note": "x", "big": 2**70},
    ]
    run = bare_run(tmp_path / "state.pt")
    for row in rows:
        run.history.append(row)
        run.save(epochs=3)
    columns = load(tmp_path / "state.pt")["history"]["columns"]
    assert list(columns) == [*COLUMNS, "note", "flag", "big"]
    assert columns["lr"].dtype == torch.float64  # NumPy's float32 0.25, as a Python float
    assert columns["time"] == {"rows": [0, 1, 2], "values": [1.5, 1.5, 2]}  # an int among the floats
    assert columns["note"] == {"rows": [0, 2], "values": ["warm-up", "x"]}
    resumed = bare_run(tmp_path / "state.pt", resume=True)
    resumed.restore(epochs=3, verbose=0)
    assert bits(resumed.history.rows) == bits([rows[0], {**rows[1], "lr": 0.25}, rows[2]])
    pd.testing.assert_frame_equal(resumed.history.frame, run.history.frame, check_exact=True)

    run.history.append({"epoch": 4, "train_loss": 0.2, "lr": 0.1, "time": 1.0, "note": Path("run.log")})
    with pytest.raises(TypeError, match=r"cannot hold state\['history'\]\[3\]\['note'\], a PosixPath"):
        run.save(epochs=4)


# --- loaders: their random streams go on exactly, or the fit is refused ---------------------------------------------


def regression_set(seed: int, n: int = 40) -> TensorDataset:
    """``n`` samples of a noisy linear target in 3 features, drawn from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator)
    return TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=generator))


class Jittered(Dataset):
    """Adds noise from torch's global generator to every sample read: in a worker process, the worker's generator."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        x, y = self.data[index]
        return x + 0.1 * torch.randn(3), y


def whole_and_resumed(loaders: Callable[[], tuple], tmp_path: Path) -> tuple[KerasModel, KerasModel]:
    """A 4-epoch fit, and one cut after 2 epochs and relaunched to 4; ``loaders()`` builds each run's two loaders."""

    def run(epochs: int, state_path: Path | None = None, resume: bool = False) -> KerasModel:
        model = linear_model()
        model.fit(*loaders(), epochs=epochs, patience=None, state_path=state_path, resume=resume, verbose=0)
        return model

    whole = run(4)
    run(2, tmp_path / "state.pt")
    return whole, run(4, tmp_path / "state.pt", resume=True)


def test_a_shuffled_val_loader_with_its_own_generator_goes_on_with_its_saved_state(tmp_path):
    def loaders() -> tuple[DataLoader, DataLoader]:
        train = DataLoader(regression_set(0), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
        val = DataLoader(regression_set(1), batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(2))
        return train, val

    whole, resumed = whole_and_resumed(loaders, tmp_path)
    pd.testing.assert_frame_equal(without_time(resumed.history), without_time(whole.history), check_exact=True)
    assert_same_tensors(resumed.net.state_dict(), whole.net.state_dict())
    assert len(load(tmp_path / "state.pt")["val_loader_generators"]) == 1


def test_workers_that_restart_every_epoch_draw_after_a_resume_what_they_drew_before(tmp_path):
    def loaders() -> tuple[DataLoader, None]:
        data = Jittered(regression_set(0))
        return DataLoader(data, batch_size=8, shuffle=True, num_workers=1, generator=torch.Generator()), None

    whole, resumed = whole_and_resumed(loaders, tmp_path)
    pd.testing.assert_frame_equal(without_time(resumed.history), without_time(whole.history), check_exact=True)
    assert_same_tensors(resumed.net.state_dict(), whole.net.state_dict())


@pytest.mark.parametrize("argument", ["train_data", "val_data"])
def test_a_loader_whose_workers_persist_is_refused_where_the_run_is_saved(argument, tmp_path):
    loader = DataLoader(regression_set(0), batch_size=8, num_workers=1, persistent_workers=True)
    match = (
        rf"{argument} is a DataLoader with persistent_workers=True \(num_workers=1\), which a run saved to state_path "
        r"cannot resume exactly: .* Pass persistent_workers=False \(its workers then restart, seeded anew, every "
        r"epoch\), or fit without state_path"
    )
    fit = {"train": loader} if argument == "train_data" else {"val_data": loader}
    fails_untouched(linear_model(), None, ValueError, match, state_path=tmp_path / "state.pt", resume=True, **fit)
    assert not (tmp_path / "state.pt").exists()
