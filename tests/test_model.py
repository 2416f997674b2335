"""KerasModel end to end: history, sample-weighted epochs, best weights, scheduler, output, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from kerasish import Callback, EarlyStopping, EpochRunner, KerasModel, LambdaCallback
from tests.helpers import EpochTag, Recorder, mlp, regression_batches, tagged_linear


def digits_model(net: nn.Module | None = None, **kwargs) -> KerasModel:
    net = net or mlp()
    kwargs.setdefault("optimizer", torch.optim.Adam(net.parameters(), 1e-2))
    metrics = {"acc": MulticlassAccuracy(num_classes=10, average="micro")}
    return KerasModel(net, loss_fn=nn.CrossEntropyLoss(), metrics_dict=metrics, device="cpu", **kwargs)


def frozen_model(net: nn.Module, **kwargs) -> KerasModel:
    """Trains with lr=0, so every pass of an epoch sees the same weights."""
    return KerasModel(net, optimizer=torch.optim.SGD(net.parameters(), lr=0.0), device="cpu", **kwargs)


def scripted(val_losses: list[float], **kwargs) -> KerasModel:
    """A model whose val_loss per epoch is read from ``val_losses``, and whose ``tag`` records each epoch."""
    script = iter(val_losses)

    class ScriptedRunner(EpochRunner):
        def __call__(self, loader, **kw):
            logs = super().__call__(loader, **kw)
            if self.stage == "val":
                logs["val_loss"] = next(script)
            return logs

    class ScriptedModel(KerasModel):
        EpochRunner = ScriptedRunner

    net = tagged_linear()
    kwargs.setdefault("device", "cpu")
    return ScriptedModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.01), **kwargs)


# --- fit, history and the numbers in it ---------------------------------------------------------------------------


def test_fit_learns_digits_and_records_one_row_per_epoch(digits_loaders):
    train_dl, val_dl = digits_loaders
    model = digits_model()
    history = model.fit(train_dl, val_dl, epochs=4, monitor="val_acc", mode="max", verbose=0)
    assert list(history.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time"]
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert history["lr"].tolist() == [0.01] * 4
    assert (history["time"] > 0).all()
    assert history["val_acc"].max() > 0.9
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert model.history is history


def test_evaluate_returns_val_keys_equal_to_the_restored_epoch(digits_loaders):
    train_dl, val_dl = digits_loaders
    model = digits_model()
    history = model.fit(train_dl, val_dl, epochs=4, monitor="val_acc", mode="max", verbose=0)
    scores = model.evaluate(val_dl)
    best = history.loc[history["val_acc"].idxmax()]
    assert set(scores) == {"val_loss", "val_acc"}
    assert scores["val_acc"] == pytest.approx(best["val_acc"])
    assert scores["val_loss"] == pytest.approx(best["val_loss"])


def test_epoch_loss_is_sample_weighted_with_a_short_last_batch():
    batches = regression_batches(n=10, batch_size=4)  # sizes 4, 4, 2
    net = nn.Linear(3, 1)
    model = frozen_model(net, loss_fn=nn.MSELoss())
    history = model.fit(batches, batches, epochs=1, verbose=0)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with torch.no_grad():
        full = nn.functional.mse_loss(net(x), y).item()
        batch_mean = sum(nn.functional.mse_loss(net(bx), by).item() for bx, by in batches) / len(batches)
    assert batch_mean != pytest.approx(full, rel=1e-3)  # the data can tell the two means apart
    assert history["train_loss"].item() == pytest.approx(full, rel=1e-6)
    assert history["val_loss"].item() == pytest.approx(full, rel=1e-6)
    assert model.evaluate(batches)["val_loss"] == pytest.approx(full, rel=1e-6)


def test_train_and_val_metrics_keep_separate_state(digits):
    train, val = digits
    train_batches = [train[i : i + 100] for i in range(0, 400, 100)]
    val_batches = [val[i : i + 100] for i in range(0, 300, 100)]
    model = digits_model(net := mlp(), optimizer=torch.optim.SGD(net.parameters(), lr=0.0))
    history = model.fit(train_batches, val_batches, epochs=1, verbose=0)
    with torch.no_grad():
        train_acc = (net(train.tensors[0][:400]).argmax(1) == train.tensors[1][:400]).float().mean().item()
        val_acc = (net(val.tensors[0][:300]).argmax(1) == val.tensors[1][:300]).float().mean().item()
    assert train_acc != pytest.approx(val_acc)
    assert history["train_acc"].item() == pytest.approx(train_acc)
    assert history["val_acc"].item() == pytest.approx(val_acc)


def test_plain_callable_metric_is_averaged_over_samples():
    batches = regression_batches(n=10, batch_size=4)
    net = nn.Linear(3, 1)
    model = frozen_model(net, loss_fn=nn.MSELoss(), metrics_dict={"mae": lambda p, y: (p - y).abs().mean()})
    history = model.fit(batches, epochs=1, verbose=0)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with torch.no_grad():
        assert history["train_mae"].item() == pytest.approx((net(x) - y).abs().mean().item(), rel=1e-6)


def test_fit_without_val_data_monitors_train_loss_and_has_no_val_columns():
    batches = regression_batches()
    model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu")
    history = model.fit(batches, epochs=3, verbose=0)
    assert list(history.columns) == ["epoch", "train_loss", "lr", "time"]
    assert isinstance(model.optimizer, torch.optim.Adam)  # the default, built by fit
    assert history["lr"].tolist() == [1e-3] * 3


def test_extra_columns_from_a_custom_epoch_runner_are_kept():
    class CountingRunner(EpochRunner):
        def __call__(self, loader, **kw):
            return {**super().__call__(loader, **kw), f"{self.stage}_batches": float(len(loader))}

    class Counting(KerasModel):
        EpochRunner = CountingRunner

    batches = regression_batches()
    history = Counting(nn.Linear(3, 1), nn.MSELoss(), device="cpu").fit(batches, batches, epochs=1, verbose=0)
    assert history[["train_batches", "val_batches"]].iloc[0].tolist() == [3.0, 3.0]


# --- early stopping and the best weights ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "mode", "min_delta", "patience", "stop_epoch", "best_epoch"),
    [
        ([0.5, 0.4, 0.45, 0.3, 0.35, 0.36, 0.2], "min", 0.0, 2, 6, 4),
        ([0.5, 0.5, 0.5, 0.5], "min", 0.0, 2, 3, 1),  # a tie is not an improvement
        ([1.0, 0.95, 0.9, 0.85, 0.7], "min", 0.1, 2, 3, 1),  # 0.9 does not beat 1.0 by more than 0.1
        ([0.1, 0.3, 0.2, 0.25, 0.5], "max", 0.0, 3, 5, 5),  # epochs used up; the best is the last
        ([0.5, 0.4, 0.3], "min", 0.0, 1, 3, 3),
    ],
)
def test_early_stop_epoch_and_restored_weights_agree(values, mode, min_delta, patience, stop_epoch, best_epoch):
    data = regression_batches()
    model = scripted(values)
    history = model.fit(
        data,
        data,
        epochs=len(values),
        patience=patience,
        mode=mode,
        min_delta=min_delta,
        callbacks=[EpochTag()],
        verbose=0,
    )
    assert len(history) == stop_epoch
    assert model.net.tag.item() == best_epoch


def test_patience_none_runs_every_epoch_and_still_restores_the_best():
    data = regression_batches()
    model = scripted([0.5, 0.1, 0.6, 0.7, 0.8, 0.9])
    history = model.fit(data, data, epochs=6, patience=None, callbacks=[EpochTag()], verbose=0)
    assert len(history) == 6
    assert model.net.tag.item() == 2


def test_ctrl_c_propagates_after_the_best_weights_are_back_and_the_history_is_kept(capsys):
    class InterruptMidEpoch3(Callback):
        def on_train_batch_end(self, model, logs):
            if logs["epoch"] == 3 and logs["batch"] == 1:
                raise KeyboardInterrupt

    data = regression_batches()
    model = scripted([0.5, 0.4, 0.1])
    recorder = Recorder()
    with pytest.raises(KeyboardInterrupt):  # a script stops, with exit code 130, rather than carrying on
        model.fit(data, data, epochs=5, callbacks=[EpochTag(), InterruptMidEpoch3(), recorder], verbose=2)
    assert model.history["epoch"].tolist() == [1, 2]  # a notebook keeps the history so far ...
    assert model.net.tag.item() == 2  # ... and the best weights
    assert recorder.calls[-1] == ("on_fit_end", 2)
    assert "interrupted: fit stops after 2 finished epochs" in capsys.readouterr().out


def test_model_history_is_empty_before_fit_and_holds_the_rows_so_far_during_it():
    class Seen(Callback):
        def __init__(self):
            self.lengths, self.last_epochs = [], []

        def on_epoch_end(self, model, logs):
            self.lengths.append(len(model.history))
            self.last_epochs.append(model.history["epoch"].iloc[-1])

    data = regression_batches()
    model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu")
    assert model.history.empty
    seen = Seen()
    history = model.fit(data, data, epochs=3, patience=None, callbacks=[seen], verbose=0)
    assert seen.lengths == [1, 2, 3]
    assert seen.last_epochs == [1, 2, 3]
    assert model.history is history


def test_an_exception_from_a_callback_propagates_after_the_best_weights_are_back():
    class FailAtEpoch3(Callback):
        def on_epoch_end(self, model, logs):
            if logs["epoch"] == 3:
                raise RuntimeError("callback failed")

    data = regression_batches()
    model = scripted([0.5, 0.3, 0.4, 0.2])
    with pytest.raises(RuntimeError, match="callback failed"):
        model.fit(data, data, epochs=4, callbacks=[EpochTag(), FailAtEpoch3()], verbose=0)
    assert model.net.tag.item() == 2
    assert len(model.history) == 3


def test_a_failing_on_fit_end_does_not_keep_the_best_weights_from_coming_back():
    class FailAtEnd(Callback):
        def on_fit_end(self, model, logs):
            raise RuntimeError("end failed")

    data = regression_batches()
    model = scripted([0.5, 0.3, 0.4])
    with pytest.raises(RuntimeError, match="end failed"):
        model.fit(data, data, epochs=3, callbacks=[FailAtEnd(), EpochTag()], verbose=0)
    assert model.net.tag.item() == 2


def test_restore_copies_into_the_same_parameters_on_the_chosen_device():
    data = regression_batches()
    model = scripted([0.5, 0.3, 0.4], device=torch.device("cpu"))
    params = list(model.net.parameters())
    model.fit(data, data, epochs=3, verbose=0)
    assert [p.data_ptr() for p in model.net.parameters()] == [p.data_ptr() for p in params]
    assert all(p.device == torch.device("cpu") for p in model.net.parameters())


def test_hooks_run_in_documented_order():
    data = regression_batches(n=8, batch_size=4)  # two batches
    recorder = Recorder()
    KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu").fit(
        data, data[:1], epochs=2, callbacks=[recorder], verbose=0
    )
    epoch = lambda e: [  # noqa: E731
        ("on_epoch_begin", e),
        ("on_train_batch_begin", e, 0),
        ("on_train_batch_end", e, 0),
        ("on_train_batch_begin", e, 1),
        ("on_train_batch_end", e, 1),
        ("on_val_batch_begin", e, 0),
        ("on_val_batch_end", e, 0),
        ("on_epoch_end", e),
    ]
    assert recorder.calls == [("on_fit_begin",), *epoch(1), *epoch(2), ("on_fit_end", 2)]


def test_predict_hooks_run_in_documented_order_and_see_the_outputs():
    recorder, shapes = Recorder(), []

    class Shapes(Callback):
        def on_predict_batch_end(self, model, logs):
            shapes.append(tuple(logs["outputs"].shape))

    batches = [torch.randn(4, 3), torch.randn(2, 3)]
    KerasModel(nn.Linear(3, 1), device="cpu").predict(batches, callbacks=[recorder, Shapes()])
    assert recorder.calls == [
        ("on_predict_begin",),
        ("on_predict_batch_begin", 0),
        ("on_predict_batch_end", 0),
        ("on_predict_batch_begin", 1),
        ("on_predict_batch_end", 1),
        ("on_predict_end",),
    ]
    assert shapes == [(4, 1), (2, 1)]


def test_predict_end_runs_when_a_batch_fails():
    recorder = Recorder()
    with pytest.raises(RuntimeError):
        KerasModel(nn.Linear(3, 1), device="cpu").predict([torch.randn(4, 5)], callbacks=[recorder])
    assert recorder.calls == [("on_predict_begin",), ("on_predict_batch_begin", 0), ("on_predict_end",)]


def test_built_in_callbacks_run_before_the_users_in_every_hook():
    seen = {}

    class Observer(Callback):
        def on_epoch_end(self, model, logs):
            seen.setdefault("wait", []).append(stop.wait)

        def on_fit_end(self, model, logs):
            seen["tag at fit end"] = model.net.tag.item()

    data = regression_batches()
    model = scripted([0.5, 0.2, 0.4, 0.6])
    stop = EarlyStopping("val_loss", patience=5)
    model.fit(data, data, epochs=4, patience=None, callbacks=[EpochTag(), stop, Observer()], verbose=0)
    assert seen["wait"] == [0, 0, 1, 2]  # EarlyStopping, given first, had counted each epoch already
    assert seen["tag at fit end"] == 2  # fit's BestWeights had restored epoch 2 before the user's on_fit_end


def test_restore_best_weights_false_leaves_the_last_epoch_in_the_net():
    data = regression_batches()
    model = scripted([0.5, 0.2, 0.4, 0.6])
    model.fit(data, data, epochs=4, patience=None, restore_best_weights=False, callbacks=[EpochTag()], verbose=0)
    assert model.net.tag.item() == 4
    model = scripted([0.5, 0.2, 0.4, 0.6])
    model.fit(data, data, epochs=4, patience=None, callbacks=[EpochTag()], verbose=0)
    assert model.net.tag.item() == 2  # the guard: with the default, epoch 2 (val_loss 0.2) comes back


def test_fit_options_after_epochs_are_keyword_only():
    data = regression_batches()
    with pytest.raises(TypeError, match="positional"):
        KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu").fit(data, data, 2, None)


def test_one_early_stopping_instance_serves_two_fits():
    data = regression_batches()
    stop = EarlyStopping("val_loss", patience=1)
    model = scripted([0.5, 0.6, 0.4, 0.3, 0.5])
    first = model.fit(data, data, epochs=5, patience=None, callbacks=[stop], verbose=0)
    second = model.fit(data, data, epochs=5, patience=None, callbacks=[stop], verbose=0)
    assert len(first) == 2  # 0.5, 0.6: stop
    assert len(second) == 3  # 0.4, 0.3, 0.5: a fresh best, then stop; 0.3 < first fit's 0.5 plays no part
    assert stop.best.value == 0.3


# --- learning-rate scheduler ----------------------------------------------------------------------------------------


def test_scheduler_steps_once_per_epoch_by_default():
    data = regression_batches()  # three batches per epoch
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    history = KerasModel(net, nn.MSELoss(), optimizer=opt, lr_scheduler=sched, device="cpu").fit(
        data, epochs=3, verbose=0
    )
    assert history["lr"].tolist() == pytest.approx([0.1, 0.05, 0.025])


def test_scheduler_steps_per_batch_when_asked():
    data = regression_batches()
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model = KerasModel(net, nn.MSELoss(), optimizer=opt, lr_scheduler=sched, device="cpu", scheduler_interval="step")
    history = model.fit(data, epochs=2, verbose=0)
    assert history["lr"].tolist() == pytest.approx([0.1, 0.1 * 0.5**3])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**6)


@pytest.mark.parametrize(("values", "lrs"), [([4.0, 3.0, 2.0, 1.0], [0.1] * 4), ([1.0] * 4, [0.1, 0.1, 0.05, 0.025])])
def test_reduce_on_plateau_is_fed_the_monitored_value(values, lrs):
    data = regression_batches()
    model = scripted(values)
    model.lr_scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(model.optimizer, factor=0.5, patience=0)
    model.optimizer.param_groups[0]["lr"] = 0.1
    history = model.fit(data, data, epochs=4, patience=None, verbose=0)
    assert history["lr"].tolist() == pytest.approx(lrs)


# --- predict, checkpoints, device -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["tensor", "1-tuple", "pair", "dict"])
def test_predict_concatenates_outputs_in_order_on_cpu(shape):
    x, y = torch.randn(10, 3), torch.randn(10, 1)
    make = {
        "tensor": lambda i: x[i : i + 4],
        "1-tuple": lambda i: (x[i : i + 4],),
        "pair": lambda i: (x[i : i + 4], y[i : i + 4]),
        "dict": lambda i: {"input": x[i : i + 4], "labels": y[i : i + 4]},
    }[shape]

    class Net(nn.Linear):
        def forward(self, input):
            return super().forward(input)

    net = Net(3, 2)
    preds = KerasModel(net, device="cpu").predict([make(i) for i in range(0, 10, 4)])
    assert preds.device == torch.device("cpu")
    with torch.no_grad():
        assert torch.equal(preds, net(x))


def test_predict_returns_logits_of_outputs_that_carry_them_and_leaves_train_mode_as_it_was():
    class HF(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.dropout = nn.Linear(3, 2), nn.Dropout(0.5)

        def forward(self, inputs, labels=None):
            return {"logits": self.dropout(self.linear(inputs)), "loss": None}

    net = HF()
    x = torch.randn(6, 3)
    preds = KerasModel(net, device="cpu").predict([{"inputs": x}])
    assert net.training  # restored
    with torch.no_grad():
        assert torch.equal(preds, net.linear(x))  # dropout was off


def test_save_and_load_ckpt_round_trip(tmp_path):
    model = KerasModel(nn.Linear(3, 1), device="cpu")
    model.save_ckpt(tmp_path / "w.pt")
    saved = {k: v.clone() for k, v in model.net.state_dict().items()}
    nn.init.zeros_(model.net.weight)
    model.load_ckpt(tmp_path / "w.pt")
    assert all(torch.equal(saved[k], v) for k, v in model.net.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]


def test_load_ckpt_never_runs_pickled_code(tmp_path):
    ran = []

    class Evil:
        def __reduce__(self):
            return (ran.append, ("pwned",))

    torch.save({"weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match=r"[Ww]eights only load failed"):
        KerasModel(nn.Linear(3, 1), device="cpu").load_ckpt(tmp_path / "evil.pt")
    assert ran == []


def test_ckpt_path_holds_the_best_weights_and_nothing_is_written_without_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = regression_batches()
    scripted([0.5, 0.2, 0.4]).fit(data, data, epochs=3, callbacks=[EpochTag()], verbose=0)
    assert list(tmp_path.iterdir()) == []
    model = scripted([0.5, 0.2, 0.4])
    model.fit(data, data, epochs=3, ckpt_path=tmp_path / "best.pt", callbacks=[EpochTag()], verbose=0)
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    assert torch.load(tmp_path / "best.pt", weights_only=True)["tag"].item() == 2


def test_net_metrics_and_batches_live_on_the_chosen_device():
    seen = []

    class Spy(nn.Linear):
        def forward(self, x):
            seen.append(x.device)
            return super().forward(x)

    model = KerasModel(Spy(3, 1), nn.MSELoss(), device="cpu")
    model.fit(regression_batches(), epochs=1, verbose=0)
    assert model.device == torch.device("cpu")
    assert {p.device for p in model.net.parameters()} == {torch.device("cpu")}
    assert set(seen) == {torch.device("cpu")}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_keeps_the_net_on_the_gpu_and_never_syncs_inside_a_step(digits_loaders):
    train_dl, val_dl = digits_loaders
    model = KerasModel(mlp(), nn.CrossEntropyLoss(), {"acc": MulticlassAccuracy(10, validate_args=False)})
    assert model.device.type == "cuda"

    class SyncGuard(Callback):
        def on_train_batch_begin(self, model, logs):
            torch.cuda.set_sync_debug_mode("error")

        def on_train_batch_end(self, model, logs):
            torch.cuda.set_sync_debug_mode("default")

    train_dl.pin_memory = True
    model.fit(train_dl, val_dl, epochs=2, callbacks=[SyncGuard()], verbose=0)
    assert {p.device.type for p in model.net.parameters()} == {"cuda"}


# --- output ---------------------------------------------------------------------------------------------------------


def test_verbose_0_prints_nothing_at_all(capsys, digits_loaders):
    train_dl, val_dl = digits_loaders
    digits_model().fit(train_dl, val_dl, epochs=2, patience=1, verbose=0)
    assert capsys.readouterr() == ("", "")


def test_verbose_1_prints_each_epoch_and_the_restore(capsys):
    data = regression_batches()
    scripted([0.5, 0.2, 0.4, 0.6]).fit(data, data, epochs=4, patience=2, verbose=1)
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out if line.startswith("epoch")] == ["1/4", "2/4", "3/4", "4/4"]
    assert "early stop at epoch 4: val_loss has not improved for 2 epochs (best 0.2000 at epoch 2)" in out
    assert "restored the weights of epoch 2 (val_loss=0.2000)" in out


# --- speed: no host sync inside a step ------------------------------------------------------------------------------


class SumOfSquares:
    """A stateful metric of the plain-object kind: update / compute / reset, with its sum on the preds' device."""

    def __init__(self) -> None:
        self.total = None

    def update(self, preds, labels):
        batch = ((preds - labels) ** 2).sum()
        self.total = batch if self.total is None else self.total + batch

    def compute(self):
        return self.total

    def reset(self):
        self.total = None


