"""atomic_save, load_weights (never runs pickled code) and check_writable."""

from __future__ import annotations

import os
import pickle
import re
import stat
from pathlib import Path

import pytest
import torch

import kerasish.checkpoint
from kerasish.checkpoint import atomic_save, check_writable, load_weights
from tests.helpers import tagged_linear

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


def test_check_writable_rejects_a_missing_directory(tmp_path):
    path = tmp_path / "missing" / "best.pt"
    message = f"ckpt_path={str(path)!r}: the directory {str(path.parent)!r} does not exist"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_writable(path, "ckpt_path")


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
