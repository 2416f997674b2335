"""Exact resume within a pass of torchdata's StatefulDataLoader: the loader's own state_dict says where the fit is."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset
from torchmetrics import MeanSquaredError

from kerasish import KerasModel
from tests.helpers import X40, Y40, Counted, Interrupt

stateful_dataloader = pytest.importorskip("torchdata.stateful_dataloader")
StatefulDataLoader = stateful_dataloader.StatefulDataLoader

# torchdata 0.11 calls torch.set_vital when a StatefulDataLoader is made, which torch 2.13 warns is deprecated (a
# UserWarning, once per loader); nothing to act on here.
pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")

X, Y = X40, Y40


class CountedStream(IterableDataset):
    """The 40 samples as a stream, each pass in an order of its own, with its position as a ``state_dict``.

    The pass number is the stream's own state, carried from one pass to the next (as a data set that calls its
    own ``set_epoch`` would), so a resumed run must restore it at a pass boundary as well as within a pass.
    """

    def __init__(self) -> None:
        self.reads: list[int] = []
        self.passes, self.position = 0, 0

    def __iter__(self):
        self.passes, self.position = self.passes + 1, 0
        return self

    def _order(self) -> list[int]:
        return torch.randperm(len(X), generator=torch.Generator().manual_seed(100 + self.passes)).tolist()

    def __next__(self):
        if self.position == len(X):
            raise StopIteration
        index = self._order()[self.position]
        self.position += 1
        self.reads.append(index)
        return X[index], Y[index]

    def state_dict(self) -> dict[str, int]:
        return {"passes": self.passes, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.passes, self.position = state["passes"], state["position"]


def loader(data: Dataset, sampling: str = "shuffle") -> StatefulDataLoader:
    """7 batches of 6 (the last of 4) a pass, in a new order every pass."""
    if sampling == "shuffle":
        return StatefulDataLoader(data, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(5))
    if sampling == "workers":  # which read ahead of the batches taken
        return StatefulDataLoader(data, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(5),
                                  num_workers=2, prefetch_factor=2)  # fmt: skip
    if sampling == "own generator":  # the sampler's, seeded from torch's when the loader is made
        return StatefulDataLoader(data, batch_size=6, shuffle=True)
    if sampling == "distributed":  # reshuffled by set_epoch, which kerasish calls before each pass
        return StatefulDataLoader(data, batch_size=6, sampler=DistributedSampler(data, num_replicas=1, rank=0, seed=5))
    return StatefulDataLoader(data, batch_size=6)  # a stream: the order is the data set's


def make_model() -> KerasModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    return KerasModel(net, nn.MSELoss(), {"mse": MeanSquaredError()}, optimizer, accumulate_grad_batches=2,
                      device="cpu")  # fmt: skip


def cut_and_resume(tmp_path, make_data, sampling: str, steps_per_epoch: int | None, cut: int):
    """An uninterrupted fit, and one cut before batch ``cut`` then resumed by a fresh model and loader.

    Returns the two fits' data sets and models, the resumed run's history and the uninterrupted one's, the cut run's
    data set and its saved state. A window of 2 batches a step, a state every 2 steps and at each epoch end (without
    steps_per_epoch: after batches 3 and 10, 0-based, and after 6, the end of pass 1).
    """
    fit_args = {"epochs": 3, "steps_per_epoch": steps_per_epoch, "state_every_n_steps": 2, "verbose": 0}
    val = [(X[:10], Y[:10])]
    whole_data, whole = make_data(), make_model()
    expected = whole.fit(loader(whole_data, sampling), val, state_path=tmp_path / "whole.pt", **fit_args)

    first_data, second_data = make_data(), make_data()
    with pytest.raises(KeyboardInterrupt):
        make_model().fit(loader(first_data, sampling), val, state_path=tmp_path / "cut.pt",
                         callbacks=[Interrupt(at=cut)], **fit_args)  # fmt: skip
    saved = torch.load(tmp_path / "cut.pt", weights_only=True)  # the loader's state is plain values and tensors
    resumed = make_model()
    history = resumed.fit(loader(second_data, sampling), val, state_path=tmp_path / "cut.pt", resume=True,
                          callbacks=[Interrupt(at=-1)], **fit_args)  # fmt: skip
    return (whole_data, whole, expected), (second_data, resumed, history), (first_data, saved)


def assert_same_run_reading_only_what_was_left(whole_run, resumed_run, cut_data) -> None:
    (whole_data, whole, expected), (second_data, resumed, history) = whole_run, resumed_run
    assert history.drop(columns="time").equals(expected.drop(columns="time"))
    for mine, theirs in zip(resumed.net.state_dict().values(), whole.net.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    trained_before = len(whole_data.reads) - len(second_data.reads)
    assert second_data.reads == whole_data.reads[trained_before:]  # the resumed run reads only what was left ...
    assert len(cut_data.reads) > trained_before  # ... though the cut run had read past its state
    assert cut_data.reads == whole_data.reads[: len(cut_data.reads)]


@pytest.mark.parametrize(
    ("sampling", "steps_per_epoch", "cut", "passes", "position"),
    [
        ("shuffle", None, 11, 2, 4),  # within pass 2, 4 batches taken
        ("shuffle", None, 8, 1, None),  # at the boundary after pass 1: no loader state
        ("shuffle", 5, 6, 1, 5),  # epochs of 5 over passes of 7: the epoch-1 end is within pass 1 ...
        ("shuffle", 5, 7, 1, 7),  # ... and 2 batches on, its end, before the loader has said that it ended
        ("own generator", None, 11, 2, 4),
        ("distributed", None, 11, 2, 4),  # pass 2 goes on in the order set_epoch(2) gave it
        ("distributed", 5, 12, 2, 3),
    ],
)
def test_a_stateful_loader_resumes_bit_for_bit_without_reading_a_consumed_sample_again(
    tmp_path, sampling, steps_per_epoch, cut, passes, position
):
    whole_run, resumed_run, (cut_data, saved) = cut_and_resume(tmp_path, Counted, sampling, steps_per_epoch, cut)
    cursor = saved["cursor"]
    yielded = None if cursor["loader"] is None else cursor["loader"]["_num_yielded"]
    assert (cursor["passes"], yielded, cursor["position"]) == (passes, position, position or 0)
    assert cursor["pass_start"] is None and cursor["dataset"] is None  # nothing laid out; Counted has no state
    assert_same_run_reading_only_what_was_left(whole_run, resumed_run, cut_data)


def test_with_workers_reading_ahead_the_state_is_still_that_after_the_last_batch_trained(tmp_path):
    # The samples are read in the worker processes, out of this one's count: only the outcome is compared.
    (_, whole, expected), (_, resumed, history), (_, saved) = cut_and_resume(tmp_path, Counted, "workers", None, 11)
    assert saved["cursor"]["loader"]["_snapshot"]["_snapshot_step"] == 4  # batches taken from pass 2, not read
    assert history.drop(columns="time").equals(expected.drop(columns="time"))
    for mine, theirs in zip(resumed.net.state_dict().values(), whole.net.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize(("cut", "in_pass"), [(11, True), (8, False)])
def test_a_stateful_stream_resumes_from_its_own_state_within_a_pass_and_between_two(tmp_path, cut, in_pass):
    whole_run, resumed_run, (cut_data, saved) = cut_and_resume(tmp_path, CountedStream, "stream", None, cut)
    cursor = saved["cursor"]
    assert (cursor["loader"] is not None, cursor["dataset"]) == (
        in_pass,
        None if in_pass else {"passes": 1, "position": 40},
    )
    assert_same_run_reading_only_what_was_left(whole_run, resumed_run, cut_data)
    whole_data = whole_run[0]
    assert whole_data.reads[:40] != whole_data.reads[40:80]  # a pass order of its own: the boundary state mattered


def test_a_run_saved_with_a_plain_loader_is_not_resumed_with_a_stateful_one(tmp_path):
    plain = DataLoader(Counted(), batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(5))
    make_model().fit(plain, epochs=2, steps_per_epoch=3, state_path=tmp_path / "s.pt", verbose=0)
    message = (
        r"^the saved run's train_data does not keep its own position \(state_dict and load_state_dict, as "
        r"torchdata's StatefulDataLoader does\) and this fit's, a StatefulDataLoader, does; resume with the same kind "
        r"of train_data$"
    )
    with pytest.raises(ValueError, match=message):
        make_model().fit(loader(Counted()), epochs=3, steps_per_epoch=3, state_path=tmp_path / "s.pt", resume=True,
                         verbose=0)  # fmt: skip


def test_a_plain_stream_is_refused_naming_the_stateful_loader_as_a_way_out(tmp_path):
    with pytest.raises(ValueError, match=r"a list of batches, or a loader with state_dict and load_state_dict "
                       r"\(torchdata's StatefulDataLoader\), or fit without state_path$"):  # fmt: skip
        make_model().fit(DataLoader(CountedStream(), batch_size=6), epochs=2, steps_per_epoch=3,
                         state_path=tmp_path / "s.pt", verbose=0)  # fmt: skip