@pytest.mark.parametrize(
    "controls",
    [{}, {"accumulate_grad_batches": 3, "clip_grad_norm": 1.0, "clip_grad_value": 0.5, "precision": "bf16"}],
    ids=["defaults", "accumulate-clip-bf16"],
)
def test_host_reads_per_fit_do_not_grow_with_the_number_of_batches(monkeypatch, controls):
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def reads_for(n_batches: int) -> int:
        reads.clear()
        data = regression_batches(n=4 * n_batches, batch_size=4)
        net = nn.Linear(3, 1)
        # SGD, not Adam: Adam reads its step counter with .item() each step; torch keeps that counter on the host,
        # so it is no device sync, but it would hide ours here.
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        # A plain function, a stateful metric that is not torchmetrics', and a scheduler stepped per step (OneCycleLR's
        # default): none of them may read the device inside a step.
        metrics = {"mae": lambda p, y: (p - y).abs().mean(), "sse": SumOfSquares()}
        one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=1000)
        model = KerasModel(net, nn.MSELoss(), metrics, opt, one_cycle, device="cpu", **controls)
        model.fit(data, data, epochs=2, verbose=0)
        return len(reads)

    assert reads_for(40) == reads_for(5)
    assert reads_for(5) == 2 * 2  # one transfer per pass: train and val, two epochs


