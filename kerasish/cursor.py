"""Where a fit is in its train data: a whole pass per epoch, or ``steps_per_epoch`` batches from a stream that
carries over between epochs, and the exact batch a resumed run goes on from.

By default an epoch is one pass over the train loader, as ``for batch in loader`` gives it. With
``fit(steps_per_epoch=N)`` an epoch is ``N`` batches: the loader's iterator carries over from one epoch to the next,
and when it is exhausted a new pass starts (reshuffled as a fresh pass would be; data-parallel, with ``set_epoch``
of the pass's number). That is how an endless ``IterableDataset`` trains.

When the run state is saved at a point inside a pass (``state_every_n_steps``, or any epoch end with
``steps_per_epoch``), the cursor is *positioned*: it notes the random states at each pass's start and counts the
batches taken; the pass itself is the loader's own, so a positioned fit trains on exactly what an unpositioned one
does. A resumed run puts the pass-start states back, builds the same loader around the loader's own sampler (or
batch sampler) with the taken batches dropped (:class:`SkipFirst`), makes it draw its seed and its order as the
original pass did, then goes on with the random states of the moment it was saved: the same batches in the same
order from the next one on, the consumed ones skipped at the index level, never read again. That works for a
``DataLoader`` over a map-style data set with any sampler (sequential, shuffled with a generator,
``DistributedSampler``) and for a list of batches.

A loader that keeps its own position, with ``state_dict`` and ``load_state_dict`` (torchdata's
``StatefulDataLoader``, map-style or over an ``IterableDataset``, or anything like it), is not rebuilt: the state
holds the loader's ``state_dict()``, taken after the last batch trained on, and a resumed run hands it to
``load_state_dict`` before it asks the loader for an iterator, which goes on from the next batch (how much data that
reads again is the loader's: a ``StatefulDataLoader`` skips a sampler's indices unread, and an iterable data set
with a ``state_dict`` of its own resumes from it). A ``DistributedSampler`` in it is given ``set_epoch`` of the
pass's number before each pass, and before a resumed pass goes on. Between two passes the loader's state is that of
a pass that has ended, which a ``StatefulDataLoader`` given it back would replay before starting the next, its
shuffling sampler's generator put back to the ended pass's start, so that the next pass would be shuffled otherwise
than in the uninterrupted run. There the state holds only the data set's ``state_dict()``, if it has one, and the
next pass starts afresh from the generators as the run state restores them.

Anything else is refused when a position must be saved.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler

from kerasish.checks import integer
from kerasish.sharding import KEPT_SETTINGS
from kerasish.state_parts import loader_generators

# A loader rebuilt to go on with a pass keeps these settings; its batches come from SkipFirst, so batch_size, shuffle,
# sampler and drop_last go.
_KEPT = tuple(name for name in KEPT_SETTINGS if name not in ("batch_size", "drop_last"))


class SkipFirst(Sampler):
    """A loader's own sampler or batch sampler with its first ``skip`` items dropped, unread: a pass gone on with.

    The source is iterated step by step, as the loader itself iterates it, so it draws its random numbers at the
    same points: its order when its first item is asked for (:meth:`start` asks at once, for a resumed pass whose
    random states move on right after), and whatever it draws when it runs out (a ``RandomSampler`` draws once more
    there) when the pass ends.
    """

    def __init__(self, source: Iterable, skip: int) -> None:
        self.source, self.skip = source, skip
        self._iterator: Iterator | None = None

    def start(self) -> None:
        """Iterates the source past its first ``skip`` items, now (once)."""
        if self._iterator is None:
            self._iterator = iter(self.source)
            for _ in range(self.skip):
                next(self._iterator)

    def __iter__(self) -> Iterator:
        # A generator, like BatchSampler's: nothing is drawn until the first index is asked for.
        self.start()
        yield from self._iterator

    def __len__(self) -> int:
        return len(self.source) - self.skip


def check_long_run_args(
    steps_per_epoch: Any, validation_steps: Any, val_data: Any, state_every_n_steps: Any, state_path: Any
) -> tuple[int | None, int | None, int | None]:
    """``fit``'s ``steps_per_epoch``, ``validation_steps`` and ``state_every_n_steps``: ``None`` or counts >= 1."""
    every = None
    if state_every_n_steps is not None:
        every = integer(state_every_n_steps, "state_every_n_steps", minimum=1)
        if state_path is None:
            raise ValueError(f"state_every_n_steps={every} needs state_path: the file the run state is written to")
    steps, val_steps = _steps(steps_per_epoch, validation_steps, val_data)
    return steps, val_steps, every


