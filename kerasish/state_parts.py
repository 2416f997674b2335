"""The parts of a run's state that are not a ``state_dict()``, and how the state file holds them (see
:mod:`kerasish.resume`).

- **The random streams.** The global generators (torch's, NumPy's, Python's ``random``), which dropout and most data
  augmentation draw from; the loaders' own ``torch.Generator`` objects (``DataLoader(generator=...)``, a sampler's),
  which shuffle and, each time a loader starts its worker processes, seed them. The workers' own generators live in
  those processes, out of reach: a loader that restarts its workers every epoch seeds them anew from what is saved,
  but one with ``persistent_workers=True`` seeds them once per fit, so a run saved with one cannot be resumed
  exactly (:func:`check_workers_restart`).
- **The history, by column** (:class:`HistoryColumns`): a save converts and checks only the epoch's new row, and
  writes each numeric column as one tensor, so its cost hardly grows with the number of epochs.
- **What weights-only loading reads back** (:func:`check_storable`).
"""

from __future__ import annotations

import random
from array import array
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

_LEAVES = (bool, int, float, complex, str, bytes, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The random generators a loader shuffles with: its own ``generator`` and its sampler's, each once.

    ``None`` (no loader) and a plain iterable have none.
    """
    owners = (
        loader,
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    )
    found: list[torch.Generator] = []
    for owner in owners:
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not seen for seen in found):
            found.append(generator)
    return found


def check_workers_restart(loaders: Mapping[str, Any]) -> None:
    """Raises for a loader (keyed by ``fit``'s argument name) whose worker processes outlive an epoch.

    A ``DataLoader`` with ``persistent_workers=True`` draws its workers' seeds once, when the fit first iterates it,
    and the workers' random state then runs on across epochs, out of the main process's reach. A resumed run would
    draw those seeds at its first epoch instead, from a later point of the generator, so its shuffles, augmentations
    and (through torch's global generator) dropout would part from the uninterrupted run's.
    """
    for argument, loader in loaders.items():
        workers = getattr(loader, "num_workers", 0)
        if getattr(loader, "persistent_workers", False) is True and isinstance(workers, int) and workers > 0:
            raise ValueError(
                f"{argument} is a DataLoader with persistent_workers=True (num_workers={workers}), which a run saved "
                "to state_path cannot resume exactly: its workers are seeded once per fit and keep their random "
                "state across epochs, which the state file cannot hold. Pass persistent_workers=False (its workers "
                "then restart, seeded anew, every epoch), or fit without state_path"
            )


def rng_states() -> dict[str, Any]:
    """The global generators' states as tensors and plain values, which weights-only loading reads back."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # Only where already in use: asking an idle CUDA for its state would initialise it.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "mps": torch.mps.get_rng_state() if torch.backends.mps.is_available() else None,
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Puts back what :func:`rng_states` returned (CUDA and MPS states where those devices are here)."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        # A machine with fewer GPUs than the saved run had gets the states of those it has.
        for device, state in zip(range(torch.cuda.device_count()), states["cuda"], strict=False):
            torch.cuda.set_rng_state(state, device)
    if states["mps"] is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(states["mps"])
    numpy = states["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["name"], keys, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))


class HistoryColumns:
    """The history as the state file holds it, brought up to date one new row at a time.

    The file's form is ``{"length": rows, "columns": {name: column}}``, the columns in the order they first
    appeared. A column of Python floats (or ints) in every row from the first is one float64 (int64) tensor,
    written as a block of bytes; any other is ``{"rows": [row indices], "values": [values]}``, which also says which
    rows lack it. A save converts and checks only the rows added since the last one, so its cost beyond writing
    the bytes does not grow with the run (a list of row dicts, re-checked and pickled value by value at every save,
    made a 1500-epoch run's saves some 17 times dearer than its first: ``benchmarks/state_save.py``).
    :func:`history_rows` reads it back.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.length = 0
        self.order: dict[str, None] = {}
        self.dense: dict[str, array] = {}
        self.sparse: dict[str, dict[str, list]] = {}

    def update(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Takes in the rows past those it has, and returns the history in the file's form."""
        for row in rows[self.length :]:
            self._add({key: _plain(value) for key, value in row.items()})
        return {"length": self.length, "columns": {name: self._column(name) for name in self.order}}

    def _add(self, row: dict[str, Any]) -> None:
        index = self.length
        check_storable(row, self.path, f"state['history'][{index}]")
        for name in [name for name in self.dense if name not in row]:
            self._make_sparse(name)
        for name, value in row.items():
            code = _typecode(value)
            if name not in self.order:
                self.order[name] = None
                if index == 0 and code is not None:
                    self.dense[name] = array(code)
            dense = self.dense.get(name)
            if dense is not None and dense.typecode == code:
                dense.append(value)
                continue
            if dense is not None:
                self._make_sparse(name)
            column = self.sparse.setdefault(name, {"rows": [], "values": []})
            column["rows"].append(index)
            column["values"].append(value)
        self.length += 1

    def _make_sparse(self, name: str) -> None:
        dense = self.dense.pop(name)  # it has had a value in every row so far
        self.sparse[name] = {"rows": list(range(len(dense))), "values": dense.tolist()}

    def _column(self, name: str) -> torch.Tensor | dict[str, list]:
        dense = self.dense.get(name)
        if dense is None:
            return self.sparse[name]
        # A copy: the tensor would otherwise share the array's memory, which the next row's append may move.
        return torch.frombuffer(dense, dtype=torch.float64 if dense.typecode == "d" else torch.int64).clone()


def history_rows(history: Any) -> list[dict[str, Any]]:
    """The rows of a saved history: version 2's columns (:class:`HistoryColumns`), or version 1's list of rows."""
    if isinstance(history, list):
        return history
    rows: list[dict[str, Any]] = [{} for _ in range(history["length"])]
    for name, column in history["columns"].items():
        if isinstance(column, torch.Tensor):
            for row, value in zip(rows, column.tolist(), strict=True):
                row[name] = value
        else:
            for index, value in zip(column["rows"], column["values"], strict=True):
                rows[index][name] = value
    return rows


def _typecode(value: Any) -> str | None:
    """The ``array`` type code that holds ``value`` exactly, for a float or an int64 (not a bool); else ``None``."""
    if type(value) is float:
        return "d"
    if type(value) is int and -(2**63) <= value < 2**63:
        return "q"
    return None


def check_storable(value: Any, path: Path | None, where: str = "state") -> None:
    """Raises, naming the part, when ``value`` holds something ``torch.load(weights_only=True)`` cannot read back."""
    found = _unstorable(value)
    if found is not None:
        inside, part = found
        raise TypeError(
            f"the training state for state_path={str(path)!r} cannot hold {where}{inside}, a {type(part).__name__}: "
            "torch.load(weights_only=True) could not read it back. State dicts (a callback's included) may hold "
            "tensors, numbers, strings, None, and lists, tuples and dicts of them"
        )


def _unstorable(value: Any) -> tuple[str, Any] | None:
    """Where in ``value`` (``"['log'][0]"``) the first part weights-only loading could not read back is, and it.

    The place is spelled out only once something is found, so checking a large state costs little.
    """
    if isinstance(value, _LEAVES):
        return None
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            found = _unstorable(key)
            if found is not None:
                return f" key {key!r}{found[0]}", found[1]
            found = _unstorable(item)
            if found is not None:
                return f"[{key!r}]{found[0]}", found[1]
        return None
    if type(value) in (list, tuple, set):
        for index, item in enumerate(value):
            found = _unstorable(item)
            if found is not None:
                return f"[{index}]{found[0]}", found[1]
        return None
    return "", value


def _plain(value: Any) -> Any:
    """A history value as a plain Python number when NumPy gave it (weights-only loading refuses NumPy scalars)."""
    return value.item() if isinstance(value, np.generic) else value
