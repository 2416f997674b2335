"""StepRunner and EpochRunner: batch conventions, custom steps, loaders without length, modes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from kerasish import KerasModel, StepRunner
from kerasish.metrics import MetricSet
from tests.helpers import regression_batches

TRUE_W, TRUE_B = torch.tensor([2.0, -3.4]), 4.2


class LinearDicts(Dataset):
    """Samples of y = 2·x1 − 3.4·x2 + 4.2 (+ small noise), as dicts with ``inputs`` and ``labels``."""

    def __init__(self, n: int = 1000) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 2, generator=g)
        self.y = self.x @ TRUE_W + TRUE_B + 0.01 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"inputs": self.x[i], "labels": self.y[i]}


class HFRegressor(nn.Module):
    """A Hugging Face-style model: ``forward(inputs, labels=None)`` returns logits, and the loss when given labels."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.linear(inputs).squeeze(-1)
        return {"logits": logits, "loss": None if labels is None else F.mse_loss(logits, labels)}


def test_hf_style_dict_model_trains_unchanged_and_recovers_the_true_weights():
    loader = DataLoader(LinearDicts(), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    net = HFRegressor()
    model = KerasModel(net, loss_fn=None, optimizer=torch.optim.SGD(net.parameters(), lr=0.05), device="cpu")
    history = model.fit(loader, loader, epochs=8, verbose=0)
    assert net.linear.weight.detach().squeeze().round(decimals=2).tolist() == pytest.approx(TRUE_W.tolist())
    assert round(net.linear.bias.item(), 2) == pytest.approx(TRUE_B)
    assert history["val_loss"].iloc[-1] < 2e-4  # the noise variance is 1e-4


def test_dict_batches_with_a_loss_fn_reach_the_net_without_labels():
    seen = []

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, inputs):
            seen.append(inputs.shape)
            return self.linear(inputs).squeeze(-1)

    data = [{"inputs": torch.randn(8, 2), "labels": torch.randn(8)}]
    history = KerasModel(Net(), nn.MSELoss(), device="cpu").fit(data, epochs=1, verbose=0)
    assert seen == [(8, 2)]
    assert history["train_loss"].notna().all()


def test_outputs_with_logits_and_loss_attributes_work_like_mappings():
    @dataclass
    class Output:
        logits: torch.Tensor
        loss: torch.Tensor | None = None

    class Net(HFRegressor):
        def forward(self, inputs, labels=None):
            out = super().forward(inputs, labels)
            return Output(out["logits"], out["loss"])

    data = [{"inputs": torch.randn(8, 2), "labels": torch.randn(8)}]
    model = KerasModel(Net(), device="cpu", metrics_dict={"mae": lambda p, y: (p - y).abs().mean()})
    history = model.fit(data, epochs=1, verbose=0)
    assert history["train_mae"].notna().all()
    assert model.predict(data).shape == (8,)


def test_a_net_without_its_own_loss_says_to_pass_loss_fn():
    with pytest.raises(TypeError, match=r"loss_fn is None, so the net's output must carry the loss"):
        KerasModel(nn.Linear(3, 1), device="cpu").fit(regression_batches(), epochs=1, verbose=0)


class TwoTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8))
        self.doc = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8))


class CosineStep(StepRunner):
    """Scores a (query, doc) pair by the cosine of their embeddings and regresses it on the target similarity."""

    def compute_loss(self, batch):
        query, doc, target = batch
        similarity = F.cosine_similarity(self.net.query(query), self.net.doc(doc))
        return F.mse_loss(similarity, target), similarity, target


class TwoTowerModel(KerasModel):
    StepRunner = CosineStep


