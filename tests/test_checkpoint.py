"""atomic_save (full disks, leftovers of killed writers, new directories), load_weights (never runs pickled code),
load_into (all or nothing) and check_writable."""

from __future__ import annotations

import builtins
import errno
import os
import pickle
import re
import stat
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from torch import nn

import kerasish.checkpoint
from kerasish import Callback, CSVLogger, KerasModel, LivePlot
from kerasish.checkpoint import atomic_save, check_writable, load_into, load_weights
from tests.helpers import regression_batches, tagged_linear

CPU = torch.device("cpu")


def _touch(path: str) -> None:
    """What a malicious checkpoint would run on load; here it only leaves a file behind as evidence."""
    Path(path).touch()


class RunsCodeOnLoad:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return _touch, (str(self.sentinel),)


def test_round_trip(tmp_path):
    net = tagged_linear()
    net.tag.fill_(3)
    path = tmp_path / "w.pt"
    atomic_save(net.state_dict(), path)
    loaded = load_weights(path, CPU)
    state = net.state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert {t.device.type for t in loaded.values()} == {"cpu"}

    fresh = tagged_linear()
    fresh.load_state_dict(loaded)
    assert fresh.tag.item() == 3
    assert torch.equal(fresh.weight, net.weight)


def test_round_trip_with_a_string_path(tmp_path):
    path = str(tmp_path / "w.pt")
    atomic_save({"x": torch.arange(3)}, path)
    assert torch.equal(load_weights(path, CPU)["x"], torch.arange(3))


def test_atomic_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "w.pt"
    atomic_save({"x": torch.zeros(2)}, path)
    atomic_save({"x": torch.ones(2)}, path)
    assert os.listdir(tmp_path) == ["w.pt"]
    assert torch.equal(load_weights(path, CPU)["x"], torch.ones(2))


@pytest.mark.parametrize("error", [RuntimeError("serialization failed"), KeyboardInterrupt("Ctrl-C")])
def test_atomic_save_failure_keeps_the_old_file(tmp_path, monkeypatch, error):
    path = tmp_path / "w.pt"
    atomic_save({"x": torch.zeros(2)}, path)
    before = path.read_bytes()

    def half_written_save(obj, f, *args, **kwargs):
        f.write(b"\x80\x02partial")
        raise error

    monkeypatch.setattr(kerasish.checkpoint.torch, "save", half_written_save)
    with pytest.raises(type(error), match=str(error)):
        atomic_save({"x": torch.ones(2)}, path)
    assert os.listdir(tmp_path) == ["w.pt"]
    assert path.read_bytes() == before


