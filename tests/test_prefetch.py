"""prefetch: order, read-ahead depth, deferred errors and early stops on CPU; the stream handling on CUDA, with fake
streams on any machine and for real where there is a GPU."""

from __future__ import annotations

import contextlib
import itertools
import traceback
from collections import namedtuple
from collections.abc import Mapping

import pytest
import torch

from kerasish import Callback, KerasModel
from kerasish.prefetch import prefetch

CPU, CUDA, META = torch.device("cpu"), torch.device("cuda"), torch.device("meta")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

Pair = namedtuple("Pair", ["x", "y"])


class Encoding(dict):
    """Stands in for a Hugging Face BatchEncoding: a dict with its own ``.to``."""

    def to(self, device, non_blocking=False):
        moved = {k: v.to(device, non_blocking=non_blocking) for k, v in self.items() if torch.is_tensor(v)}
        return Encoding(self, **moved)


class Graph:
    """An object whose tensors are out of sight, moved by an old-style ``.to(device)`` without ``non_blocking``."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def to(self, device):
        return Graph(self.x.to(device))


class Counting:
    """An iterator over ``items`` that counts how many it has handed out."""

    def __init__(self, items) -> None:
        self.items, self.pulled = iter(items), 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.items)
        self.pulled += 1
        return item


def nested_batches() -> list:
    """One batch of each shape a loader yields, with leaves that are not tensors."""
    x, y = torch.arange(6.0).reshape(2, 3), torch.tensor([1, 0])
    return [
        (x, y),
        {"x": x + 1, "mask": y.bool(), "name": "b1", "n": 3, "none": None},
        Pair(x + 2, y),
        [x + 3, (y, 2)],
        Encoding(input_ids=y + 4, label="e"),
    ]


def assert_same(got, want, device: torch.device) -> None:
    """``got`` has the structure and values of ``want``, with every tensor on ``device``."""
    assert type(got) is type(want)
    if isinstance(want, torch.Tensor):
        assert got.device.type == device.type
        assert torch.equal(got.cpu(), want.cpu())
    elif isinstance(want, (tuple, list)):
        for g, w in zip(got, want, strict=True):
            assert_same(g, w, device)
    elif isinstance(want, Mapping):
        assert list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key], device)
    elif isinstance(want, Graph):
        assert_same(got.x, want.x, device)
    else:
        assert got == want


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_yields_every_batch_in_order_including_the_last(n):
    batches = [(torch.full((2,), float(k)), torch.tensor(k)) for k in range(n)]
    got = list(prefetch(batches, CPU))
    for received, sent in zip(got, batches, strict=True):
        assert_same(received, sent, CPU)
    assert [int(y) for _, y in got] == list(range(n))


def test_nested_batches_keep_their_structure_and_values():
    batches = nested_batches()
    for received, sent in zip(prefetch(batches, CPU), batches, strict=True):
        assert_same(received, sent, CPU)


def test_off_cuda_batches_are_moved_by_to_device():
    got = list(prefetch(nested_batches(), META))
    assert [t.device for t in (got[0][0], got[1]["x"], got[2].y, got[3][1][0], got[4]["input_ids"])] == [META] * 5
    assert (got[1]["name"], got[3][1][1], type(got[4])) == ("b1", 2, Encoding)


def test_reads_nothing_before_the_first_request_then_exactly_one_batch_ahead():
    source = Counting(range(5))
    batches = prefetch(source, CPU)
    assert source.pulled == 0
    pulled_on_receipt = [(batch, source.pulled) for batch in batches]
    assert pulled_on_receipt == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 5)]


def failing_after(n: int, log: list[str], raised: list[Exception]):
    """Yields batches 0 to n-1, logging each read, then raises for batch n (kept in ``raised``)."""
    for k in range(n):
        log.append(f"read {k}")
        yield torch.tensor([k])
    raised.append(ValueError(f"bad batch {n}"))
    log.append(f"raised {n}")
    raise raised[0]


def test_an_error_reading_ahead_waits_until_its_batch_is_asked_for():
    log, raised = [], []
    batches = prefetch(failing_after(3, log, raised), CPU)
    for _ in range(3):
        log.append(f"received {int(next(batches))}")
    with pytest.raises(ValueError, match=r"^bad batch 3$") as caught:
        next(batches)
    # Raised while batch 2 was being handed over, surfaced only when batch 3 was asked for.
    assert log == ["read 0", "read 1", "received 0", "read 2", "received 1", "raised 3", "received 2"]
    assert caught.value is raised[0]
    assert "failing_after" in [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert next(batches, "done") == "done"


def consume(batches) -> tuple[list[int], str | None]:
    """What a consumer sees: the batches it received, then the error that stopped it, if any."""
    received = []
    try:
        for batch in batches:
            received.append(int(batch))
    except (ValueError, RuntimeError) as err:
        return received, str(err)
    return received, None


@pytest.mark.parametrize("n", [0, 1, 4])
def test_a_consumer_sees_what_it_would_see_without_prefetching(n):
    plain = consume(failing_after(n, [], []))
    assert consume(prefetch(failing_after(n, [], []), CPU)) == plain == (list(range(n)), f"bad batch {n}")


class Refusing:
    """A batch whose ``.to`` fails: moving it ahead must fail as late as moving it in the step would."""

    def to(self, device):
        raise RuntimeError("cannot move batch 2")


def test_an_error_moving_ahead_also_waits_until_its_batch_is_asked_for():
    source = Counting([torch.tensor(0), torch.tensor(1), Refusing(), torch.tensor(3)])
    assert consume(prefetch(source, CPU)) == ([0, 1], "cannot move batch 2")
    assert source.pulled == 3


def test_a_consumer_that_breaks_has_had_exactly_one_batch_more_read():
    source = Counting(range(10))
    batches = prefetch(source, CPU)
    for received in batches:
        if received == 1:
            break
    batches.close()
    assert (received, source.pulled) == (1, 3)
    assert next(batches, "closed") == "closed"
    assert (next(source), source.pulled) == (3, 4)


def test_islice_over_a_shared_iterator_advances_it_exactly_n_times_per_pass():
    shared = Counting(range(100))
    passes = []
    for _ in range(3):
        passes.append(list(prefetch(itertools.islice(shared, 4), CPU)))
        passes[-1].append(shared.pulled)
    assert passes == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9, 10, 11, 12]]


class Restarting:
    """Raises StopIteration after ``n`` items, and would hand out more if asked again."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.calls += 1
        if self.calls == self.n + 1:
            raise StopIteration
        return self.calls