def pairs(n: int = 256) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Matching pairs (doc = a fixed rotation of the query, target 1) and random ones (target -1)."""
    g = torch.Generator().manual_seed(2)
    rotation = torch.linalg.qr(torch.randn(8, 8, generator=g))[0]
    query = torch.randn(n, 8, generator=g)
    match = torch.rand(n, generator=g) < 0.5
    doc = torch.where(match.unsqueeze(1), query @ rotation, torch.randn(n, 8, generator=g))
    target = match.float() * 2 - 1
    return [(query[i : i + 32], doc[i : i + 32], target[i : i + 32]) for i in range(0, n, 32)]


def test_a_step_runner_subclass_trains_a_two_tower_cosine_loss():
    data = pairs()
    net = TwoTower()
    model = TwoTowerModel(net, metrics_dict={"mae": lambda s, t: (s - t).abs().mean()}, device="cpu")
    before = model.evaluate(data)
    model.optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    history = model.fit(data, data, epochs=15, verbose=0)
    assert history["val_loss"].min() < 0.25 * before["val_loss"]
    assert history["train_mae"].iloc[-1] < history["train_mae"].iloc[0]


class Stream(IterableDataset):
    """Regression samples produced on the fly, with no length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        g = torch.Generator().manual_seed(3)
        for _ in range(self.n):
            x = torch.randn(3, generator=g)
            yield x, x.sum(0, keepdim=True)


def test_a_loader_over_an_iterable_dataset_trains_and_shows_a_bar_without_total(capsys):
    loader = DataLoader(Stream(40), batch_size=8)
    with pytest.raises(TypeError):
        len(loader)
    model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), optimizer=None, device="cpu")
    history = model.fit(loader, loader, epochs=3, verbose=1)
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    err = capsys.readouterr().err
    assert "epoch 1/3 train: 0it [" in err  # a count with no "/total"


def test_an_empty_iterable_loader_is_an_error_naming_the_stage():
    with pytest.raises(ValueError, match="the train loader yielded no batches"):
        KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu").fit(DataLoader(Stream(0)), epochs=1, verbose=0)


def test_tuples_with_several_inputs_call_the_net_with_each():
    class Sum(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 1), nn.Linear(2, 1)

        def forward(self, x1, x2):
            return self.a(x1) + self.b(x2)

    x1, x2 = torch.randn(16, 3), torch.randn(16, 2)
    data = [(x1[i : i + 4], x2[i : i + 4], x1[i : i + 4].sum(1, keepdim=True)) for i in range(0, 16, 4)]
    model = KerasModel(Sum(), nn.MSELoss(), device="cpu")
    history = model.fit(data, epochs=2, verbose=0)
    assert history["train_loss"].notna().all()
    assert model.predict(data).shape == (16, 1)


def test_passes_switch_train_eval_and_grad_mode_and_restore_them():
    modes = []

    class Spy(nn.Linear):
        def forward(self, x):
            modes.append((self.training, torch.is_grad_enabled()))
            return super().forward(x)

    net = Spy(3, 1).eval()
    data = regression_batches(n=4, batch_size=4)
    KerasModel(net, nn.MSELoss(), device="cpu").fit(data, data, epochs=1, verbose=0)
    assert modes == [(True, True), (False, False)]
    assert not net.training
    assert torch.is_grad_enabled()


def test_step_runner_arguments_are_checked():
    net = nn.Linear(3, 1)
    metrics = MetricSet({}, torch.device("cpu"))
    with pytest.raises(ValueError, match="stage='test' is not valid"):
        StepRunner(net, nn.MSELoss(), stage="test", metrics=metrics, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="a train StepRunner needs an optimizer"):
        StepRunner(net, nn.MSELoss(), stage="train", metrics=metrics, device=torch.device("cpu"))


def test_a_step_returns_the_detached_loss_and_the_batch_size():
    net = nn.Linear(3, 1)
    metrics = MetricSet({}, torch.device("cpu"))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    step = StepRunner(net, nn.MSELoss(), stage="train", metrics=metrics, device=torch.device("cpu"), optimizer=opt)
    x, y = regression_batches(n=4, batch_size=4)[0]
    before = net.weight.detach().clone()
    expected = F.mse_loss(net(x), y).item()
    loss, size = step((x, y))
    assert (loss.item(), size, loss.requires_grad) == (pytest.approx(expected), 4, False)
    assert not torch.equal(before, net.weight)
    assert metrics.samples == 4