def test_atomic_save_failure_without_a_previous_file_leaves_nothing(tmp_path, monkeypatch):
    def failing_save(obj, f, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(kerasish.checkpoint.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left on device"):
        atomic_save({"x": torch.ones(2)}, tmp_path / "w.pt")
    assert os.listdir(tmp_path) == []


def test_atomic_save_gives_the_file_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_save({"x": torch.zeros(2)}, tmp_path / "atomic.pt")
        torch.save({"x": torch.zeros(2)}, tmp_path / "plain.pt")
    finally:
        os.umask(umask)
    plain = stat.S_IMODE((tmp_path / "plain.pt").stat().st_mode)
    assert plain == 0o644
    assert oct(stat.S_IMODE((tmp_path / "atomic.pt").stat().st_mode)) == oct(plain)


def test_load_weights_never_runs_pickled_code(tmp_path):
    sentinel = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": RunsCodeOnLoad(sentinel)}, path)

    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_weights(path, CPU)
    assert not sentinel.exists()

    # Control: an unrestricted load does run the payload, so the file really carries code.
    torch.load(path, weights_only=False)
    assert sentinel.exists()


def test_load_weights_maps_to_the_device(tmp_path):
    path = tmp_path / "w.pt"
    atomic_save({"x": torch.arange(3.0)}, path)
    loaded = load_weights(path, torch.device("meta"))
    assert loaded["x"].device.type == "meta"
    assert loaded["x"].shape == (3,)


def test_check_writable_returns_the_path(tmp_path):
    assert check_writable(str(tmp_path / "best.pt"), "ckpt_path") == tmp_path / "best.pt"
    assert check_writable(tmp_path / "best.pt", "path") == tmp_path / "best.pt"


def test_check_writable_accepts_an_existing_file(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"old")
    assert check_writable(tmp_path / "best.pt", "path") == tmp_path / "best.pt"


def test_check_writable_rejects_a_directory(tmp_path):
    message = f"ckpt_path={str(tmp_path)!r} is a directory; give a file path such as {str(tmp_path / 'best.pt')!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_writable(tmp_path, "ckpt_path")


def test_check_writable_rejects_an_unwritable_directory(tmp_path, monkeypatch):
    # Tests may run as root, for whom every directory is writable; ask os.access to say no instead of chmod.
    real_access = os.access
    monkeypatch.setattr(
        kerasish.checkpoint.os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode)
    )
    path = tmp_path / "best.pt"
    message = f"path={str(path)!r}: the directory {str(tmp_path)!r} is not writable"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_writable(path, "path")


# --- a full disk ---------------------------------------------------------------------------------------------------

TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def fixed_free_space(monkeypatch, free: int) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(kerasish.checkpoint.shutil, "disk_usage", lambda directory: usage(1 << 30, 0, free))


@pytest.mark.parametrize(
    ("error", "cause", "original"),
    [
        (
            RuntimeError(TORCH_SHORT_WRITE),
            "torch could not write all of it; the disk is probably full",
            TORCH_SHORT_WRITE,
        ),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "no space left on device",
            "[Errno 28] No space left on device",
        ),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded", "[Errno 122] Disk quota exceeded"),
    ],
)
def test_a_full_disk_names_the_file_and_the_space_left(tmp_path, monkeypatch, error, cause, original):
    path = tmp_path / "runs" / "state.pt"
    atomic_save({"x": torch.zeros(2)}, path)
    before = path.read_bytes()

    def save_until_full(obj, f, *args, **kwargs):
        f.write(b"\x80\x02partial")
        raise error

    monkeypatch.setattr(kerasish.checkpoint.torch, "save", save_until_full)
    fixed_free_space(monkeypatch, 4096)
    with pytest.raises(OSError) as raised:
        atomic_save({"x": torch.ones(2)}, path)
    assert str(raised.value) == (
        f"could not write {str(path)!r}: {cause} (4.0 KiB free on that file system, with 9 B of the new file written; "
        f"any previous file there is intact) — {type(error).__name__}: {original}"
    )
    assert raised.value.errno == (errno.ENOSPC if isinstance(error, RuntimeError) else error.errno)
    assert raised.value.__cause__ is error
    assert os.listdir(path.parent) == ["state.pt"]
    assert path.read_bytes() == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, whose writes fail with ENOSPC")
@pytest.mark.parametrize("size", [10, 100_000])  # torch fails with OSError, or with its RuntimeError then OSError
def test_a_real_short_write_from_torch_is_reported_as_a_full_disk(tmp_path, monkeypatch, size):
    path = tmp_path / "w.pt"
    atomic_save({"x": torch.zeros(2)}, path)
    before = path.read_bytes()

    def open_full_device(file, mode):
        builtins.open(file, mode).close()  # the temporary file exists, as it would on a full disk
        return builtins.open("/dev/full", "wb")

    monkeypatch.setattr(kerasish.checkpoint, "open", open_full_device, raising=False)
    with pytest.raises(OSError, match=f"^{re.escape(f'could not write {str(path)!r}: no space left on device (')}"):
        atomic_save({"x": torch.zeros(size)}, path)
    assert os.listdir(tmp_path) == ["w.pt"]
    assert path.read_bytes() == before