def test_stop_iteration_from_the_iterator_ends_the_pass_normally_and_is_not_asked_past():
    source = Restarting(2)
    assert list(prefetch(source, CPU)) == [1, 2]
    assert source.calls == 3


def test_a_one_shot_iterator_is_read_once():
    source = iter([torch.tensor(5)])
    assert [int(b) for b in prefetch(source, CPU)] == [5]
    assert list(prefetch(source, CPU)) == []


@pytest.fixture
def fake_cuda(monkeypatch):
    """Streams, pinning, copies and record_stream on CPU tensors, all logged: the CUDA path's order, without a GPU."""
    log: list[str] = []

    class Stream:
        def __init__(self, name: str) -> None:
            self.name = name

        def wait_stream(self, other):
            log.append(f"{self.name} waits for {other.name}")

    current = [Stream("consumer")]

    @contextlib.contextmanager
    def use(stream):
        current.append(stream)
        try:
            yield
        finally:
            current.pop()

    def pin(tensor):
        log.append(f"pin {int(tensor)}")
        pinned = tensor.clone()
        pinned.fake_pinned = True
        return pinned

    def copy(tensor, device, non_blocking=False):
        log.append(f"copy {int(tensor)} on {current[-1].name}, non_blocking={non_blocking}")
        return tensor.clone()

    side = Stream("side")
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: side)
    monkeypatch.setattr(torch.cuda, "stream", use)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: current[-1])
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda tensor: getattr(tensor, "fake_pinned", False))
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.Tensor, "to", copy)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: log.append(f"record {int(t)} on {s.name}"))
    return log


def test_on_cuda_each_batch_is_waited_for_and_guarded_before_the_next_copy_is_issued(fake_cuda):
    log = fake_cuda
    already_pinned = torch.tensor(1)
    already_pinned.fake_pinned = True
    for batch in prefetch([(torch.tensor(0), "a"), (already_pinned, None)], torch.device("cuda", 0)):
        log.append(f"step {int(batch[0])}, {batch[1]}")
    assert log == [
        "pin 0",
        "copy 0 on side, non_blocking=True",
        "consumer waits for side",
        "record 0 on consumer",
        "copy 1 on side, non_blocking=True",
        "step 0, a",
        "consumer waits for side",
        "record 1 on consumer",
        "step 1, None",
    ]


def test_on_cuda_objects_with_their_own_to_keep_their_type_and_only_visible_tensors_use_the_side_stream(fake_cuda):
    log = fake_cuda
    batches = [Encoding(ids=torch.tensor(0), label="e"), Graph(torch.tensor(1))]
    received = list(prefetch(batches, torch.device("cuda", 0)))
    assert [type(batch) for batch in received] == [Encoding, Graph]
    assert (int(received[0]["ids"]), received[0]["label"], int(received[1].x)) == (0, "e", 1)
    # A Graph hides its tensors from record_stream, so it is copied on the consumer's stream, by its old-style .to.
    assert log == [
        "copy 0 on side, non_blocking=True",
        "consumer waits for side",
        "record 0 on consumer",
        "copy 1 on consumer, non_blocking=False",
        "consumer waits for side",
    ]


