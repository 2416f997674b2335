"""Continuing a stopped fit: the run's whole state, written after every epoch and read back by ``fit(resume=True)``.

``fit(state_path=...)`` writes, atomically, after each epoch's callbacks and scheduler step (a :data:`STATE_VERSION`
dict that ``torch.load(..., weights_only=True)`` reads back):

- ``version``, ``epoch`` (the last finished epoch), ``epochs`` (the fit's ``epochs``), ``finished`` (``None``,
  ``"stopped"``: a callback set ``model.stop_training``, as early stopping does, or ``"epochs"``: all used up);
- ``columns`` and ``history``: the history's columns and its rows so far;
- ``net``, ``optimizer``, ``lr_scheduler``, ``grad_scaler``: their ``state_dict()`` (the last epoch's weights, not
  the best; ``None`` for what the fit does not have);
- ``callbacks``: ``{"class": name, "state": callback.state_dict()}`` for every callback of the fit, in order;
- ``rng``: torch (CPU, and CUDA and MPS where in use), NumPy and Python ``random``; ``loader_generators``: the states
  of the train loader's own generators (``DataLoader(generator=...)``, its sampler's);
- ``world_size``: how many processes trained (absent from files of earlier kerasish versions: 1), and, when more than
  one, ``ranks``: each rank's ``{"rng", "loader_generators"}``, so each resumes its own random streams (dropout).

Data-parallel, rank 0 alone reads and writes the file and sends what it read to the others (no shared file system is
needed, and the ranks cannot disagree about whether the file exists); resuming on another number of processes is an
error.

:meth:`RunState.open` checks the file against the fit before the callbacks begin; :meth:`RunState.restore` applies
it after their ``on_fit_begin`` (which resets them) and before the first step.

Example:
    A script trains 4 epochs; its first launch is cut after 2, and the relaunch (the same script, from scratch, with
    ``resume=True``) ends with the history and weights of an uninterrupted run:

    >>> import os, tempfile
    >>> import torch
    >>> from torch import nn
    >>> from kerasish import KerasModel
    >>> x = torch.ones(4, 1)
    >>> def launch(epochs, state_path):
    ...     net = nn.Linear(1, 1, bias=False)
    ...     _ = nn.init.zeros_(net.weight)
    ...     model = KerasModel(net, nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.125), device="cpu")
    ...     model.fit([(x, 2 * x)], epochs=epochs, state_path=state_path, resume=True, verbose=0)
    ...     return model
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "state.pt")
    ...     first = launch(2, path)  # no state file yet: a fresh run, saved after each epoch
    ...     second = launch(4, path)  # goes on with epoch 3
    ...     saved = torch.load(path, weights_only=True)
    >>> first.history["train_loss"].tolist()
    [4.0, 2.25]
    >>> second.history["train_loss"].tolist(), second.net.weight.item()
    ([4.0, 2.25, 1.265625, 0.7119140625], 1.3671875)
    >>> saved["epoch"], saved["finished"], [entry["class"] for entry in saved["callbacks"]]
    (4, 'epochs', ['BestWeights', 'EarlyStopping'])
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kerasish.callbacks.base import CallbackList
from kerasish.checkpoint import atomic_save, check_writable
from kerasish.history import History
from kerasish.progress import say

STATE_VERSION = 1
STATE_KEYS = (
    "version",
    "epoch",
    "epochs",
    "finished",
    "columns",
    "history",
    "net",
    "optimizer",
    "lr_scheduler",
    "grad_scaler",
    "callbacks",
    "rng",
    "loader_generators",
)
_LEAVES = (bool, int, float, complex, str, bytes, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


def check_resume_args(state_path: Any, resume: Any) -> Path | None:
    """``fit``'s ``state_path`` as a path (``None`` without one); raises when the pair makes no sense.

    An existing file is never replaced without ``resume=True``: it may hold a run someone means to continue.
    """
    if not isinstance(resume, bool):
        raise TypeError(f"resume={resume!r} is not valid; use True or False")
    if state_path is None:
        if resume:
            raise ValueError(
                "resume=True needs state_path: the file an earlier fit(state_path=...) wrote after each epoch"
            )
        return None
    if not isinstance(state_path, (str, os.PathLike)):
        raise TypeError(f"state_path must be a str or os.PathLike; got {type(state_path).__name__}: {state_path!r}")
    path = check_writable(state_path, "state_path")
    if path.exists() and not resume:
        raise ValueError(
            f"state_path={str(path)!r} already exists; pass resume=True to continue the run saved there, or choose "
            "another state_path (or delete the file) to start a new run"
        )
    return path


def _read_if_there(state_path: Any, resume: Any) -> tuple[Path | None, dict[str, Any] | None]:
    path = check_resume_args(state_path, resume)
    return path, read_state(path) if path is not None and path.exists() else None


def read_state(path: Path) -> dict[str, Any]:
    """The state in ``path``, read without running pickled code, after checking it is one this version reads."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}" if str(err).strip() else repr(err)
        raise ValueError(
            f"state_path={str(path)!r} is not a kerasish training state: torch.load(weights_only=True) could not read "
            f"it ({reason})"
        ) from err
    if not isinstance(state, dict) or "version" not in state:
        holds = f"a dict with keys {sorted(map(str, state))[:5]}" if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"state_path={str(path)!r} is not a kerasish training state: it holds {holds} and no 'version'. Weights "
            "written by save_ckpt or ckpt_path are not one; fit(state_path=...) writes them"
        )
    if state["version"] != STATE_VERSION:
        raise ValueError(
            f"state_path={str(path)!r} has a training state of version {state['version']!r}; this kerasish reads "
            f"version {STATE_VERSION}"
        )
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise ValueError(f"state_path={str(path)!r} is a damaged training state: it lacks the keys {missing}")
    return state