# --- errors, all raised before any training step --------------------------------------------------------------------


def _weights(model: KerasModel) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.net.parameters()]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"monitor": "val_accuracy"},
            ValueError,
            "monitor='val_accuracy' is not a history column; available: epoch, train_loss, train_acc, val_loss, "
            "val_acc, lr, time",
        ),
        ({"monitor": "val_acc", "val_data": None}, ValueError, "monitor='val_acc' needs val_data"),
        ({"mode": "maximum"}, ValueError, "mode='maximum' is not valid; use 'min', 'max', or None"),
        ({"min_delta": -0.1}, ValueError, "min_delta=-0.1 is not valid"),
        ({"epochs": 0}, ValueError, "epochs=0 is not valid; use an int >= 1"),
        ({"epochs": 2.5}, ValueError, "epochs=2.5 is not valid"),
        ({"epochs": True}, ValueError, "epochs=True is not valid"),
        ({"patience": 0}, ValueError, "patience=0 is not valid"),
        ({"verbose": 3}, ValueError, r"verbose=3 is not valid; use 0 \(silent\); 1 \(bars and a line per epoch\)"),
        ({"train_data": []}, ValueError, "train_data is empty: it has 0 batches"),
        ({"val_data": []}, ValueError, "val_data is empty"),
        ({"train_data": torch.zeros(4, 64)}, TypeError, "train_data must be an iterable of batches"),
        (
            {"ckpt_path": f"{__file__}/best.pt"},
            ValueError,
            r"ckpt_path='.*test_model\.py/best\.pt': '.*test_model\.py' is a file, not a directory",
        ),
        ({"callbacks": [print]}, TypeError, "callbacks must be kerasish.Callback instances"),
    ],
)
def test_bad_fit_arguments_fail_before_any_step(digits_loaders, kwargs, error, match):
    train_dl, val_dl = digits_loaders
    model = digits_model()
    before = _weights(model)
    args = {"train_data": train_dl, "val_data": val_dl, "verbose": 0, **kwargs}
    with pytest.raises(error, match=match):
        model.fit(**args)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model), strict=True))
    assert model.optimizer.state == {}