def test_another_write_failure_keeps_its_kind_and_names_the_file(tmp_path, monkeypatch):
    def denied(obj, f, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(kerasish.checkpoint.torch, "save", denied)
    path = tmp_path / "w.pt"
    message = f"could not write {str(path)!r} — PermissionError: [Errno 13] Permission denied"
    with pytest.raises(PermissionError, match=f"^{re.escape(message)}$") as raised:
        atomic_save({"x": torch.ones(2)}, path)
    assert raised.value.errno == errno.EACCES
    assert os.listdir(tmp_path) == []


# --- leftovers of killed writers ---------------------------------------------------------------------------------


def dead_pid() -> int:
    """The id of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)
    return child.pid


@pytest.mark.skipif(os.name == "nt", reason="leftovers are not removed on Windows")
def test_a_save_removes_only_its_own_leftovers_of_dead_writers(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    names = {
        "dead writer of w.pt": f".w.pt.{dead}.0123abcd.tmp",
        "live writer of w.pt": f".w.pt.{alive}.0123abcd.tmp",
        "this process, writing w.pt in another thread": f".w.pt.{os.getpid()}.89abcdef.tmp",
        "dead writer of x.pt": f".x.pt.{dead}.0123abcd.tmp",
        "dead writer of w.pt.5": f".w.pt.5.{dead}.0123abcd.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"half a checkpoint")
    atomic_save({"x": torch.ones(2)}, tmp_path / "w.pt")
    kept = {label for label, name in names.items() if (tmp_path / name).exists()}
    assert kept == set(names) - {"dead writer of w.pt"}
    assert len(os.listdir(tmp_path)) == len(names)  # w.pt in, one leftover out


@pytest.mark.skipif(os.name == "nt", reason="leftovers are not removed on Windows")
def test_a_writer_of_another_user_counts_as_alive(tmp_path, monkeypatch):
    def not_yours(pid, signal):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(kerasish.checkpoint.os, "kill", not_yours)
    leftover = tmp_path / ".w.pt.4242.0123abcd.tmp"
    leftover.write_bytes(b"someone else's")
    atomic_save({"x": torch.ones(2)}, tmp_path / "w.pt")
    assert leftover.exists()


@pytest.mark.skipif(os.name == "nt", reason="leftovers are not removed on Windows")
def test_a_failed_look_for_leftovers_warns_and_the_save_goes_on(tmp_path, monkeypatch):
    def unreadable(directory):
        raise PermissionError(errno.EACCES, "Permission denied", str(directory))

    monkeypatch.setattr(kerasish.checkpoint.os, "scandir", unreadable)
    path = tmp_path / "w.pt"
    with pytest.warns(UserWarning, match=f"could not remove what earlier writes of {re.escape(repr(str(path)))} left"):
        atomic_save({"x": torch.ones(2)}, path)
    assert torch.equal(load_weights(path, CPU)["x"], torch.ones(2))


# --- all or nothing when loading ---------------------------------------------------------------------------------


def small_net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def tensors_of(net: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in net.state_dict().items()}


def assert_unchanged(net: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[key], before[key]) for key in before)


def test_a_misfit_lists_every_kind_and_loads_nothing(tmp_path):
    net = small_net()
    before = tensors_of(net)
    state = {key: torch.full_like(value, 7) for key, value in small_net().state_dict().items()}
    del state["0.bias"], state["1.running_var"]
    state["2.weight"] = torch.zeros(3, 4)
    state["head.weight"] = torch.zeros(1)

    # Control: load_state_dict copies everything that fits before it raises.
    with pytest.raises(RuntimeError):
        small_net().load_state_dict(state)
    half = small_net()
    with pytest.raises(RuntimeError, match="size mismatch"):
        half.load_state_dict(state)
    assert torch.equal(half[0].weight, torch.full((4, 3), 7.0))

    path = tmp_path / "other.pt"
    with pytest.raises(RuntimeError) as raised:
        load_into(net, state, path)
    assert str(raised.value) == (
        f"{str(path)!r} does not fit the net, so nothing was loaded and the net is unchanged:\n"
        "  Missing keys, in the net but not in the file (2): '0.bias', '1.running_var'\n"
        "  Unexpected keys, in the file but not in the net (1): 'head.weight'\n"
        "  Shape mismatches (1): '2.weight' is (3, 4) in the file, (2, 4) in the net"
    )
    assert_unchanged(net, before)


def test_a_long_list_is_cut_after_five():
    net = nn.Linear(2, 1)
    before = tensors_of(net)
    state = {**net.state_dict(), **{f"extra{i}": torch.zeros(1) for i in range(8)}}
    message = (
        "the state dict does not fit the net, so nothing was loaded and the net is unchanged:\n"
        "  Unexpected keys, in the state but not in the net (8): 'extra0', 'extra1', 'extra2', 'extra3', 'extra4' "
        "and 3 more"
    )
    with pytest.raises(RuntimeError, match=f"^{re.escape(message)}$"):
        load_into(net, state)
    assert_unchanged(net, before)


def test_a_value_that_is_not_a_tensor_is_a_misfit():
    net = nn.Linear(2, 1)
    before = tensors_of(net)
    with pytest.raises(RuntimeError, match=r"Shape mismatches \(1\): 'bias' is a int in the file, a tensor in the net"):
        load_into(net, {"weight": torch.ones(1, 2), "bias": 3}, "w.pt")
    assert_unchanged(net, before)


def test_a_training_state_is_recognised(tmp_path):
    net = nn.Linear(2, 1)
    state = {"version": 1, "epoch": 3, "net": net.state_dict()}
    with pytest.raises(
        RuntimeError, match=r"training state written by fit\(state_path=\.\.\.\): the weights are its 'net'"
    ):
        load_into(net, state, tmp_path / "state.pt")


def test_something_other_than_a_mapping_is_named():
    with pytest.raises(TypeError, match=r"^'w\.pt' holds a list, not a state dict \(tensors by parameter name\)$"):
        load_into(nn.Linear(2, 1), [torch.zeros(1)], "w.pt")


def test_a_fitting_state_loads_cast_to_the_nets_dtypes_and_without_a_wrappers_prefix():
    source, net = small_net(), small_net()
    state = {
        f"module.{key}": value.half() if value.is_floating_point() else value
        for key, value in source.state_dict().items()
    }
    load_into(net, state, "ddp.pt")
    for key, value in net.state_dict().items():
        assert value.dtype == source.state_dict()[key].dtype
        assert torch.equal(value, state[f"module.{key}"].to(value.dtype))


def test_a_one_element_tensor_loads_into_a_scalar_as_load_state_dict_allows():
    net = nn.BatchNorm1d(2)
    state = {**net.state_dict(), "num_batches_tracked": torch.tensor([5])}
    load_into(net, state)
    assert net.num_batches_tracked.item() == 5


# --- directories created when the first file is written ----------------------------------------------------------


def test_check_writable_accepts_a_directory_it_could_create_and_creates_nothing(tmp_path):
    path = tmp_path / "a" / "b" / "best.pt"
    assert check_writable(path, "ckpt_path") == path
    assert (
        check_writable(tmp_path / "ckpt" / "{epoch:03d}" / "w.pt", "path") == tmp_path / "ckpt" / "{epoch:03d}" / "w.pt"
    )
    assert os.listdir(tmp_path) == []


def test_check_writable_rejects_a_file_where_a_directory_should_be(tmp_path):
    (tmp_path / "f").write_text("a file")
    path = tmp_path / "f" / "best.pt"
    message = f"ckpt_path={str(path)!r}: {str(tmp_path / 'f')!r} is a file, not a directory"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_writable(path, "ckpt_path")
    deeper = tmp_path / "f" / "b" / "best.pt"
    message = (
        f"ckpt_path={str(deeper)!r}: the directory {str(deeper.parent)!r} cannot be created: "
        f"{str(tmp_path / 'f')!r} is a file"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_writable(deeper, "ckpt_path")


def test_check_writable_rejects_a_directory_under_an_unwritable_one(tmp_path, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(
        kerasish.checkpoint.os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode)
    )
    path = tmp_path / "a" / "b" / "best.pt"
    message = (
        f"state_path={str(path)!r}: the directory {str(path.parent)!r} does not exist and cannot be created: "
        f"{str(tmp_path)!r} is not writable"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_writable(path, "state_path")


def test_atomic_save_creates_the_directories(tmp_path):
    path = tmp_path / "a" / "b" / "w.pt"
    atomic_save({"x": torch.arange(3)}, path)
    assert torch.equal(load_weights(path, CPU)["x"], torch.arange(3))


class SeesNoDirectories(Callback):
    """Records, when the fit begins, what ``directory`` holds."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.at_fit_begin: list[str] | None = None

    def on_fit_begin(self, model, logs):
        self.at_fit_begin = sorted(os.listdir(self.directory))


def small_model() -> KerasModel:
    net = nn.Linear(3, 1)
    return KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.05), device="cpu")


