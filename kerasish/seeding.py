"""One call to make a run repeatable: seed every random number generator a training script touches."""

from __future__ import annotations

import numbers
import os
import random

import numpy as np
import torch

MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes no more than 32 bits


def seed_everything(seed: int) -> int:
    """Seeds Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device).

    It also sets ``PYTHONHASHSEED`` in ``os.environ``. That does not change hashing in the running interpreter, but
    child processes started afterwards (``DataLoader`` workers under the ``spawn`` start method) inherit it, so they
    hash strings the same way on every run. Kernels that are nondeterministic on the GPU stay so; see
    ``torch.use_deterministic_algorithms`` for those.

    Args:
        seed: an int in ``[0, 2**32 - 1]`` (NumPy integers are accepted too).

    Returns:
        The seed, as a Python int, so it can be logged: ``print(seed_everything(42))``.

    Raises:
        ValueError: ``seed`` is not an int (a bool is not accepted) or lies outside ``[0, 2**32 - 1]``.

    Example:
        >>> import random
        >>> seed_everything(7)
        7
        >>> first = (random.random(), np.random.rand(), torch.rand(1).item())
        >>> _ = seed_everything(7)
        >>> (random.random(), np.random.rand(), torch.rand(1).item()) == first
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2**32 - 1] (0 to {MAX_SEED:,}); got {seed!r}")
    seed = int(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device as well, lazily if CUDA is not initialised yet
    return seed
