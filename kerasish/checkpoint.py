"""Writing and reading weights on disk: atomic writes, and loads that never run pickled code."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import torch


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """Writes ``obj`` with ``torch.save`` to a temporary file beside ``path``, then renames it into place.

    A crash or Ctrl-C mid-write leaves the previous file at ``path`` whole; a reader never sees half a checkpoint.
    """
    path = Path(path)
    # open(..., "xb") creates the file with the umask's mode, as torch.save would; mkstemp's would be 0o600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_weights(path: str | os.PathLike, device: torch.device) -> dict[str, torch.Tensor]:
    """Reads a state dict written by :func:`atomic_save`, with ``weights_only=True`` so no pickled code runs."""
    return torch.load(path, map_location=device, weights_only=True)


WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(state: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """``state`` with the key prefix of a wrapper (DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``) removed.

    A prefix goes only when every key of ``state`` has it and no key of the net's own ``reference`` state does, so
    a net whose first submodule happens to be called ``module`` keeps its names.

    Example:
        >>> strip_wrapper_prefixes({"module.weight": 1, "module.bias": 2}, {"weight": 0, "bias": 0})
        {'weight': 1, 'bias': 2}
    """
    for prefix in WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state) and not any(k.startswith(prefix) for k in reference):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def check_writable(path: str | os.PathLike, argument: str) -> Path:
    """Fails early, naming ``argument``, when ``path`` could not be written at the end of an epoch."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{argument}={str(path)!r} is a directory; give a file path such as {str(path / 'best.pt')!r}")
    if not path.parent.is_dir():
        raise ValueError(f"{argument}={str(path)!r}: the directory {str(path.parent)!r} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"{argument}={str(path)!r}: the directory {str(path.parent)!r} is not writable")
    return path