def test_every_file_a_fit_writes_gets_its_directories_when_it_is_first_written(tmp_path):
    batches = regression_batches()
    sees = SeesNoDirectories(tmp_path)
    callbacks = [
        CSVLogger(tmp_path / "logs" / "history.csv"),
        LivePlot(tmp_path / "plots" / "curves.png", verbose=0),
        sees,
    ]
    small_model().fit(
        batches,
        batches,
        epochs=2,
        ckpt_path=tmp_path / "ckpt" / "a" / "best.pt",
        state_path=tmp_path / "runs" / "state.pt",
        callbacks=callbacks,
        verbose=0,
    )
    assert sees.at_fit_begin == []
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["ckpt/a/best.pt", "logs/history.csv", "plots/curves.png", "runs/state.pt"]


def test_a_fit_that_fails_its_checks_leaves_no_directories(tmp_path):
    batches = regression_batches()
    with pytest.raises(ValueError, match="epochs=0 is not valid"):
        small_model().fit(
            batches,
            epochs=0,
            ckpt_path=tmp_path / "ckpt" / "best.pt",
            state_path=tmp_path / "runs" / "state.pt",
            callbacks=[CSVLogger(tmp_path / "logs" / "history.csv")],
            verbose=0,
        )
    assert os.listdir(tmp_path) == []