@pytest.mark.gpu
@needs_cuda
def test_on_cuda_batches_equal_the_cpu_ones_with_every_tensor_on_the_gpu():
    batches = [*nested_batches(), Graph(torch.arange(3.0)), (torch.arange(4.0).pin_memory(), "pinned")]
    for received, sent in zip(prefetch(batches, CUDA), batches, strict=True):
        assert_same(received, sent, CUDA)
    assert not batches[0][0].is_pinned()  # the loader's tensors are not pinned in place


@pytest.mark.gpu
@needs_cuda
def test_on_cuda_tensors_already_there_are_left_as_they_are():
    on_gpu = torch.arange(3.0, device=CUDA)
    (received, moved), *_ = prefetch([(on_gpu, torch.arange(2.0))], CUDA)
    assert received is on_gpu
    assert moved.is_cuda and moved.tolist() == [0.0, 1.0]


@pytest.mark.gpu
@needs_cuda
def test_on_cuda_a_consumer_behind_the_copies_sums_what_plain_to_gives():
    # 4 MB batches filled with k: a copy landing in memory the consumer's stream has not read yet changes a sum.
    source = [torch.full((1024, 1024), float(k)) for k in range(16)]

    def sums(batches) -> list[float]:
        totals = []
        for x in batches:
            # Private, but the plainest way to hold the consumer's stream back so that the copies run ahead of it.
            torch.cuda._sleep(1_000_000)
            totals.append(x.sum())
        return torch.stack(totals).tolist()

    plain = sums(x.to(CUDA) for x in source)
    assert sums(prefetch(source, CUDA)) == plain == [k * 1024.0 * 1024.0 for k in range(16)]


# Through KerasModel: prefetch=True on CPU runs the same read-ahead as on CUDA, without the streams.


class Reads(torch.utils.data.Dataset):
    """24 samples of a linear target; logs each read, so a test can tell how far the loader is ahead of the steps."""

    def __init__(self, log: list[str], fail_at: int | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(24, 3, generator=generator)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]])
        self.log, self.fail_at = log, fail_at

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        if index == self.fail_at:
            raise ValueError(f"bad sample {index}")
        self.log.append(f"read {index // 4}")  # batches of 4, unshuffled: sample index // 4 is the batch
        return self.x[index], self.y[index]


class StepLog(Callback):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def on_train_batch_begin(self, model, logs):
        self.log.append(f"step {logs['batch']}")


def _fit(prefetch, log, **fit_args):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    model = KerasModel(
        net, torch.nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.05), device="cpu", prefetch=prefetch
    )
    loader = torch.utils.data.DataLoader(Reads(log), batch_size=4)
    history = model.fit(loader, epochs=2, verbose=0, callbacks=[StepLog(log)], **fit_args)
    return model, history


def _reads_before_steps(log: list[str]) -> list[int]:
    """For each step of the first epoch, how many batches the loader had read when the step began."""
    read, counts = 0, []
    for event in log:
        kind, number = event.split()
        if kind == "read":
            read = max(read, int(number) + 1)
        else:
            counts.append(read)
    return counts[:6]


def test_a_fit_with_prefetch_reads_one_batch_ahead_and_trains_exactly_as_without(tmp_path):
    plain_log, ahead_log = [], []
    plain, plain_history = _fit(False, plain_log)
    ahead, ahead_history = _fit(True, ahead_log)
    assert _reads_before_steps(plain_log) == [1, 2, 3, 4, 5, 6]
    assert _reads_before_steps(ahead_log) == [2, 3, 4, 5, 6, 6]
    assert ahead_history["train_loss"].tolist() == plain_history["train_loss"].tolist()
    assert torch.equal(ahead.net.weight, plain.net.weight)
    loader = torch.utils.data.DataLoader(Reads([]), batch_size=4)
    assert torch.equal(ahead.predict(loader), plain.predict(loader))


def test_a_pass_that_writes_the_run_state_within_it_reads_in_step(tmp_path):
    log = []
    _fit(True, log, state_path=tmp_path / "state.pt", state_every_n_steps=2)
    assert _reads_before_steps(log) == [1, 2, 3, 4, 5, 6]


def test_a_loader_error_still_comes_after_the_batches_before_it():
    log = []
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    model = KerasModel(net, torch.nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.05), prefetch=True)
    loader = torch.utils.data.DataLoader(Reads(log, fail_at=9), batch_size=4)
    with pytest.raises(ValueError, match="bad sample 9"):
        model.fit(loader, epochs=1, verbose=0, callbacks=[StepLog(log)])
    assert [event for event in log if event.startswith("step")] == ["step 0", "step 1"]


def test_prefetch_is_on_for_cuda_only_unless_asked_and_must_be_a_bool():
    net = torch.nn.Linear(3, 1)
    assert KerasModel(net, torch.nn.MSELoss(), device="cpu").prefetch is False
    assert KerasModel(net, torch.nn.MSELoss(), device="cpu", prefetch=True).prefetch is True
    with pytest.raises(ValueError, match=r"prefetch='yes' is not valid; use True or False"):
        KerasModel(net, torch.nn.MSELoss(), device="cpu", prefetch="yes")
