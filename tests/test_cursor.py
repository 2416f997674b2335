"""Long runs: epochs of steps_per_epoch batches over endless or finite data, short val passes, exact resume."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torchmetrics import MeanSquaredError

from kerasish import Callback, KerasModel
from tests.helpers import X40, Y40, Counted, Interrupt

X, Y = X40, Y40


class Endless(IterableDataset):
    """A stream without end: a fresh random regression sample every time."""

    def __iter__(self):
        generator = torch.Generator().manual_seed(1)
        while True:
            x = torch.randn(3, generator=generator)
            yield x, (x * torch.tensor([1.0, -2.0, 0.5])).sum(0, keepdim=True)


def model_with_dropout(seed: int = 0) -> KerasModel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))
    return KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.05), device="cpu")


def test_an_endless_stream_trains_in_epochs_of_steps_per_epoch_and_stops_early():
    seen = []

    class Steps(Callback):
        def on_train_batch_end(self, model, logs):
            seen.append((logs["epoch"], logs["batch"]))

    model = model_with_dropout()
    stream = DataLoader(Endless(), batch_size=4)
    history = model.fit(stream, epochs=50, steps_per_epoch=5, patience=2, min_delta=10.0, callbacks=[Steps()],
                        verbose=0)  # fmt: skip
    assert history["epoch"].tolist() == [1, 2, 3]  # min_delta=10: only epoch 1 improves, patience 2 stops at 3
    assert seen == [(epoch, batch) for epoch in (1, 2, 3) for batch in range(5)]


def test_the_iterator_carries_over_between_epochs_and_a_new_pass_reshuffles():
    data = Counted()
    loader = DataLoader(data, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(3))  # 4 batches
    model_with_dropout().fit(loader, epochs=3, steps_per_epoch=3, verbose=0)  # 9 batches: passes of 4, 4, then 1
    first, second, third = data.reads[:40], data.reads[40:80], data.reads[80:]
    assert sorted(first) == sorted(second) == list(range(40)) and len(third) == 10
    assert first != second  # the second pass is reshuffled ...
    replay = torch.Generator().manual_seed(3)
    expected = [list(DataLoader(range(40), batch_size=10, shuffle=True, generator=replay)) for _ in range(3)]
    assert first == [int(i) for batch in expected[0] for i in batch]  # ... as fresh passes of the loader would be
    assert second == [int(i) for batch in expected[1] for i in batch]
    assert third == [int(i) for i in expected[2][0]]


def test_validation_steps_reads_only_that_many_val_batches_and_reports_them():
    data = Counted()
    val = DataLoader(data, batch_size=8)  # 5 batches
    model = model_with_dropout()
    history = model.fit([(X[:8], Y[:8])], val, epochs=2, validation_steps=2, verbose=0)
    assert data.reads == list(range(16)) * 2  # two val passes of two batches each
    expected = model.evaluate(list(itertools.islice(DataLoader(list(zip(X, Y, strict=True)), batch_size=8), 2)))
    assert history["val_loss"].iloc[-1] == pytest.approx(expected["val_loss"], rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps_per_epoch": 0}, ValueError, r"^steps_per_epoch=0 is not valid; use an int >= 1$"),
        ({"steps_per_epoch": 2.5}, ValueError, r"^steps_per_epoch=2.5 is not valid"),
        ({"validation_steps": True}, ValueError, r"^validation_steps=True is not valid"),
        ({"validation_steps": 2, "val": False}, ValueError, r"^validation_steps=2 needs val_data, but val_data is"),
    ],
)
def test_bad_long_run_arguments_are_named(kwargs, error, match):
    val = None if kwargs.pop("val", True) is False else [(X, Y)]
    with pytest.raises(error, match=match):
        model_with_dropout().fit([(X, Y)], val, epochs=1, verbose=0, **kwargs)


def test_a_stream_whose_position_cannot_be_saved_is_refused_with_state_path(tmp_path):
    with pytest.raises(ValueError, match=r"^train_data is a DataLoader over an Endless, whose position within a pass "
                       r"cannot be saved"):  # fmt: skip
        model_with_dropout().fit(DataLoader(Endless(), batch_size=4), epochs=2, steps_per_epoch=3,
                                 state_path=tmp_path / "state.pt", verbose=0)  # fmt: skip
    assert not (tmp_path / "state.pt").exists()


def shuffled(data: Dataset) -> DataLoader:
    return DataLoader(data, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(5))  # 7 batches


def test_a_run_of_steps_per_epoch_resumes_bit_for_bit_without_reading_a_consumed_sample_again(tmp_path):
    # Epochs of 3 batches over passes of 7: the saved epoch ends inside a pass, so the resumed run must go on from
    # the middle of that pass, with dropout's and the loader's random states as they were.
    whole_data = Counted()
    whole = model_with_dropout()
    expected = whole.fit(shuffled(whole_data), epochs=6, steps_per_epoch=3, state_path=tmp_path / "whole.pt", verbose=0)

    first_data, second_data = Counted(), Counted()
    model_with_dropout().fit(shuffled(first_data), epochs=4, steps_per_epoch=3, state_path=tmp_path / "cut.pt",
                             verbose=0)  # fmt: skip
    resumed = model_with_dropout()
    history = resumed.fit(shuffled(second_data), epochs=6, steps_per_epoch=3, state_path=tmp_path / "cut.pt",
                          resume=True, verbose=0)  # fmt: skip

    assert history.drop(columns="time").equals(expected.drop(columns="time"))
    for mine, theirs in zip(resumed.net.state_dict().values(), whole.net.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    assert first_data.reads + second_data.reads == whole_data.reads  # every sample read once, in the same order


def test_a_different_steps_per_epoch_on_resume_is_refused(tmp_path):
    model_with_dropout().fit(shuffled(Counted()), epochs=2, steps_per_epoch=3, state_path=tmp_path / "s.pt", verbose=0)
    with pytest.raises(ValueError, match=r"the saved run's steps_per_epoch were 3, this fit's are 4"):
        model_with_dropout().fit(shuffled(Counted()), epochs=4, steps_per_epoch=4, state_path=tmp_path / "s.pt",
                                 resume=True, verbose=0)  # fmt: skip


# --- the run state written within a pass: state_every_n_steps ------------------------------------------------------


def accuracy_like(preds, labels):
    return (preds - labels).abs().mean()


accuracy_like.higher_is_better = False


def within_pass_model(seed: int = 0) -> KerasModel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))
    metrics = {"mae": accuracy_like, "mse": MeanSquaredError()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    return KerasModel(net, nn.MSELoss(), metrics, optimizer, accumulate_grad_batches=2, device="cpu")


@pytest.mark.parametrize(("steps_per_epoch", "cut"), [(None, 11), (5, 7)])
def test_a_run_saved_within_a_pass_goes_on_from_that_batch_bit_for_bit(tmp_path, steps_per_epoch, cut):
    # 7 batches a pass, a window of 2 batches a step (a pass's short last window stepped at its end), a state
    # every 2 steps. The first run is cut before batch ``cut`` (0-based) would train: just after the state written
    # within epoch 2, with that batch read but not trained.
    fit_args = {"epochs": 3, "steps_per_epoch": steps_per_epoch, "state_every_n_steps": 2, "verbose": 0}
    val = [(X[:10], Y[:10])]
    whole_data = Counted()
    whole = within_pass_model()
    expected = whole.fit(shuffled(whole_data), val, state_path=tmp_path / "whole.pt", **fit_args)

    first_data, second_data = Counted(), Counted()
    with pytest.raises(KeyboardInterrupt):
        within_pass_model().fit(shuffled(first_data), val, state_path=tmp_path / "cut.pt",
                                callbacks=[Interrupt(at=cut)], **fit_args)  # fmt: skip
    saved = torch.load(tmp_path / "cut.pt", weights_only=True)
    assert (saved["epoch"], saved["in_epoch"]["epoch"]) == (1, 2)
    resumed = within_pass_model()
    history = resumed.fit(shuffled(second_data), val, state_path=tmp_path / "cut.pt", resume=True,
                          callbacks=[Interrupt(at=-1)], **fit_args)  # fmt: skip

    assert history.drop(columns="time").equals(expected.drop(columns="time"))
    for mine, theirs in zip(resumed.net.state_dict().values(), whole.net.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    trained_before = len(whole_data.reads) - len(second_data.reads)
    assert second_data.reads == whole_data.reads[trained_before:]  # the resumed run reads only what was left ...
    assert first_data.reads[:trained_before] == whole_data.reads[:trained_before]
    assert 0 < len(first_data.reads) - trained_before <= 6  # ... and the cut run had read one batch past its state


def test_saving_positions_changes_nothing_in_what_is_trained_on(tmp_path):
    # The positioned cursor notes where it is; the passes are the loader's own, drawn in the loader's own order.
    plain = within_pass_model().fit(shuffled(Counted()), epochs=3, steps_per_epoch=5, verbose=0)
    saved = within_pass_model().fit(shuffled(Counted()), epochs=3, steps_per_epoch=5, state_every_n_steps=2,
                                    state_path=tmp_path / "s.pt", verbose=0)  # fmt: skip
    assert saved.drop(columns="time").equals(plain.drop(columns="time"))
