"""Continuing a stopped fit: the run's whole state, written after every epoch and read back by ``fit(resume=True)``.

``fit(state_path=...)`` writes, atomically, after each epoch's callbacks and scheduler step (a :data:`STATE_VERSION`
dict that ``torch.load(..., weights_only=True)`` reads back):

- ``version``, ``epoch`` (the last finished epoch), ``epochs`` (the fit's ``epochs``), ``finished`` (``None``,
  ``"stopped"``: a callback set ``model.stop_training``, as early stopping does, or ``"epochs"``: all used up);
- ``columns``: the history's known columns; ``history``: its rows so far, by column;
- ``net``, ``optimizer``, ``lr_scheduler``, ``grad_scaler``: their ``state_dict()`` (the last epoch's weights, not
  the best; ``None`` for what the fit does not have); ``optimizer_class``, ``lr_scheduler_class``: their class names
  (``type(...).__name__``, ``None`` without a scheduler);
- ``callbacks``: ``{"class": name, "state": callback.state_dict()}`` for every callback of the fit, in order;
- ``rng``: torch (CPU, and CUDA and MPS where in use), NumPy and Python ``random``; ``loader_generators`` and
  ``val_loader_generators``: the states of the train and val loaders' own generators (``DataLoader(generator=...)``,
  a sampler's);
- ``world_size``: how many processes trained (absent from files of earlier kerasish versions: 1), and, when more than
  one, ``ranks``: each rank's ``{"rng", "loader_generators", "val_loader_generators"}``, so each resumes its own
  random streams (dropout);
- ``steps_per_epoch``, and where positions are saved (:mod:`kerasish.cursor`) each rank's ``cursor``: passes started,
  batches taken from the current one and the random states at its start;
- written within a pass (``state_every_n_steps``), ``in_epoch``: the epoch in progress, its batches, seconds,
  starting ``lr`` and the optimizer steps so far, and each rank's ``pass_metrics``: the pass's sums so far.

Version 1 files (earlier kerasish) are still read: their history is a list of row dicts, and they lack the classes
and the val loader's generators, so those are neither checked nor restored.

Data-parallel, rank 0 alone reads and writes the file and sends what it read to the others (no shared file system is
needed, and the ranks cannot disagree about whether the file exists); resuming on another number of processes is an
error.

:meth:`RunState.open` checks the file against the fit before the callbacks begin; :meth:`RunState.restore` applies
it after their ``on_fit_begin`` (which resets them) and before the first step. A loader whose workers persist
across epochs cannot be resumed exactly, so with a ``state_path`` it is refused (see :mod:`kerasish.state_parts`).

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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from kerasish.callbacks.base import CallbackList
from kerasish.checkpoint import atomic_save, check_writable
from kerasish.history import History
from kerasish.progress import say
from kerasish.state_parts import (
    HistoryColumns,
    check_storable,
    check_workers_restart,
    history_rows,
    loader_generators,
    rng_states,
    set_rng_states,
)

STATE_VERSION = 2
STATE_KEYS = (  # in every version's files
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
VERSION_2_KEYS = ("optimizer_class", "lr_scheduler_class", "val_loader_generators")


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
    """The state in ``path``, read without running pickled code, after checking it is one this version reads.

    Its ``history`` comes back as a list of row dicts, whatever the file's version.
    """
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
    if state["version"] not in (1, STATE_VERSION):
        raise ValueError(
            f"state_path={str(path)!r} has a training state of version {state['version']!r}; this kerasish reads "
            f"versions 1 to {STATE_VERSION}"
        )
    required = STATE_KEYS + (VERSION_2_KEYS if state["version"] == 2 else ())
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(f"state_path={str(path)!r} is a damaged training state: it lacks the keys {missing}")
    try:
        state["history"] = history_rows(state["history"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise ValueError(
            f"state_path={str(path)!r} is a damaged training state: its history cannot be read ({err!r})"
        ) from err
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
        val_loader: Iterable | None = None,
        cursor: Any = None,
    ) -> None:
        self.path = path
        self.saved = saved
        self.model = model
        self.history = history
        self.callbacks = callbacks
        self.scaler = getattr(getattr(runner, "step_runner", None), "scaler", None)  # the train pass's, under fp16
        self.generators = loader_generators(loader)
        self.val_generators = loader_generators(val_loader)
        self.cursor = cursor
        self.runner = runner
        self.resumed: dict[str, Any] | None = None  # the epoch a resumed run goes on with, if saved within it
        self.history_columns = HistoryColumns(path)

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
        val_loader: Iterable | None = None,
        cursor: Any = None,
    ) -> RunState:
        """Checks ``state_path`` and ``resume``, and with ``resume=True`` reads the file and checks it fits this fit.

        Raises before anything of the fit has changed; the other arguments are the fit's parts the state covers
        (``loader`` and ``val_loader``: ``fit``'s ``train_data`` and ``val_data``).
        """
        path, saved = model.strategy.from_main(lambda: _read_if_there(state_path, resume))
        if path is not None:
            check_workers_restart({"train_data": loader, "val_data": val_loader})
        run = cls(
            path,
            saved,
            model=model,
            history=history,
            callbacks=callbacks,
            runner=runner,
            loader=loader,
            val_loader=val_loader,
            cursor=cursor,
        )
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
        if saved["finished"] == "stopped":
            return epochs + 1
        within = saved.get("in_epoch")
        if within is None:
            return saved["epoch"] + 1
        mine = saved["ranks"][self.model.rank] if "ranks" in saved else saved
        self.runner.carry = {
            "metrics": mine["pass_metrics"],
            "batches": within["batches"],
            "seconds": within["seconds"],
        }
        self.runner.step_runner.optimizer_steps = within["optimizer_steps"]
        self.resumed = within
        return within["epoch"]

    def carried(self, epoch: int) -> dict[str, Any] | None:
        """What a resumed run brings to ``epoch`` when its state was saved within it: batches, seconds, ``lr``."""
        return self.resumed if self.resumed is not None and self.resumed["epoch"] == epoch else None

    def save_within(self, batches: int, seconds: float, *, epochs: int, epoch: int, lr: float) -> None:
        """Writes the run's state within epoch ``epoch``, after its ``batches``-th train batch (an optimizer step).

        Besides what :meth:`save` writes: where the train data is, and the pass's sums so far (every rank's).
        """
        within = {"epoch": epoch, "lr": lr, "batches": batches, "seconds": seconds}
        self._write(epochs, {**within, "optimizer_steps": self.runner.step_runner.optimizer_steps})

    def save(self, *, epochs: int) -> None:
        """Writes the run's state (after an epoch's callbacks and scheduler step) atomically to the path, if any.

        Data-parallel, every rank sends its random states to rank 0 (one collective), which writes the file.
        """
        self._write(epochs, None)

    def _write(self, epochs: int, within: dict[str, Any] | None) -> None:
        if self.path is None:
            return
        ranks = self.model.strategy.gather_objects(self._rank_state(within))
        if not self.model.is_main_process:
            return
        state = self._state(epochs, ranks, within)
        check_storable(state, self.path)
        # Filled in after the check: each history row was checked once, when it first came in.
        state["history"] = self.history_columns.update(self.history.rows)
        atomic_save(state, self.path)

    def _rank_state(self, within: dict[str, Any] | None) -> dict[str, Any]:
        pass_metrics = {} if within is None else {"pass_metrics": self.runner.step_runner.metrics.state_dict()}
        return {
            **pass_metrics,
            "rng": rng_states(),
            "loader_generators": [generator.get_state() for generator in self.generators],
            "val_loader_generators": [generator.get_state() for generator in self.val_generators],
            **({"cursor": self.cursor.state()} if self._positioned else {}),
        }

    @property
    def _positioned(self) -> bool:
        return self.cursor is not None and self.cursor.positioned

    def _state(self, epochs: int, ranks: list[dict[str, Any]], within: dict[str, Any] | None) -> dict[str, Any]:
        epoch = self.history.rows[-1]["epoch"] if self.history.rows else 0
        model, scheduler = self.model, self.model.lr_scheduler
        return {
            "version": STATE_VERSION,
            "epoch": epoch,
            "epochs": epochs,
            "finished": None if within else "stopped" if model.stop_training else "epochs" if epoch >= epochs else None,
            "columns": list(self.history.columns),
            "history": None,  # see save
            "net": model.net.state_dict(),
            "optimizer": model.optimizer.state_dict(),
            "optimizer_class": _class_name(model.optimizer),
            "lr_scheduler": None if scheduler is None else scheduler.state_dict(),
            "lr_scheduler_class": _class_name(scheduler),
            "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
            "callbacks": self._callback_states(),
            "steps_per_epoch": None if self.cursor is None else self.cursor.steps_per_epoch,
            **({} if within is None else {"in_epoch": within}),
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
        if self._positioned:  # rebuilds the pass from its saved start, then leaves the random states as now
            self.cursor.restore(mine["cursor"])
        set_rng_states(mine["rng"])
        for generator, state in zip(self.generators, mine["loader_generators"], strict=True):
            generator.set_state(state)
        if "val_loader_generators" in mine:  # not in version 1 files, which leave them as the fit's loader has them
            for generator, state in zip(self.val_generators, mine["val_loader_generators"], strict=True):
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
        self._check_optimization(where, saved)
        _check_same(where, "train loader generators", len(saved["loader_generators"]), len(self.generators))
        steps = None if self.cursor is None else self.cursor.steps_per_epoch
        _check_same(where, "steps_per_epoch", saved.get("steps_per_epoch"), steps)
        if "val_loader_generators" in saved:  # not in version 1 files
            _check_same(where, "val loader generators", len(saved["val_loader_generators"]), len(self.val_generators))

    def _check_optimization(self, where: str, saved: dict[str, Any]) -> None:
        """The optimizer, scheduler and gradient scaler: the same kinds as the saved run's, with as many parameters."""
        model = self.model
        _check_class(where, "optimizer", saved.get("optimizer_class"), model.optimizer)
        saved_groups = [len(group["params"]) for group in saved["optimizer"]["param_groups"]]
        groups = [len(group["params"]) for group in model.optimizer.param_groups]
        _check_same(where, "optimizer's parameters per param group", saved_groups, groups)
        for name, ours in (("lr_scheduler", model.lr_scheduler), ("grad_scaler", self.scaler)):
            if (saved[name] is None) != (ours is None):
                had = "had" if saved[name] is not None else "had no"
                raise ValueError(
                    f"{where}: the saved run {had} {name} and this fit {'has none' if ours is None else 'has one'}; "
                    f"resume with the same {'precision' if name == 'grad_scaler' else name}"
                )
        _check_class(where, "lr_scheduler", saved.get("lr_scheduler_class"), model.lr_scheduler)


def _class_name(part: Any) -> str | None:
    return None if part is None else type(part).__name__


def _check_class(where: str, name: str, saved: str | None, ours: Any) -> None:
    """Another kind's state would load silently (StepLR's into ExponentialLR) or fail at a step (Adam's into SGD).

    ``saved`` is ``None`` for a version 1 file, which does not say, and for a part the saved run did not have.
    """
    if saved is None or ours is None or type(ours).__name__ == saved:
        return
    given = type(ours).__name__
    raise ValueError(
        f"{where}: the saved run's {name} was {saved} and this fit's is {given}: {saved}'s state cannot go on in "
        f"{given}. Resume with the same kind of {name} as the saved run ({saved}), or start a new run with another "
        "state_path"
    )


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
