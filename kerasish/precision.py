"""Mixed precision: which dtype a forward pass autocasts to, and the gradient scaler fp16 needs."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

PRECISIONS = ("32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: Any, device: torch.device) -> str:
    """Returns ``precision`` as one of :data:`PRECISIONS`, or raises naming what would work on ``device``.

    ``"fp16"`` needs CUDA: its gradients underflow without a scaler, and torch's scaler with autocast to float16 is
    a CUDA feature. ``"bf16"`` has float32's range, needs no scaler, and runs on CPU and GPU.
    """
    precision = str(precision) if isinstance(precision, int) and not isinstance(precision, bool) else precision
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not valid; use one of {', '.join(map(repr, PRECISIONS))}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"precision='fp16' needs a CUDA device (it uses a gradient scaler); on {device.type} use 'bf16'"
        )
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a forward pass and its loss run in: autocast to the reduced dtype, or nothing for ``"32"``."""
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for ``"fp16"``; ``None`` otherwise (bf16 and float32 gradients do not underflow)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