def test_a_non_scalar_loss_fails_before_the_first_optimizer_step():
    model = KerasModel(nn.Linear(3, 1), nn.MSELoss(reduction="none"), device="cpu")
    before = _weights(model)
    with pytest.raises(ValueError, match=r"the loss must be a scalar tensor; got shape \(4, 1\)"):
        model.fit(regression_batches(), epochs=1, verbose=0)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model), strict=True))


def test_a_net_without_parameters_needs_an_optimizer():
    with pytest.raises(ValueError, match="ReLU has no trainable parameters; pass optimizer="):
        KerasModel(nn.ReLU(), nn.MSELoss(), device="cpu").fit(regression_batches(), epochs=1, verbose=0)


def test_loss_fn_without_labels_in_the_batch_says_what_to_yield():
    with pytest.raises(ValueError, match=r"loss_fn needs labels, but the batch has none"):
        KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu").fit([torch.randn(4, 3)], epochs=1, verbose=0)


def test_reduce_on_plateau_mode_must_agree_with_fit():
    data = regression_batches()
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    model = KerasModel(net, nn.MSELoss(), optimizer=opt, lr_scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(opt))
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau\(mode='min'\) but fit has mode='max'"):
        model.fit(data, data, epochs=1, mode="max", verbose=0)


def _bad_model_args():
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    other = torch.optim.SGD(nn.Linear(3, 1).parameters(), lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    return (
        [
            ({"net": "linear"}, TypeError, "net must be a torch.nn.Module; got str"),
            ({"loss_fn": 3}, TypeError, "loss_fn must be callable"),
            ({"optimizer": "adam"}, TypeError, "optimizer must be a torch.optim.Optimizer"),
            (
                {"lr_scheduler": torch.optim.lr_scheduler.StepLR(other, 1)},
                ValueError,
                "must be built over the optimizer",
            ),
            ({"optimizer": None, "lr_scheduler": plateau}, ValueError, "must be built over the optimizer"),
            ({"lr_scheduler": plateau, "scheduler_interval": "step"}, ValueError, "ReduceLROnPlateau needs an epoch"),
            ({"scheduler_interval": "batch"}, ValueError, "scheduler_interval='batch' is not valid"),
            ({"metrics_dict": {"acc": 0.5}}, TypeError, r"metrics_dict\['acc'\] must be a torchmetrics Metric"),
            ({"device": "gpu0"}, ValueError, "device='gpu0' is not a device torch knows"),
        ],
        net,
        opt,
    )


@pytest.mark.parametrize("case", range(9))
def test_bad_model_arguments_are_named(case):
    cases, net, opt = _bad_model_args()
    kwargs, error, match = cases[case]
    with pytest.raises(error, match=match):
        KerasModel(**{"net": net, "optimizer": opt, "device": "cpu", **kwargs})


def test_a_metric_that_is_not_a_number_is_named():
    model = KerasModel(nn.Linear(3, 2), nn.MSELoss(), {"per_class": MulticlassAccuracy(2, average="none")})
    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    model.loss_fn = lambda p, y: p.mean()
    with pytest.raises(TypeError, match=r"metric 'per_class' computed \(2,\), not a single number"):
        model.fit(data, epochs=1, verbose=0)


def test_history_before_any_fit_is_an_empty_frame():
    assert KerasModel(nn.Linear(3, 1)).history.empty


# --- verbose=2, torch.compile -----------------------------------------------------------------------------------


def test_verbose_2_prints_one_line_per_epoch_and_no_bars(capsys):
    data = regression_batches()
    scripted([0.5, 0.2, 0.4]).fit(data, data, epochs=3, patience=None, verbose=2)
    out, err = capsys.readouterr()
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch")] == ["1/3", "2/3", "3/3"]
    assert err == ""  # bars go to stderr; none were drawn


def test_compile_runs_the_steps_through_torch_compile_and_saves_plain_weight_names(tmp_path):
    data = regression_batches(n=16, batch_size=4)
    plain, compiled = nn.Linear(3, 1), nn.Linear(3, 1)
    compiled.load_state_dict(plain.state_dict())
    opt = lambda net: torch.optim.SGD(net.parameters(), lr=0.05)  # noqa: E731
    # aot_eager traces forward and backward through torch.compile without generating code, so the test stays fast.
    model = KerasModel(compiled, nn.MSELoss(), optimizer=opt(compiled), device="cpu", compile={"backend": "aot_eager"})
    history = model.fit(data, data, epochs=3, ckpt_path=tmp_path / "best.pt", verbose=0)
    reference = KerasModel(plain, nn.MSELoss(), optimizer=opt(plain), device="cpu").fit(data, data, epochs=3, verbose=0)
    assert isinstance(model.step_net, torch._dynamo.eval_frame.OptimizedModule)
    assert model.net is compiled
    assert history["val_loss"].tolist() == pytest.approx(reference["val_loss"].tolist(), rel=1e-5)
    assert set(torch.load(tmp_path / "best.pt", weights_only=True)) == {"weight", "bias"}
    assert model.predict(data).shape == (16, 1)


@pytest.mark.parametrize("bad", ["yes", 1, {1: "x"}])
def test_bad_compile_argument_is_named(bad):
    with pytest.raises(TypeError, match=r"compile=.* is not valid; use False, True, or a dict of torch.compile"):
        KerasModel(nn.Linear(3, 1), device="cpu", compile=bad)


def test_summary_counts_every_parameter_once_and_prints_the_table(capsys):
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    net[0].requires_grad_(False)
    result = KerasModel(net, device="cpu").summary(torch.zeros(2, 64))
    assert result.total_params == sum(p.numel() for p in net.parameters()) == 2410
    assert result.trainable_params == 330
    assert [row.output_shape for row in result.rows] == [(2, 32), (2, 32), (2, 10)]
    assert "Total params: 2,410" in capsys.readouterr().out


def test_on_fit_end_gets_the_last_finished_row_when_an_epoch_is_cut_short_in_its_val_pass():
    batches = regression_batches()

    class FailsOnSecondPass:
        def __init__(self) -> None:
            self.passes = 0

        def __iter__(self):
            self.passes += 1
            if self.passes == 2:
                raise RuntimeError("val data went away")
            return iter(batches)

    seen = []
    model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu")
    with pytest.raises(RuntimeError, match="val data went away"):
        model.fit(
            batches, FailsOnSecondPass(), epochs=3, verbose=0,
            callbacks=[LambdaCallback(on_fit_end=lambda model, logs: seen.append(dict(logs)))],
        )  # fmt: skip
    assert [sorted(logs) for logs in seen] == [["epoch", "lr", "time", "train_loss", "val_loss"]]
    assert seen[0]["epoch"] == 1 and seen[0] == model.history.iloc[0].to_dict() | {"epoch": 1}


# --- which way is better: mode=None takes it from the metric ------------------------------------------------------


def test_monitor_val_acc_with_the_default_mode_keeps_the_best_epoch(digits_loaders):
    # SGD with a small lr: val_acc climbs every epoch, so the best epoch is the last one, and the first the worst.
    net = mlp()
    model = digits_model(net, optimizer=torch.optim.SGD(net.parameters(), lr=0.05))
    history = model.fit(*digits_loaders, epochs=4, monitor="val_acc", patience=3, verbose=0)
    accs = history["val_acc"].tolist()
    assert accs == sorted(accs) and accs[0] < accs[-1] - 0.1, accs
    assert len(history) == 4  # no early stop: every epoch improved
    assert model.evaluate(digits_loaders[1])["val_acc"] == pytest.approx(accs[-1], abs=1e-6)
    assert history.attrs["monitor"]["mode"] == "max"


def test_a_callback_monitoring_a_torchmetrics_column_takes_its_direction(digits_loaders):
    net = mlp()
    model = digits_model(net, optimizer=torch.optim.SGD(net.parameters(), lr=0.05))
    stop = EarlyStopping("val_acc", patience=1)
    model.fit(*digits_loaders, epochs=3, patience=None, callbacks=[stop], verbose=0)
    assert (stop.best.monitor.mode, stop.best.epoch, stop.stopped_epoch) == ("max", 3, None)
    assert stop.monitor.mode is None  # the callback's own setting stays "from the metric" for its next fit


def _named_fn(preds, labels):
    return (preds.argmax(1) == labels).float().mean()


@pytest.mark.parametrize(
    ("fit_kwargs", "owner"),
    [
        ({"monitor": "val_hits"}, "fit"),
        ({"callbacks": [EarlyStopping("val_hits")]}, "EarlyStopping"),
    ],
)
def test_a_plain_function_monitored_without_mode_is_an_error_before_any_step(fit_kwargs, owner):
    data = [(torch.randn(8, 64), torch.randint(0, 10, (8,)))]
    net = mlp()
    before = [p.detach().clone() for p in net.parameters()]
    model = KerasModel(net, nn.CrossEntropyLoss(), metrics_dict={"hits": _named_fn}, device="cpu")
    with pytest.raises(
        ValueError,
        match=rf"^{owner}: monitor='val_hits' with mode=None, but metric 'hits' \(function\) has no higher_is_better, "
        r"so kerasish cannot tell whether higher or lower is better; pass mode='max' or mode='min'$",
    ):
        model.fit(data, data, epochs=2, verbose=0, **fit_kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_a_plain_function_says_its_direction_with_higher_is_better():
    def hits(preds, labels):
        return (preds.argmax(1) == labels).float().mean()

    hits.higher_is_better = True
    data = [(torch.randn(8, 64), torch.randint(0, 10, (8,)))]
    model = KerasModel(mlp(), nn.CrossEntropyLoss(), metrics_dict={"hits": hits}, device="cpu")
    history = model.fit(data, data, epochs=1, monitor="val_hits", verbose=0)
    assert history.attrs["monitor"]["mode"] == "max"
    assert history.attrs["directions"] == {
        "train_loss": "min",
        "train_hits": "max",
        "val_loss": "min",
        "val_hits": "max",
    }


def test_an_explicit_mode_still_wins(digits_loaders):
    net = mlp()
    model = digits_model(net, optimizer=torch.optim.SGD(net.parameters(), lr=0.05))
    history = model.fit(*digits_loaders, epochs=3, monitor="val_acc", mode="min", patience=None, verbose=0)
    # "min" on a rising accuracy: the first epoch is the best, as asked
    assert model.evaluate(digits_loaders[1])["val_acc"] == pytest.approx(history["val_acc"].iloc[0], abs=1e-6)
