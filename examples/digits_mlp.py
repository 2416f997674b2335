"""Train a small MLP on scikit-learn's 8x8 digits with kerasish, start to finish, on CPU in seconds.

Shows the whole public loop: wrap a plain ``nn.Module`` in ``KerasModel`` with a loss, a torchmetrics metric
and an optimizer; ``fit`` with early stopping on the validation accuracy; read the history as a pandas
DataFrame; ``evaluate`` a loader; ``predict`` raw outputs and score them by hand.

The data set ships inside scikit-learn, so nothing is downloaded. Run it with ``make demo`` or
``python examples/digits_mlp.py``; it exits non-zero when the validation accuracy falls below ``MIN_VAL_ACC``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from kerasish import KerasModel

SEED = 0
BATCH_SIZE = 32
MIN_VAL_ACC = 0.95


def _dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long))


def make_loaders(seed: int = SEED) -> tuple[DataLoader, DataLoader]:
    """Stratified 75/25 split of the 1797 digits, pixels scaled from 0..16 to 0..1."""
    digits = load_digits()
    x_train, x_val, y_train, y_val = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, stratify=digits.target, random_state=seed
    )
    # A generator of its own makes the shuffling order reproducible without touching the global RNG.
    shuffle_rng = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(_dataset(x_train, y_train), batch_size=BATCH_SIZE, shuffle=True, generator=shuffle_rng)
    val_dl = DataLoader(_dataset(x_val, y_val), batch_size=BATCH_SIZE)
    return train_dl, val_dl


def make_net() -> nn.Module:
    """64 pixels -> 64 hidden units -> 10 class logits."""
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def make_model(net: nn.Module) -> KerasModel:
    """The net with cross-entropy, plain accuracy and Adam: the same under torchrun (see digits_ddp.py)."""
    return KerasModel(
        net,
        loss_fn=nn.CrossEntropyLoss(),
        # "micro" is plain accuracy (correct / total), the same number as the argmax check below;
        # torchmetrics' default "macro" would average the per-class accuracies instead.
        metrics_dict={"acc": MulticlassAccuracy(num_classes=10, average="micro")},
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
    )


def main(epochs: int = 30, verbose: int = 1) -> dict:
    """Trains, evaluates and predicts; returns the evaluation dict plus the argmax accuracy of ``predict``.

    A test can call ``main(epochs=..., verbose=0)`` and check ``result["predict_acc"]``; only the script
    entry point turns a low accuracy into a non-zero exit status.
    """
    torch.manual_seed(SEED)  # weight initialisation
    train_dl, val_dl = make_loaders()
    model = make_model(make_net())

    history = model.fit(train_dl, val_dl, epochs=epochs, monitor="val_acc", mode="max", patience=5, verbose=verbose)
    scores = model.evaluate(val_dl)
    logits = model.predict(val_dl)
    labels = torch.cat([y for _, y in val_dl])
    predict_acc = (logits.argmax(dim=1) == labels).float().mean().item()

    if verbose:
        print(history.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print("evaluate:", {name: round(value, 4) for name, value in scores.items()})
        print(f"predict argmax accuracy on val: {predict_acc:.4f}")
    return {**scores, "predict_acc": predict_acc}


if __name__ == "__main__":
    result = main()
    if result["predict_acc"] < MIN_VAL_ACC:
        sys.exit(f"validation accuracy {result['predict_acc']:.4f} is below the required {MIN_VAL_ACC}")
