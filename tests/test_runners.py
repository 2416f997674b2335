"""StepRunner and EpochRunner: batch conventions, custom steps, loaders without length, modes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from kerasish import Callback, KerasModel, StepRunner, progress
from kerasish.metrics import MetricSet
from tests.helpers import TwoTowerModel, regression_batches

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


def test_a_loader_over_an_iterable_dataset_trains_and_shows_a_bar_without_total(capsys, monkeypatch):
    monkeypatch.setattr(progress, "BAR_DELAY_SECONDS", 0.0)  # draw even these millisecond passes
    monkeypatch.setattr(progress, "bars_wanted", lambda: True)  # as on a terminal; capsys's stderr is not one
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


class Keeps:
    """A plain stateful metric that keeps a result computed from the preds, to see whether a step's graph came along."""

    def __init__(self) -> None:
        self.seen: list = []

    def update(self, preds, labels) -> None:
        if isinstance(preds, dict):
            self.seen.append({key: value * 2 for key, value in preds.items()})
        else:
            self.seen.append(preds * 2 if isinstance(preds, torch.Tensor) else tuple(value * 2 for value in preds))

    def compute(self) -> torch.Tensor:
        return torch.tensor(float(len(self.seen)))

    def reset(self) -> None:
        self.seen = []


@pytest.mark.parametrize(
    "output", [lambda out: out, lambda out: {"logits": out}, lambda out: (out, out)], ids=["tensor", "dict", "tuple"]
)
def test_train_steps_hand_the_metrics_preds_without_the_graph(output):
    class Net(nn.Linear):
        def forward(self, x):
            return output(super().forward(x))

    class Sum(StepRunner):
        def compute_loss(self, batch):
            x, y = batch
            preds = self.net(x)
            first = preds[0] if isinstance(preds, tuple) else preds
            first = first["logits"] if isinstance(first, dict) else first
            return F.mse_loss(first, y), preds, y

    net = Net(3, 1)
    metrics = MetricSet({"kept": Keeps()}, torch.device("cpu"))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    step = Sum(net, None, stage="train", metrics=metrics, device=torch.device("cpu"), optimizer=opt)
    step(regression_batches(n=4, batch_size=4)[0])
    (seen,) = metrics.stateful["kept"].seen
    leaves = [seen] if isinstance(seen, torch.Tensor) else list(seen.values() if isinstance(seen, dict) else seen)
    assert [leaf.requires_grad for leaf in leaves] == [False] * len(leaves)


# --- step controls: gradient accumulation and clipping ---------------------------------------------------------------


def _micro_and_macro(n: int, batch: int, window: int):
    """``n`` samples in micro-batches of ``batch`` (the last one short), and the same samples with each window of
    ``window`` micro-batches joined into one macro-batch."""
    x = torch.randn(n, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3 * torch.randn(n, 1)
    micro = [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]
    macro = [
        (torch.cat([b[0] for b in micro[i : i + window]]), torch.cat([b[1] for b in micro[i : i + window]]))
        for i in range(0, len(micro), window)
    ]
    return micro, macro


def _sgd_model(net: nn.Module, **kwargs) -> KerasModel:
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    return KerasModel(net, nn.MSELoss(), optimizer=opt, device="cpu", **kwargs)


@pytest.mark.parametrize("window", [2, 3, 4])
@pytest.mark.parametrize("clip", [{}, {"clip_grad_norm": 0.05}])
def test_accumulated_gradients_equal_one_batch_holding_the_window(window, clip):
    # 10 samples in batches of 3: 3, 3, 3, 1. Windows of 2 are [3, 3] and [3, 1]; of 3, [3, 3, 3] and a partial [1];
    # of 4, one window of everything. Each must step like one batch of all its samples.
    micro, macro = _micro_and_macro(n=10, batch=3, window=window)
    accumulated, joined = nn.Linear(3, 1), nn.Linear(3, 1)
    joined.load_state_dict(accumulated.state_dict())
    history_a = _sgd_model(accumulated, accumulate_grad_batches=window, **clip).fit(micro, epochs=3, verbose=0)
    history_j = _sgd_model(joined, **clip).fit(macro, epochs=3, verbose=0)
    for a, j in zip(accumulated.parameters(), joined.parameters(), strict=True):
        torch.testing.assert_close(a, j, rtol=1e-5, atol=1e-6)
    assert history_a["train_loss"].tolist() == pytest.approx(history_j["train_loss"].tolist(), rel=1e-5)


def test_plain_mean_of_batch_gradients_would_differ_from_the_window_gradient():
    # The guard for the test above: the short last batch makes a plain average of batch gradients a different step.
    micro, macro = _micro_and_macro(n=10, batch=3, window=2)
    net = nn.Linear(3, 1)
    by_window = torch.autograd.grad(F.mse_loss(net(macro[1][0]), macro[1][1]), net.weight)[0]
    by_batch = [torch.autograd.grad(F.mse_loss(net(x), y), net.weight)[0] for x, y in micro[2:]]
    assert not torch.allclose(by_window, sum(by_batch) / 2, rtol=1e-3)


def test_scheduler_and_optimizer_counters_count_optimizer_steps_not_batches():
    micro, _ = _micro_and_macro(n=10, batch=3, window=3)  # 4 batches, windows of 3: 2 optimizer steps per epoch
    net = nn.Linear(3, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model = KerasModel(
        net, nn.MSELoss(), optimizer=opt, lr_scheduler=sched, scheduler_interval="step", accumulate_grad_batches=3
    )
    history = model.fit(micro, epochs=3, verbose=0)
    assert sched.last_epoch == 6
    assert opt.state[net.weight]["step"].item() == 6
    # lr is what each epoch's first optimizer step used: halved twice per epoch.
    assert history["lr"].tolist() == pytest.approx([0.1, 0.025, 0.00625])


def test_clip_grad_norm_limits_the_step_to_the_norm_along_the_gradient():
    x, y = torch.randn(8, 3), 100 * torch.ones(8, 1)  # a large loss: the raw gradient norm is far above 0.01
    net = nn.Linear(3, 1)
    before = [p.detach().clone() for p in net.parameters()]
    raw = torch.autograd.grad(F.mse_loss(net(x), y), list(net.parameters()))
    model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=1.0), clip_grad_norm=0.01)
    model.fit([(x, y)], epochs=1, verbose=0)
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, net.parameters(), strict=True)])
    raw = torch.cat([g.flatten() for g in raw])
    assert step.norm().item() == pytest.approx(0.01, rel=1e-4)
    assert F.cosine_similarity(step, raw, dim=0).item() == pytest.approx(1.0, abs=1e-6)


