"""Writing and reading weights on disk: atomic writes, and loads that never run pickled code nor half-load a net."""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The errors a write gets when the file system has no room left for it, and how a message says so.
FULL_DISK = {errno.ENOSPC: "no space left on device"}
if hasattr(errno, "EDQUOT"):  # not on Windows
    FULL_DISK[errno.EDQUOT] = "disk quota exceeded"

# torch.save reports a write that came up short as a RuntimeError of its zip writer, without the errno, e.g.
# "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598".
TORCH_WRITE_FAILURE = re.compile(r"inline_container|PytorchStreamWriter|unexpected pos|file write failed")

# How many keys of each kind a misfit's message lists before "and N more".
LISTED = 5


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """Writes ``obj`` with ``torch.save`` to a temporary file beside ``path``, then renames it into place.

    A crash or Ctrl-C mid-write leaves the previous file at ``path`` whole; a reader never sees half a checkpoint.
    Missing parent directories are created. Temporary files that earlier writers of ``path`` left behind when they
    were killed mid-write are deleted first (see :func:`remove_leftovers`), which also frees their space for this write.

    Raises:
        OSError: the write failed: the message names ``path`` and the cause, with how much space is left when the
            disk is full (``errno`` is ``ENOSPC`` then, even when torch reported it as a ``RuntimeError``); the
            original error is chained. The temporary file is removed; a previous file at ``path`` is left as it was.
    """
    path = Path(path)
    # open(..., "xb") creates the file with the umask's mode, as torch.save would; mkstemp's would be 0o600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path)
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        error = write_error(path, tmp, err)  # before the temporary file goes: it says how much got written
        tmp.unlink(missing_ok=True)
        if error is None:
            raise
        raise error from err


def remove_leftovers(path: Path) -> list[Path]:
    """Deletes the temporary files of ``path`` whose writer process is gone, and returns them.

    :func:`atomic_save` writes ``.<name>.<pid>.<hex>.tmp`` beside ``path``; a writer killed mid-write (``kill -9``,
    out of memory, a preempted node) leaves it behind, as large as what it was writing. Only the temporary files of
    this very name go, and only those whose process id is not running on this machine: never another file's, never
    a live writer's (a different process id that still runs, or this process's). Costs one listing of the directory.
    Does nothing on Windows, where no signal-free check of a process id exists in the standard library.
    """
    if os.name == "nt":
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]{{8}}\.tmp")
    removed: list[Path] = []
    try:
        with os.scandir(path.parent) as entries:
            for entry in entries:
                match = pattern.fullmatch(entry.name)
                if match and not _is_running(int(match[1])):
                    Path(entry.path).unlink(missing_ok=True)  # another process may be cleaning up the same leftover
                    removed.append(Path(entry.path))
    except OSError as err:  # a leftover that cannot go must not cost this write; say so and carry on
        warnings.warn(f"could not remove what earlier writes of {str(path)!r} left behind: {err}", stacklevel=3)
    return removed


def _is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process here (this process included); any doubt counts as live."""
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: checks that the process exists, sends nothing
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but belongs to another user
        return True
    return True


def write_error(path: Path, tmp: Path, err: BaseException) -> OSError | None:
    """The error :func:`atomic_save` raises for ``err``, naming ``path`` and the cause; ``None``: re-raise ``err``.

    Only failures to write are rewritten: an ``OSError``, or torch's ``RuntimeError`` about its zip writer. Anything
    else (an object torch cannot save, Ctrl-C) goes on as it was.
    """
    code = _errno_of(err)
    torch_write = isinstance(err, RuntimeError) and TORCH_WRITE_FAILURE.search(str(err)) is not None
    if not isinstance(err, OSError) and not torch_write:
        return None
    original = f"{type(err).__name__}: {_first_line(err)}"
    if code in FULL_DISK or (torch_write and code is None):
        cause = FULL_DISK.get(code, "torch could not write all of it; the disk is probably full")
        message = f"could not write {str(path)!r}: {cause} ({_space(path.parent, tmp)}) — {original}"
        code = errno.ENOSPC if code is None else code
    else:
        message = f"could not write {str(path)!r} — {original}"
    # The same kind of OSError (PermissionError, ...), so that an ``except`` written for the original still holds.
    kind = type(err) if isinstance(err, OSError) and type(err).__module__ == "builtins" else OSError
    error = kind(message)
    error.errno = code
    return error


def _errno_of(err: BaseException) -> int | None:
    """The ``errno`` of the first ``OSError`` among ``err`` and the errors it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current.errno
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _space(directory: Path, tmp: Path) -> str:
    """How much is free on ``directory``'s file system, and how much of ``tmp`` was written before the failure."""
    try:
        free = shutil.disk_usage(nearest_existing(directory)).free  # the directory itself may not have been made
        written = tmp.stat().st_size if tmp.exists() else 0
    except OSError as err:
        return f"free space unknown: {err}"
    return (
        f"{_size(free)} free on that file system, with {_size(written)} of the new file written; any previous "
        "file there is intact"
    )


def _size(n: int) -> str:
    """``n`` bytes for a person: ``512 B``, ``4.0 KiB``, ``1.5 GiB``."""
    if n < 1024:
        return f"{n} B"
    amount = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        amount /= 1024
        if amount < 1024:
            return f"{amount:.1f} {unit}"
    return f"{amount / 1024:.1f} TiB"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


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


