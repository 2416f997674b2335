"""Mixed precision: bf16 autocast on CPU end to end, fp16 with a gradient scaler on CUDA, and the checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kerasish import KerasModel, StepRunner
from kerasish.precision import autocast, check_precision, grad_scaler
from tests.helpers import regression_batches


class DtypeProbe(nn.Module):
    """A linear net that records the dtype of each output it computes."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        self.dtypes.append(out.dtype)
        return out


def test_bf16_runs_every_forward_under_autocast_on_cpu_and_still_learns():
    data = regression_batches(n=64, batch_size=16)
    net = DtypeProbe()
    model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.05), precision="bf16")
    history = model.fit(data, data, epochs=8, verbose=0)
    assert set(net.dtypes) == {torch.bfloat16}
    assert len(net.dtypes) == 8 * 2 * 4  # every train and val batch
    assert {p.dtype for p in net.parameters()} == {torch.float32}  # weights stay float32
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0] / 5
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0] / 5


def test_bf16_evaluate_and_predict_autocast_and_predict_returns_float32():
    net = DtypeProbe()
    model = KerasModel(net, nn.MSELoss(), device="cpu", precision="bf16")
    model.evaluate(regression_batches())
    preds = model.predict(regression_batches())
    assert set(net.dtypes) == {torch.bfloat16}
    assert preds.dtype == torch.float32
    assert preds.shape == (10, 1)


def test_float32_is_the_default_and_autocasts_nothing():
    net = DtypeProbe()
    KerasModel(net, nn.MSELoss(), device="cpu").fit(regression_batches(), epochs=1, verbose=0)
    assert set(net.dtypes) == {torch.float32}
    assert isinstance(autocast("32", torch.device("cpu")), type(autocast("32", torch.device("cuda"))))
    assert grad_scaler("32", torch.device("cpu")) is None
    assert grad_scaler("bf16", torch.device("cpu")) is None


@pytest.mark.parametrize(
    ("precision", "device", "match"),
    [
        ("fp16", "cpu", r"precision='fp16' needs a CUDA device \(it uses a gradient scaler\); on cpu use 'bf16'"),
        ("16", "cpu", r"precision='16' is not valid; use one of '32', 'bf16', 'fp16'"),
        ("float16", "cpu", r"precision='float16' is not valid"),
    ],
)
def test_bad_precision_is_named_before_anything_runs(precision, device, match):
    with pytest.raises(ValueError, match=match):
        KerasModel(nn.Linear(3, 1), nn.MSELoss(), device=device, precision=precision)


def test_precision_32_may_be_given_as_an_int():
    assert check_precision(32, torch.device("cpu")) == "32"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_on_cuda_autocasts_scales_gradients_and_learns():
    scalers = []

    class Spy(StepRunner):
        def optimizer_step(self):
            scalers.append(self.scaler)
            super().optimizer_step()

    class SpyModel(KerasModel):
        StepRunner = Spy

    data = regression_batches(n=64, batch_size=16)
    net = DtypeProbe()
    model = SpyModel(
        net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.05), device="cuda", precision="fp16"
    )
    history = model.fit(data, data, epochs=8, verbose=0)
    assert set(net.dtypes) == {torch.float16}
    assert all(isinstance(s, torch.amp.GradScaler) for s in scalers) and len(scalers) == 8 * 4
    assert scalers[0].get_scale() > 1.0  # gradients were scaled up, then unscaled by the step
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0] / 5
    assert model.predict(data).dtype == torch.float32