def _steps(steps_per_epoch: Any, validation_steps: Any, val_data: Any) -> tuple[int | None, int | None]:
    steps = None if steps_per_epoch is None else integer(steps_per_epoch, "steps_per_epoch", minimum=1)
    if validation_steps is None:
        return steps, None
    if val_data is None:
        raise ValueError(f"validation_steps={validation_steps!r} needs val_data, but val_data is None")
    return steps, integer(validation_steps, "validation_steps", minimum=1)


def make_cursor(loader: Iterable, *, steps_per_epoch: int | None, strategy: Any, saves_positions: bool) -> TrainCursor:
    """The fit's :class:`TrainCursor`; positioned when the run state must say where in a pass the fit is.

    Raises:
        ValueError: a position must be saved, but ``loader`` neither can be rebuilt to skip batches by index nor
            keeps its own position (a plain ``DataLoader`` over an ``IterableDataset``, a generator).
    """
    if saves_positions and not positionable(loader):
        kind = (
            f"a DataLoader over an {type(loader.dataset).__name__}"
            if isinstance(loader, DataLoader)
            else f"a {type(loader).__name__}"
        )
        raise ValueError(
            f"train_data is {kind}, whose position within a pass cannot be saved, and this fit saves one "
            "(state_path with steps_per_epoch or state_every_n_steps); resume needs a DataLoader over a map-style "
            "dataset (any sampler), a list of batches, or a loader with state_dict and load_state_dict (torchdata's "
            "StatefulDataLoader), or fit without state_path"
        )
    return TrainCursor(loader, steps_per_epoch=steps_per_epoch, strategy=strategy, positioned=saves_positions)


def positionable(loader: Any) -> bool:
    """Whether the cursor can save and restore a position in ``loader``'s passes.

    Three kinds can: a loader that keeps its own position (:func:`keeps_state`: torchdata's ``StatefulDataLoader``),
    a ``DataLoader`` over a map-style data set, and a list of batches (the last two rebuilt to skip batches by index).
    """
    if isinstance(loader, (list, tuple)) or keeps_state(loader):
        return True
    return isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)


def keeps_state(part: Any) -> bool:
    """Whether ``part`` (a loader, a data set) has callable ``state_dict`` and ``load_state_dict``."""
    return callable(getattr(part, "state_dict", None)) and callable(getattr(part, "load_state_dict", None))