def load_into(net: nn.Module, state: Any, path: str | os.PathLike | None = None) -> None:
    """Loads the state dict ``state`` into ``net`` after checking that all of it fits: on a misfit nothing is copied.

    ``net.load_state_dict`` refuses a state that does not fit too, but only after copying every tensor that did, which
    leaves the net half old weights, half the file's. Here missing keys, unexpected keys and shapes are checked
    first, and one error lists them all. A wrapper's key prefix is removed first, as :func:`strip_wrapper_prefixes`
    does. A tensor of another dtype is cast to the net's, as ``load_state_dict`` does (a float16 file loads into a
    float32 net).

    Args:
        net: the module to load into.
        state: parameter and buffer tensors by name, as :func:`load_weights` returns them.
        path: the file ``state`` was read from, named in errors; ``None``: they say "the state dict".

    Raises:
        TypeError: ``state`` is not a mapping.
        RuntimeError: ``state`` does not fit ``net``. The message lists the missing keys, the unexpected keys and
            the shape mismatches (the first five of each kind, then how many more), and ``net`` is unchanged.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(2, 1)
        >>> before = net.weight.clone()
        >>> try:
        ...     load_into(net, {"weight": torch.ones(1, 3), "bias": torch.ones(1)}, "w.pt")
        ... except RuntimeError as err:
        ...     print(err)
        'w.pt' does not fit the net, so nothing was loaded and the net is unchanged:
          Shape mismatches (1): 'weight' is (1, 3) in the file, (1, 2) in the net
        >>> torch.equal(net.weight, before), net.bias.item() == 1.0  # the bias fitted, yet was not copied
        (True, False)
    """
    where = "the state dict" if path is None else repr(str(path))
    if not isinstance(state, Mapping):
        raise TypeError(f"{where} holds a {type(state).__name__}, not a state dict (tensors by parameter name)")
    reference = net.state_dict(keep_vars=True)  # keep_vars: the parameters themselves, so lazy ones can be told apart
    state = strip_wrapper_prefixes(state, reference)
    misfits = _misfits(state, reference, "the file" if path is not None else "the state")
    if misfits:
        if "net" in state and "version" in state:
            misfits.append("  It looks like a training state written by fit(state_path=...): the weights are its 'net'")
        raise RuntimeError(
            f"{where} does not fit the net, so nothing was loaded and the net is unchanged:\n" + "\n".join(misfits)
        )
    net.load_state_dict(state)


def _misfits(state: Mapping[str, Any], reference: Mapping[str, Any], source: str) -> list[str]:
    """One line per kind of misfit between ``state`` and the net's ``reference`` state; empty when it fits."""
    missing = [repr(key) for key in reference if key not in state]
    unexpected = [repr(key) for key in state if key not in reference]
    shapes = [_shape_misfit(key, state[key], reference[key], source) for key in reference if key in state]
    kinds = (
        (f"Missing keys, in the net but not in {source}", missing),
        (f"Unexpected keys, in {source} but not in the net", unexpected),
        ("Shape mismatches", [line for line in shapes if line is not None]),
    )
    return [f"  {title} ({len(items)}): {_first_few(items)}" for title, items in kinds if items]


def _shape_misfit(key: str, value: Any, target: Any, source: str) -> str | None:
    """Why ``value`` cannot be copied into the net's ``target``, as ``load_state_dict`` would find; ``None``: it can."""
    if not isinstance(target, torch.Tensor) or nn.parameter.is_lazy(target):
        return None  # a module's extra state, or a lazy parameter that takes its shape from the file
    if not torch.overrides.is_tensor_like(value):
        return f"{key!r} is a {type(value).__name__} in {source}, a tensor in the net"
    if target.dim() == 0 and value.dim() == 1:
        return None  # load_state_dict takes a 1-d tensor's first element for a 0-d one (files of torch <= 0.3)
    if value.shape != target.shape:
        return f"{key!r} is {tuple(value.shape)} in {source}, {tuple(target.shape)} in the net"
    return None


def _first_few(items: list[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown if len(items) <= LISTED else f"{shown} and {len(items) - LISTED} more"


def check_writable(path: str | os.PathLike, argument: str) -> Path:
    """Fails early, naming ``argument``, when ``path`` could not be written at the end of an epoch.

    Its directory need not exist yet: it is created with the first file written there (by :func:`atomic_save`, a
    ``CSVLogger``, a ``LivePlot``), not here, so that a fit whose arguments fail their checks leaves no empty
    directories behind. It must then be possible to create: the nearest existing ancestor must be a writable
    directory. A ``ModelCheckpoint`` template is checked as far as its fixed part goes: the directories named
    by fields do not exist, so the check falls back to the ancestors before them.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{argument}={str(path)!r} is a directory; give a file path such as {str(path / 'best.pt')!r}")
    check_directory(path.parent, argument, path)
    return path


def check_directory(directory: Path, argument: str, given: str | os.PathLike | None = None) -> Path:
    """Fails, naming ``argument`` and its value ``given``, unless ``directory`` is or could become a writable directory.

    It could when its nearest existing ancestor is a writable directory; nothing is created here.
    """
    value = f"{argument}={str(directory if given is None else given)!r}"
    existing = nearest_existing(directory)
    if not existing.is_dir():
        if existing == directory:
            raise ValueError(f"{value}: {str(directory)!r} is a file, not a directory")
        raise ValueError(f"{value}: the directory {str(directory)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK):
        if existing == directory:
            raise ValueError(f"{value}: the directory {str(directory)!r} is not writable")
        raise ValueError(
            f"{value}: the directory {str(directory)!r} does not exist and cannot be created: "
            f"{str(existing)!r} is not writable"
        )
    return directory


def nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else its closest ancestor that does (``.`` or the root at the latest)."""
    return next((parent for parent in (path, *path.parents) if parent.exists()), Path(path.anchor or "."))