class RunState:
    """The state file of one fit: checked before the fit begins, applied after ``on_fit_begin``, written per epoch.

    Without a ``path`` every method does nothing, so ``fit`` reads the same with and without ``state_path``.
    """

    def __init__(
        self,
        path: Path | None,
        saved: dict[str, Any] | None,
        *,
        model: Any,
        history: History,
        callbacks: CallbackList,
        runner: Any,
        loader: Iterable,
    ) -> None:
        self.path = path
        self.saved = saved
        self.model = model
        self.history = history
        self.callbacks = callbacks
        self.scaler = getattr(getattr(runner, "step_runner", None), "scaler", None)  # the train pass's, under fp16
        self.generators = loader_generators(loader)

    @classmethod
    def open(
        cls,
        state_path: Any,
        resume: Any,
        *,
        model: Any,
        history: History,
        callbacks: CallbackList,
        runner: Any,
        loader: Iterable,
    ) -> RunState:
        """Checks ``state_path`` and ``resume``, and with ``resume=True`` reads the file and checks it fits this fit.

        Raises before anything of the fit has changed; the other arguments are the fit's parts the state covers.
        """
        path, saved = model.strategy.from_main(lambda: _read_if_there(state_path, resume))
        run = cls(path, saved, model=model, history=history, callbacks=callbacks, runner=runner, loader=loader)
        if saved is not None:
            run._check_saved(saved)
        return run

    def restore(self, *, epochs: int, verbose: int) -> int:
        """Loads the saved run into the fit; returns the first epoch to run.

        Without a saved run: 1. A run that a callback stopped trains no further: the first epoch returned is then
        past ``epochs``.
        """
        if self.path is not None:  # a callback whose state could not be read back fails now, not after an epoch
            check_storable({"callbacks": self._callback_states()}, self.path)
        saved = self.saved
        if saved is None:
            return 1
        self._load(saved)
        if verbose:
            say(_resume_line(saved, self.path, epochs), self.model)
        return epochs + 1 if saved["finished"] == "stopped" else saved["epoch"] + 1

    def save(self, *, epochs: int) -> None:
        """Writes the run's state (after an epoch's callbacks and scheduler step) atomically to the path, if any.

        Data-parallel, every rank sends its random states to rank 0 (one collective), which writes the file.
        """
        if self.path is None:
            return
        ranks = self.model.strategy.gather_objects(self._rank_state())
        if not self.model.is_main_process:
            return
        state = self._state(epochs, ranks)
        check_storable(state, self.path)
        atomic_save(state, self.path)

    def _rank_state(self) -> dict[str, Any]:
        return {"rng": rng_states(), "loader_generators": [generator.get_state() for generator in self.generators]}

    def _state(self, epochs: int, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        epoch = self.history.rows[-1]["epoch"]
        model, scheduler = self.model, self.model.lr_scheduler
        return {
            "version": STATE_VERSION,
            "epoch": epoch,
            "epochs": epochs,
            "finished": "stopped" if model.stop_training else "epochs" if epoch >= epochs else None,
            "columns": list(self.history.columns),
            "history": [{key: _plain(value) for key, value in row.items()} for row in self.history.rows],
            "net": model.net.state_dict(),
            "optimizer": model.optimizer.state_dict(),
            "lr_scheduler": None if scheduler is None else scheduler.state_dict(),
            "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
            "callbacks": self._callback_states(),
            **ranks[0],
            "world_size": len(ranks),
            **({"ranks": ranks} if len(ranks) > 1 else {}),
        }

    def _callback_states(self) -> list[dict[str, Any]]:
        return [{"class": type(cb).__name__, "state": cb.state_dict()} for cb in self.callbacks.callbacks]

    def _load(self, saved: dict[str, Any]) -> None:
        model = self.model
        model.net.load_state_dict(saved["net"])
        model.optimizer.load_state_dict(saved["optimizer"])
        if saved["lr_scheduler"] is not None:
            model.lr_scheduler.load_state_dict(saved["lr_scheduler"])
        if saved["grad_scaler"] is not None:
            self.scaler.load_state_dict(saved["grad_scaler"])
        for callback, entry in zip(self.callbacks.callbacks, saved["callbacks"], strict=True):
            callback.load_state_dict(entry["state"])
        for row in saved["history"]:
            self.history.append(row)
        mine = saved["ranks"][model.rank] if "ranks" in saved else saved
        set_rng_states(mine["rng"])
        for generator, state in zip(self.generators, mine["loader_generators"], strict=True):
            generator.set_state(state)

    def _check_saved(self, saved: dict[str, Any]) -> None:
        """Everything ``_load`` relies on, so that a mismatch fails before any part of the fit has changed."""
        where = f"state_path={str(self.path)!r}"
        world_size = saved.get("world_size", 1)
        if world_size != self.model.world_size:
            raise ValueError(
                f"{where}: the saved run trained on {world_size} process(es) and this fit runs on "
                f"{self.model.world_size}; resume with the same number of processes (torchrun --nnodes and "
                "--nproc_per_node), since each rank's data shard and random state belong to that number"
            )
        names = [type(callback).__name__ for callback in self.callbacks.callbacks]
        _check_same(where, "callbacks", [entry["class"] for entry in saved["callbacks"]], names)
        _check_same(where, "history columns", saved["columns"], self.history.columns)
        _check_net(where, saved["net"], self.model.net.state_dict())
        saved_groups = [len(group["params"]) for group in saved["optimizer"]["param_groups"]]
        groups = [len(group["params"]) for group in self.model.optimizer.param_groups]
        _check_same(where, "optimizer's parameters per param group", saved_groups, groups)
        for name, ours in (("lr_scheduler", self.model.lr_scheduler), ("grad_scaler", self.scaler)):
            if (saved[name] is None) != (ours is None):
                had = "had" if saved[name] is not None else "had no"
                raise ValueError(
                    f"{where}: the saved run {had} {name} and this fit {'has none' if ours is None else 'has one'}; "
                    f"resume with the same {'precision' if name == 'grad_scaler' else name}"
                )
        _check_same(where, "train loader generators", len(saved["loader_generators"]), len(self.generators))


def _check_same(where: str, what: str, saved: Any, ours: Any) -> None:
    if saved != ours:
        raise ValueError(
            f"{where}: the saved run's {what} were {saved}, this fit's are {ours}; resume with the same fit "
            "arguments, net, optimizer, loaders and callbacks (same kinds, same order) as the saved run"
        )


def _check_net(where: str, saved: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> None:
    differing = sorted(set(saved) ^ set(ours))
    differing += [key for key in ours if key in saved and tuple(saved[key].shape) != tuple(ours[key].shape)]
    if differing:
        raise ValueError(
            f"{where}: the net's state differs from the saved run's in {differing[:5]}"
            f"{' and more' if len(differing) > 5 else ''}; resume with the same net"
        )


def _resume_line(saved: dict[str, Any], path: Path | None, epochs: int) -> str:
    line = f"resuming from epoch {saved['epoch']} of {path}"
    if saved["finished"] == "stopped":
        return f"{line}: the run had been stopped (model.stop_training, e.g. early stopping); nothing to train"
    if saved["epoch"] >= epochs:
        return f"{line}: epochs={epochs} are done; nothing to train (pass a larger epochs to go on)"
    return line


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The random generators a loader shuffles with: its own ``generator`` and its sampler's, each once."""
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


def check_storable(value: Any, path: Path, where: str = "state") -> None:
    """Raises, naming the part, when ``value`` holds something ``torch.load(weights_only=True)`` cannot read back."""
    if isinstance(value, _LEAVES):
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            check_storable(key, path, f"{where} key {key!r}")
            check_storable(item, path, f"{where}[{key!r}]")
    elif type(value) in (list, tuple, set):
        for index, item in enumerate(value):
            check_storable(item, path, f"{where}[{index}]")
    else:
        raise TypeError(
            f"the training state for state_path={str(path)!r} cannot hold {where}, a {type(value).__name__}: "
            "torch.load(weights_only=True) could not read it back. State dicts (a callback's included) may hold "
            "tensors, numbers, strings, None, and lists, tuples and dicts of them"
        )


def _plain(value: Any) -> Any:
    """A history value as a plain Python number when NumPy gave it (weights-only loading refuses NumPy scalars)."""
    return value.item() if isinstance(value, np.generic) else value