class TrainCursor:
    """The train batches of each epoch, and the position in the current pass.

    Args:
        loader: the train loader (data-parallel: already given its ``DistributedSampler``).
        steps_per_epoch: batches per epoch, carried over between epochs; ``None``: one pass per epoch.
        strategy: the model's :class:`~kerasish.distributed.Strategy` (``set_epoch`` before each pass).
        positioned: note each pass's starting random states and count its batches (or, for a loader that
            :func:`keeps_state`, ask it), so that :meth:`state` can say where the fit is and :meth:`restore` can
            go on from there (see the module's docstring).
    """

    def __init__(self, loader: Iterable, *, steps_per_epoch: int | None, strategy: Any, positioned: bool) -> None:
        self.loader = loader
        self.steps_per_epoch = steps_per_epoch
        self.strategy = strategy
        self.positioned = positioned
        self.passes = 0  # passes started
        self.position = 0  # batches taken from the current pass
        self._iterator: Iterator | None = None
        self._pass_start: dict[str, Any] | None = None
        self._generators = loader_generators(loader)
        self._own_state = positioned and keeps_state(loader)  # the loader says where it is; nothing is rebuilt

    def batches(self, epoch: int, done: int = 0) -> Iterable:
        """The epoch's train batches: the loader itself for a whole pass, else a stream of the epoch's batches.

        ``done``: batches of this epoch trained before a resumed run went on with it.
        """
        if self.steps_per_epoch is None and not self.positioned:
            # A DistributedSampler shuffles by (seed, epoch): a resumed run reshuffles as the uninterrupted one did.
            self.strategy.set_epoch(self.loader, epoch)
            self.passes = epoch
            return self.loader
        return self._take(None if self.steps_per_epoch is None else self.steps_per_epoch - done)

    def total(self) -> int | None:
        """How many batches an epoch has, when known (for the progress bar)."""
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        try:
            return len(self.loader)
        except TypeError:
            return None

    def _take(self, count: int | None) -> Iterator:
        """``count`` batches, starting new passes as needed; ``None``: the rest of the current (or a new) pass."""
        taken = 0
        while count is None or taken < count:
            if self._iterator is None:
                if count is None and taken:
                    return
                self._start_pass()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                if self.position == 0:
                    raise ValueError("train_data yielded no batches in a pass") from None
                if count is None:
                    return
                continue
            self.position += 1
            taken += 1
            yield batch

    def _start_pass(self) -> None:
        self.passes += 1
        self.position = 0
        self.strategy.set_epoch(self.loader, self.passes)
        if self.positioned and not self._own_state:
            self._pass_start = self._rng_now()
        self._iterator = self._pass_iterator(skip=0)

    def _pass_iterator(self, skip: int) -> Iterator:
        """The pass from batch ``skip`` on; a fresh pass is the loader's own iterator, drawing as it always does."""
        if skip == 0 or self._own_state:
            return iter(self.loader)
        if isinstance(self.loader, (list, tuple)):
            return iter(self.loader[skip:])
        loader: DataLoader = self.loader
        settings = {name: getattr(loader, name) for name in _KEPT if hasattr(loader, name)}
        if loader.batch_sampler is None:  # batch_size=None: the sampler's indices are the batches
            rest = SkipFirst(loader.sampler, skip)
            iterator = iter(DataLoader(loader.dataset, sampler=rest, batch_size=None, **settings))
        else:
            rest = SkipFirst(loader.batch_sampler, skip)
            iterator = iter(DataLoader(loader.dataset, batch_sampler=rest, **settings))
        # Creating the iterator drew its seed, as the pass's own did; the order comes next, as it did then (a loader
        # with workers has already asked for it).
        rest.start()
        return iterator

    def state(self) -> dict[str, Any]:
        """Where the fit is: passes started, batches taken from the current one, and how to rebuild it.

        That is the random states at the pass's start (``pass_start``), or for a loader that keeps its own position,
        its ``state_dict()`` (``loader``) within a pass, and its data set's (``dataset``, if it has one) between two.
        """
        in_pass = self._iterator is not None
        state = {
            "passes": self.passes,
            "position": self.position if in_pass else 0,
            "pass_start": self._pass_start if in_pass else None,
        }
        if self._own_state:
            dataset = getattr(self.loader, "dataset", None)
            state["loader"] = self.loader.state_dict() if in_pass else None
            state["dataset"] = dataset.state_dict() if not in_pass and keeps_state(dataset) else None
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Goes on from a saved :meth:`state`: the pass rebuilt, its taken batches skipped, or the loader's own.

        The random states are put back as they were at the pass's start for the rebuilt loader's draws, then
        restored to what they are now, so the run goes on with the states it was given (and so are any the loader
        draws from for its iterator).

        Raises:
            ValueError: the state was saved with a loader that keeps its own position and this one does not, or the
                other way round.
        """
        self._check_kind(state)
        self.passes, self.position = state["passes"], state["position"]
        if self._own_state:
            self._restore_loader(state)
            return
        if state["pass_start"] is None:
            self._iterator = None
            return
        now = self._rng_now()
        self._set_rng(state["pass_start"])
        self.strategy.set_epoch(self.loader, self.passes)
        self._pass_start = state["pass_start"]
        self._iterator = self._pass_iterator(skip=self.position)
        self._set_rng(now)

    def _restore_loader(self, state: dict[str, Any]) -> None:
        """Goes on from a loader's own saved state: within a pass, from its next batch; between two, at a new pass."""
        if state["loader"] is None:
            if state["dataset"] is not None:
                self.loader.dataset.load_state_dict(state["dataset"])
            self._iterator = None
            return
        now = self._rng_now()
        # A DistributedSampler's order depends on the epoch: the pass goes on in the order it began in.
        self.strategy.set_epoch(self.loader, self.passes)
        self.loader.load_state_dict(state["loader"])
        self._iterator = iter(self.loader)
        self._set_rng(now)

    def _check_kind(self, state: dict[str, Any]) -> None:
        if ("loader" in state) == self._own_state:
            return
        saved, this = ("keeps", "does not") if "loader" in state else ("does not keep", "does")
        raise ValueError(
            f"the saved run's train_data {saved} its own position (state_dict and load_state_dict, as torchdata's "
            f"StatefulDataLoader does) and this fit's, a {type(self.loader).__name__}, {this}; resume with the same "
            "kind of train_data"
        )

    def _rng_now(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "generators": [generator.get_state() for generator in self._generators]}

    def _set_rng(self, states: dict[str, Any]) -> None:
        torch.set_rng_state(states["torch"])
        for generator, saved in zip(self._generators, states["generators"], strict=True):
            generator.set_state(saved)
