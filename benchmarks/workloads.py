"""The two benchmark workloads: their data, nets, loaders and metric, built identically for every variant.

Everything a run depends on is seeded here, so the hand-written loop and kerasish see the same tensors, the same
initial weights and the same batch order, and (on CPU) end with the same weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

NUM_CLASSES = 10
LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class Workload:
    """One benchmark workload.

    Attributes:
        name: ``"w1"`` or ``"w2"``.
        title: one line for the report.
        batch_size: for the train and the val loader.
        epochs: the default number of epochs per run (epoch 1 is dropped as warm-up).
        target: the largest acceptable ratio of kerasish's seconds per epoch to the hand-written loop's.
        make_data: returns ``(train, val)`` datasets; deterministic.
        make_net: returns a freshly initialised net; seed the global generator first.
    """

    name: str
    title: str
    batch_size: int
    epochs: int
    target: float
    make_data: Callable[[], tuple[TensorDataset, TensorDataset]]
    make_net: Callable[[], nn.Module]


def digits_data() -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 8x8 digits, pixels scaled to [0, 1]: 1397 train and 400 val samples, split by a fixed seed."""
    from sklearn.datasets import load_digits  # only W1 needs scikit-learn

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    val, train = order[:400], order[400:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def random_images() -> tuple[TensorDataset, TensorDataset]:
    """6000 uniform-noise 1x28x28 images with random labels: 5000 train, 1000 val. Only the compute matters."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(6000, 1, 28, 28, generator=generator)
    y = torch.randint(0, NUM_CLASSES, (6000,), generator=generator)
    return TensorDataset(x[:5000], y[:5000]), TensorDataset(x[5000:], y[5000:])


def mlp() -> nn.Module:
    """64-32-10 multilayer perceptron."""
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES))


def small_cnn() -> nn.Module:
    """conv 1->32 3x3, relu, maxpool, conv 32->64 3x3, relu, adaptive pool, linear 64->10."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, NUM_CLASSES),
    )


WORKLOADS = {
    "w1": Workload(
        name="w1",
        title="W1 overhead-bound: MLP 64-32-10 on digits (1397 train / 400 val), batch 16",
        batch_size=16,
        epochs=10,
        target=1.05,
        make_data=digits_data,
        make_net=mlp,
    ),
    "w2": Workload(
        name="w2",
        title="W2 compute-bound: small CNN on 6000 random 1x28x28 images (5000 train / 1000 val), batch 64",
        batch_size=64,
        epochs=4,
        target=1.02,
        make_data=random_images,
        make_net=small_cnn,
    ),
}


def make_metric() -> MulticlassAccuracy:
    """The accuracy both loops report.

    ``average="micro"`` is plain accuracy (the fraction right). ``validate_args=False`` skips torchmetrics' input
    checks: with them, and with the default ``average="macro"`` (``torch.bincount``), every ``update`` reads a value
    back from the GPU, a sync of torchmetrics' own that no training loop, hand-written or not, could avoid.
    """
    return MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro", validate_args=False)


@dataclass
class Parts:
    """What one run trains: the net (on its device), its optimizer, loss, metric and loaders."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    metric: MulticlassAccuracy
    train_loader: DataLoader
    val_loader: DataLoader
    device: torch.device


def build(workload: Workload, device: torch.device, seed: int = 0) -> Parts:
    """Seeds, then builds everything a run needs; two calls with the same arguments give identical parts.

    The train loader shuffles with a generator of its own, so the batch order depends on ``seed`` alone and not on
    what else used the global random state. Pinned memory on CUDA lets the copies in the step be non-blocking.
    """
    torch.manual_seed(seed)
    net = workload.make_net().to(device)
    train, val = workload.make_data()
    pin = device.type == "cuda"
    loader_args = {"batch_size": workload.batch_size, "num_workers": 0, "pin_memory": pin}
    shuffler = torch.Generator().manual_seed(seed)
    return Parts(
        net=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=LEARNING_RATE),
        loss_fn=nn.CrossEntropyLoss(),
        metric=make_metric(),
        train_loader=DataLoader(train, shuffle=True, generator=shuffler, **loader_args),
        val_loader=DataLoader(val, shuffle=False, **loader_args),
        device=device,
    )


def fingerprint(net: nn.Module) -> list[float]:
    """Sum and L2 norm of all the net's weights: equal fingerprints mean (for our purpose) equal weights."""
    flat = torch.cat([value.detach().double().flatten().cpu() for value in net.state_dict().values()])
    return [float(flat.sum()), float(flat.norm())]


@dataclass
class RunResult:
    """What one fit measured, the same way for every variant.

    Attributes:
        history: per epoch, ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` and ``time``: the seconds of the
            train and val passes (kerasish's own history column; the hand loop times the same span).
        fit_start: ``time.perf_counter()`` just before the fit began.
        epoch_ends: ``time.perf_counter()`` at each epoch's end, after its best-weight and early-stopping bookkeeping.
        fit_end: just after the fit returned, the best weights restored.
    """

    history: dict[str, list[float]]
    fit_start: float
    epoch_ends: list[float]
    fit_end: float

    def epoch_seconds(self) -> list[float]:
        """Wall seconds from one epoch's end to the next: everything a user waits for per epoch."""
        stamps = [self.fit_start, *self.epoch_ends]
        return [later - earlier for earlier, later in itertools.pairwise(stamps)]
