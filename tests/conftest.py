"""Seeded fixtures: tiny nets and real small data (scikit-learn's bundled digits), all on CPU in well under a second."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import digits_split


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits() -> tuple[TensorDataset, TensorDataset]:
    """Digits scaled to [0, 1]: 1400 train and 397 val samples, in a fixed order."""
    return digits_split()


@pytest.fixture
def digits_loaders(digits) -> tuple[DataLoader, DataLoader]:
    """Shuffled train batches of 32 (seeded), val batches of 64 with a short last one."""
    train, val = digits
    shuffle = torch.Generator().manual_seed(0)
    return DataLoader(train, batch_size=32, shuffle=True, generator=shuffle), DataLoader(val, batch_size=64)