def test_clip_grad_value_clamps_each_gradient_element():
    x, y = torch.randn(8, 3), 10 * torch.randn(8, 1)
    net = nn.Linear(3, 1)
    before = [p.detach().clone() for p in net.parameters()]
    raw = torch.autograd.grad(F.mse_loss(net(x), y), list(net.parameters()))
    assert max(g.abs().max().item() for g in raw) > 0.5  # so the clamp has something to do
    model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=1.0), clip_grad_value=0.5)
    model.fit([(x, y)], epochs=1, verbose=0)
    for b, p, g in zip(before, net.parameters(), raw, strict=True):
        torch.testing.assert_close(b - p.detach(), g.clamp(-0.5, 0.5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"accumulate_grad_batches": 0}, r"accumulate_grad_batches=0 is not valid; use an int >= 1"),
        ({"accumulate_grad_batches": 2.0}, r"accumulate_grad_batches=2.0 is not valid"),
        ({"clip_grad_norm": 0}, r"clip_grad_norm=0 is not valid; use a number > 0, or None"),
        ({"clip_grad_value": -1.0}, r"clip_grad_value=-1.0 is not valid"),
        ({"clip_grad_norm": True}, r"clip_grad_norm=True is not valid"),
    ],
)
def test_bad_step_controls_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu", **kwargs)


def test_a_batch_hook_that_sets_stop_training_ends_the_train_pass_after_that_batch():
    seen = []

    class StopAtBatch2(Callback):
        def on_train_batch_end(self, model, logs):
            seen.append((logs["epoch"], logs["batch"]))
            if logs["batch"] == 1:
                model.stop_training = True

    data = regression_batches(n=20, batch_size=4)  # 5 batches
    history = KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu").fit(
        data, data, epochs=3, callbacks=[StopAtBatch2()], verbose=0
    )
    assert seen == [(1, 0), (1, 1)]
    assert history["epoch"].tolist() == [1]  # the epoch still gets its row, with a val pass
    assert history["val_loss"].notna().all()


def test_a_stop_set_in_on_train_batch_begin_ends_the_pass_after_that_batch_too():
    steps = []

    class StopBeforeBatch2(Callback):
        def on_train_batch_begin(self, model, logs):
            if logs["batch"] == 1:
                model.stop_training = True

    class CountSteps(StepRunner):
        def compute_loss(self, batch):
            if self.stage == "train":
                steps.append(len(batch[0]))
            return super().compute_loss(batch)

    class Model(KerasModel):
        StepRunner = CountSteps

    data = regression_batches(n=20, batch_size=4)  # 5 batches
    history = Model(nn.Linear(3, 1), nn.MSELoss(), device="cpu").fit(
        data, data, epochs=3, callbacks=[StopBeforeBatch2()], verbose=0
    )
    assert steps == [4, 4]  # batch 0, then batch 1 (whose begin hook asked), then the pass ends
    assert history["epoch"].tolist() == [1]


def test_a_fit_stopping_in_the_train_pass_still_runs_the_whole_val_pass_with_its_batch_hooks():
    val_batches = []

    class StopAtOnce(Callback):
        def on_train_batch_end(self, model, logs):
            model.stop_training = True

        def on_val_batch_end(self, model, logs):
            val_batches.append(logs["batch"])

    data = regression_batches(n=20, batch_size=4)  # 5 batches
    KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu").fit(
        data, data, epochs=2, callbacks=[StopAtOnce()], verbose=0
    )
    assert val_batches == [0, 1, 2, 3, 4]
