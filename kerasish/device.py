"""Where the net, the metrics and every batch live."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Returns ``device`` as a ``torch.device``; ``None`` picks cuda, else mps, else cpu.

    Raises:
        TypeError: ``device`` is neither ``None``, a string nor a ``torch.device``.
        ValueError: the string names no device torch knows, or one this machine does not have (``"cuda"`` without
            a GPU or a CUDA build of torch, ``"cuda:3"`` with 2 GPUs, ``"mps"`` off Apple silicon).
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be None, a string or a torch.device; got {device!r}")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not a device torch knows ({err})") from None
    _check_available(resolved, device)
    return resolved


def _check_available(resolved: torch.device, given: Any) -> None:
    """Fails before the net moves, where torch would fail later with an ``AssertionError`` or a lazy-init error."""
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
            raise ValueError(
                f"device={given!r}, but CUDA is not available here ({build}; torch.cuda.is_available() is False); "
                "use device='cpu', or device=None to take the best device there is"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device={given!r}, but this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device={given!r}, but MPS is not available here (it needs Apple silicon, macOS 12.3 or later and a torch "
            "build with MPS); use device='cpu', or device=None to take the best device there is"
        )


def to_device(data: Any, device: torch.device, *, non_blocking: bool | None = None) -> Any:
    """Moves every tensor inside ``data`` (nested tuples, lists and mappings) to ``device``.

    Objects with their own ``.to`` (a Hugging Face ``BatchEncoding``) are moved by it; anything else is returned
    as it is. A tensor already on ``device`` is returned as it is. Copies to an accelerator are non-blocking, so a
    copy from pinned memory overlaps with compute; copies to the CPU block, since the host reads them at once.

    Args:
        data: a tensor, or a structure holding tensors.
        device: where the tensors go.
        non_blocking: ``None`` decides by the device as above. A caller moving every batch of a run passes what it
            decided once: reading ``device.type`` costs as much as the rest of a move.
    """
    return _move(data, device, device.type != "cpu" if non_blocking is None else non_blocking)


def _move(data: Any, device: torch.device, non_blocking: bool) -> Any:
    # Runs on every batch of every step, so the common cases come first, by their exact types: a tensor, then the
    # (x, y) list or tuple a DataLoader yields. An isinstance check against torch.Tensor costs more than either.
    # Comparing devices costs a fifth of a `.to` call that would return the tensor unchanged.
    if type(data) is torch.Tensor:
        if data.device == device:
            return data
        return data.to(device, non_blocking=True) if non_blocking else data.to(device)
    if isinstance(data, (tuple, list)):
        return rebuild(data, [_move(item, device, non_blocking) for item in data])
    if isinstance(data, torch.Tensor):  # a subclass: a Parameter, another library's tensor type
        return data if data.device == device else data.to(device, non_blocking=non_blocking)
    if callable(getattr(data, "to", None)):
        return data.to(device)
    if isinstance(data, Mapping):
        return {key: _move(value, device, non_blocking) for key, value in data.items()}
    return data


def rebuild(like: tuple | list, items: list) -> tuple | list:
    """A container of ``like``'s type holding ``items`` (a new list): a list, a tuple, a namedtuple (which takes its
    fields as arguments) or another subclass of either."""
    if type(like) is list:
        return items
    if type(like) is tuple:
        return tuple(items)
    if isinstance(like, tuple) and hasattr(like, "_fields"):
        return type(like)(*items)
    return type(like)(items)


def move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Puts an optimizer's state (Adam's moments, say) on ``device``, next to the parameters it updates."""
    # Adam and its kin keep a 0-d 'step' counter on the host, unless capturable or fused, where it sits beside the
    # parameters: move it only then.
    move_scalars = any(group.get("capturable") or group.get("fused") for group in optimizer.param_groups)
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and (value.dim() > 0 or move_scalars):
                state[key] = value.to(device)
