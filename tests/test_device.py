"""resolve_device, to_device and move_optimizer_state, on CPU (the meta device stands in for "another device")."""

from __future__ import annotations

import re
from collections import UserDict, namedtuple

import pytest
import torch
from torch import nn

from kerasish.device import move_optimizer_state, resolve_device, to_device

META = torch.device("meta")


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_none_is_cpu_without_an_accelerator(no_accelerator):
    assert resolve_device(None) == torch.device("cpu")


def test_none_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")


def test_none_falls_back_to_mps(no_accelerator, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("mps")


@pytest.fixture
def two_gpus_and_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("cpu", torch.device("cpu")),
        ("cuda", torch.device("cuda")),
        ("cuda:1", torch.device("cuda", 1)),
        ("mps", torch.device("mps")),
        (torch.device("cuda", 0), torch.device("cuda", 0)),
        (torch.device("cpu"), torch.device("cpu")),
    ],
)
def test_strings_and_devices_are_honoured(two_gpus_and_mps, device, expected):
    got = resolve_device(device)
    assert type(got) is torch.device
    assert got == expected


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("cuda", r"^device='cuda', but CUDA is not available here \(torch .*torch.cuda.is_available\(\) is False\); "
         r"use device='cpu', or device=None"),
        (torch.device("cuda", 0), r"^device=device\(type='cuda', index=0\), but CUDA is not available here"),
        ("mps", r"^device='mps', but MPS is not available here \(it needs Apple silicon"),
    ],
)  # fmt: skip
def test_a_device_this_machine_lacks_is_an_error_before_anything_moves(no_accelerator, device, match):
    with pytest.raises(ValueError, match=match):
        resolve_device(device)


def test_a_gpu_index_beyond_the_machines_is_an_error(two_gpus_and_mps):
    with pytest.raises(
        ValueError, match=r"^device='cuda:2', but this machine has 2 CUDA device\(s\): cuda:0 to cuda:1$"
    ):
        resolve_device("cuda:2")


@pytest.mark.parametrize("device", [0, 1.0, ["cpu"], b"cpu"])
def test_bad_type_raises(device):
    with pytest.raises(
        TypeError, match=f"device must be None, a string or a torch.device; got {re.escape(repr(device))}$"
    ):
        resolve_device(device)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "", "cpu:-1"])
def test_bad_string_raises(device):
    with pytest.raises(ValueError, match=rf"^device={re.escape(repr(device))} is not a device torch knows \("):
        resolve_device(device)


class Movable:
    """Has its own ``.to``, like a Hugging Face ``BatchEncoding``; records where it was sent."""

    def __init__(self) -> None:
        self.sent_to: list[torch.device] = []

    def to(self, device):
        self.sent_to.append(device)
        return ("moved", device)


def test_to_device_moves_a_tensor():
    moved = to_device(torch.arange(3.0), META)
    assert moved.device == META
    assert moved.shape == (3,)


def test_to_device_on_the_same_device_keeps_the_tensor():
    tensor = torch.arange(3.0)
    assert to_device(tensor, torch.device("cpu")) is tensor


def test_to_device_moves_nested_structures():
    marker = object()
    movable = Movable()
    data = (
        torch.zeros(2),
        [torch.ones(3), "text", 7, None, marker],
        {"ids": torch.zeros(4, dtype=torch.long), "inner": {"mask": (torch.ones(1),)}, "name": "x"},
        movable,
    )
    moved = to_device(data, META)

    assert type(moved) is tuple
    assert type(moved[1]) is list
    assert type(moved[2]) is dict
    assert moved[0].device == META
    assert moved[1][0].device == META
    assert moved[1][1:4] == ["text", 7, None]
    assert moved[1][4] is marker
    assert moved[2]["ids"].device == META
    assert moved[2]["ids"].dtype == torch.long
    assert type(moved[2]["inner"]["mask"]) is tuple
    assert moved[2]["inner"]["mask"][0].device == META
    assert moved[2]["name"] == "x"
    assert moved[3] == ("moved", META)
    assert movable.sent_to == [META]
    # The input is left as it was.
    assert data[0].device.type == "cpu"
    assert data[2]["ids"].device.type == "cpu"


@pytest.mark.parametrize("value", [None, 3, 2.5, "text", b"bytes"])
def test_to_device_returns_non_tensors_as_they_are(value):
    assert to_device(value, META) is value


def test_to_device_keeps_a_namedtuple():
    Batch = namedtuple("Batch", ["x", "y"])
    moved = to_device(Batch(torch.zeros(2, 3), torch.zeros(2)), META)
    assert type(moved) is Batch
    assert moved.x.device == META
    assert moved.y.device == META


class Encoding(UserDict):
    """A mapping with its own ``.to``, shaped like a Hugging Face ``BatchEncoding`` (itself a ``UserDict``)."""

    def to(self, device):
        return Encoding({key: value.to(device) for key, value in self.data.items()})


def test_to_device_moves_a_mapping_with_its_own_to():
    moved = to_device(Encoding(input_ids=torch.zeros(2, 4)), META)
    assert type(moved) is Encoding
    assert moved["input_ids"].device == META


def adam_after_one_step() -> torch.optim.Adam:
    net = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    return optimizer


def test_move_optimizer_state_on_cpu_keeps_the_state():
    optimizer = adam_after_one_step()
    before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    steps = {id(p): s["step"] for p, s in optimizer.state.items()}
    move_optimizer_state(optimizer, torch.device("cpu"))

    assert len(optimizer.state) == 2
    for param, state in optimizer.state.items():
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(state[k], before[id(param)][k]) for k in state)
        assert all(v.device.type == "cpu" for v in state.values())
        assert state["step"] is steps[id(param)]
        assert state["step"].dim() == 0
        assert state["step"].item() == 1
        assert state["exp_avg"].shape == param.shape


def test_move_optimizer_state_moves_moments_and_leaves_step_alone():
    optimizer = adam_after_one_step()
    steps = {id(p): s["step"] for p, s in optimizer.state.items()}
    move_optimizer_state(optimizer, META)
    for param, state in optimizer.state.items():
        assert state["exp_avg"].device == META
        assert state["exp_avg_sq"].device == META
        assert state["exp_avg"].shape == param.shape
        assert state["step"] is steps[id(param)]
        assert state["step"].device.type == "cpu"


def test_move_optimizer_state_moves_a_capturable_step_with_the_parameters():
    net = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1, capturable=True)
    # A capturable Adam steps only on an accelerator; its state after a step looks like this.
    for p in net.parameters():
        optimizer.state[p] = {
            "step": torch.tensor(1.0),
            "exp_avg": torch.zeros_like(p),
            "exp_avg_sq": torch.ones_like(p),
        }
    move_optimizer_state(optimizer, META)
    assert {v.device for state in optimizer.state.values() for v in state.values()} == {META}


def test_move_optimizer_state_without_state_does_nothing():
    net = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    move_optimizer_state(optimizer, META)
    assert len(optimizer.state) == 0
