"""``KerasModel``: ``fit`` / ``evaluate`` / ``predict`` around a PyTorch net."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kerasish import runners
from kerasish.arguments import (
    check_compile,
    check_loader,
    check_model_args,
    check_optimizer_params,
    check_pad_value,
    check_runner_classes,
    check_step_controls,
    check_verbose,
)
from kerasish.callbacks import Callback, CallbackList, ModelCheckpoint
from kerasish.checkpoint import atomic_save, check_writable, load_into, load_weights
from kerasish.checks import flag
from kerasish.device import move_optimizer_state
from kerasish.distributed import Strategy, make_strategy, unwrap
from kerasish.fitting import plan_fit
from kerasish.history import History, warn_non_finite
from kerasish.metrics import MetricLike, MetricSet, check_metrics
from kerasish.migration import foreign_arguments, last_checkpoint, quiet_verbose
from kerasish.precision import check_precision
from kerasish.prediction import PAD_VALUE, concat_outputs, map_leaves
from kerasish.progress import format_logs, say
from kerasish.schedulers import interval_for, step_per_epoch
from kerasish.summary import ModelSummary, summary

if TYPE_CHECKING:  # pandas is imported when a history is first read as a DataFrame, not with kerasish
    import pandas as pd


class KerasModel:
    """A net with its loss, metrics and optimizer, trained with ``fit`` and used with ``evaluate`` and ``predict``.

    Args:
        net: the network. It is moved to ``device`` here and stays there, during and after ``fit``.
        loss_fn: ``loss_fn(preds, labels) -> scalar tensor``; ``None`` when the net returns its own loss
            (``out["loss"]`` or ``out.loss``, Hugging Face style).
        metrics_dict: name -> torchmetrics ``Metric``, another stateful metric (with ``compute()`` and ``reset()``),
            or ``fn(preds, labels) -> tensor``; each becomes the history columns ``train_<name>`` and ``val_<name>``.
            Stateful metrics give the pass's value, functions a sample-weighted mean (see :mod:`kerasish.metrics`).
        optimizer: built over ``net``'s parameters; ``None`` makes ``fit`` use ``Adam(lr=1e-3)``.
        lr_scheduler: a torch LR scheduler over ``optimizer``, stepped once per epoch after validation
            (``ReduceLROnPlateau`` is given the monitored value), or after every optimizer step (see
            ``scheduler_interval``).
        device: ``None`` picks cuda, else mps, else cpu; or a string or ``torch.device``.
        scheduler_interval: ``"epoch"`` or ``"step"`` (one scheduler step per optimizer step). ``None`` (default):
            ``"step"`` for schedules defined in steps (``OneCycleLR``, ``CyclicLR``, Hugging Face's warm-up
            schedules), ``"epoch"`` for every other; see :mod:`kerasish.schedulers`.
        accumulate_grad_batches: batches per optimizer step (default 1). The step's gradient is that of one batch
            holding all the window's samples, also for the short window an epoch may end with.
        clip_grad_norm: clip the gradients' total L2 norm to this before each optimizer step; ``None``: no clipping.
        clip_grad_value: clamp each gradient element to ``±clip_grad_value``; ``None``: no clipping.
        precision: ``"32"`` (default), ``"bf16"`` (autocast to bfloat16; CPU or GPU) or ``"fp16"`` (autocast to
            float16 with a gradient scaler; CUDA only). The weights stay float32; evaluation and ``predict`` run
            under the same autocast, and ``predict`` returns float32.
        compile: ``True`` runs the steps through ``torch.compile(net)``; a dict is passed to ``torch.compile``
            (e.g. ``{"mode": "max-autotune"}``). ``self.net`` stays the plain module, so saved weights have the
            usual names.
        strategy: ``"auto"`` trains data-parallel when the script runs under ``torchrun`` (or a process group is
            initialised), else in one process; ``"ddp"`` requires data parallelism and says what is missing;
            ``None`` never distributes (independent workers, such as a sweep under torchrun). Data-parallel, the
            same script trains on every rank: the net is wrapped in ``DistributedDataParallel`` (``self.net``
            stays the plain module), the loaders are sharded, the epoch's numbers are reduced across ranks, and
            only rank 0 prints and writes files. See :mod:`kerasish.distributed` and the README's "Distributed
            training".
        ddp_kwargs: passed to ``DistributedDataParallel`` (``find_unused_parameters``, ``static_graph``, ...);
            unused in one process.
        prefetch: read each batch one step ahead and start its copy to the device while the current step runs
            (pinned, on a side stream; see :mod:`kerasish.prefetch`), so that a transfer-bound job does not wait
            for its copies. ``None`` (default): on for CUDA, off elsewhere, where there is no copy to hide. It costs
            one more batch on the device. A train pass that writes the run state within it
            (``state_every_n_steps``) reads in step, so that the state says which batches were trained.

    Under torchrun on CUDA, ``device=None`` (or ``"cuda"``) means ``cuda:LOCAL_RANK``. A net already wrapped in
    ``DistributedDataParallel`` is used as it is, not wrapped twice; ``self.net`` is then its ``module``.

    Subclass and set ``StepRunner`` or ``EpochRunner`` to change how a batch or a pass runs.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from kerasish import KerasModel
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> x = torch.randn(64, 3)
        >>> data = [(x[i:i + 16], x[i:i + 16].sum(1, keepdim=True)) for i in range(0, 64, 16)]
        >>> net = nn.Linear(3, 1)
        >>> model = KerasModel(net, loss_fn=nn.MSELoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        ...                    device="cpu")
        >>> history = model.fit(data, data, epochs=30, verbose=0)
        >>> round(model.evaluate(data)["val_loss"], 4)
        0.0
    """

    StepRunner = runners.StepRunner
    EpochRunner = runners.EpochRunner

    def __init__(
        self,
        net: nn.Module,
        loss_fn: Callable | None = None,
        metrics_dict: Mapping[str, MetricLike] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        device: str | torch.device | None = None,
        *,
        scheduler_interval: str | None = None,
        accumulate_grad_batches: int = 1,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        precision: str = "32",
        compile: bool | Mapping[str, Any] = False,
        strategy: str | Strategy | None = "auto",
        ddp_kwargs: Mapping[str, Any] | None = None,
        prefetch: bool | None = None,
    ) -> None:
        check_model_args(net, loss_fn, optimizer, lr_scheduler, scheduler_interval)
        check_step_controls(accumulate_grad_batches, clip_grad_norm, clip_grad_value)
        compile_kwargs = check_compile(compile)
        prefetch = None if prefetch is None else flag(prefetch, "prefetch")
        self.metrics_dict = check_metrics(metrics_dict)
        self.strategy = make_strategy(strategy, device=device, ddp_kwargs=ddp_kwargs, net=net)
        self.device = self.strategy.device
        self.precision = check_precision(precision, self.device)
        self.prefetch = self.device.type == "cuda" if prefetch is None else prefetch
        self.net = unwrap(net).to(self.device)
        check_optimizer_params(optimizer, self.net)
        # Train steps run through the DDP and compile wrappers, evaluation through the compiled plain net (so a rank
        # with fewer val batches waits in no collective); self.net stays plain, so state dict keys keep their names.
        train_net = self.strategy.wrap(self.net, net)
        self.step_net = _compiled(train_net, compile_kwargs)
        self.eval_net = self.step_net if train_net is self.net else _compiled(self.net, compile_kwargs)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        if optimizer is not None:
            move_optimizer_state(optimizer, self.device)
        self.lr_scheduler = lr_scheduler
        self.scheduler_interval = interval_for(lr_scheduler, scheduler_interval)
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self._history = History([])
        self._checkpoint: ModelCheckpoint | None = None
        self.stop_training = False

    def __getattr__(self, name: str) -> Any:
        # Runs only for attributes a KerasModel lacks: torchkeras's KerasModel is an nn.Module, this one holds one.
        if not name.startswith("__") and hasattr(nn.Module, name):
            raise AttributeError(
                f"{type(self).__name__} has no attribute {name!r}: it is not an nn.Module but holds one, "
                f"model.net (model.net.{name})"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def rank(self) -> int:
        """This process's global rank: 0 in one process."""
        return self.strategy.rank

    @property
    def world_size(self) -> int:
        """How many processes train this model together: 1 in one process."""
        return self.strategy.world_size

    @property
    def is_main_process(self) -> bool:
        """Whether this process prints and writes files (global rank 0); a callback that writes should ask."""
        return self.strategy.is_main_process

    @property
    def history_columns(self) -> list[str]:
        """The columns of the history of the latest ``fit`` (of the one running, when read from a callback).

        What a callback checks its monitor or template fields against in ``on_fit_begin``, without building the
        DataFrame :attr:`history` is.
        """
        return self._history.all_columns

    @property
    def history(self) -> pd.DataFrame:
        """The history of the latest ``fit`` (of the one running, so far, when read from a callback); empty before."""
        return self._history.frame

    @foreign_arguments
    def fit(
        self,
        train_data: Iterable,
        val_data: Iterable | None = None,
        epochs: int = 10,
        *,
        monitor: str | None = None,
        mode: str | None = None,
        patience: int | None = 5,
        min_delta: float = 0.0,
        delta_mode: str = "abs",
        restore_best_weights: bool = True,
        ckpt_path: str | os.PathLike | None = None,
        callbacks: Sequence[Callback] | None = None,
        verbose: int = 1,
        plot: bool | str | os.PathLike = False,
        state_path: str | os.PathLike | None = None,
        resume: bool = False,
        quiet: bool | None = None,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        state_every_n_steps: int | None = None,
    ) -> pd.DataFrame:
        """Trains for up to ``epochs`` epochs and leaves the best epoch's weights in the net.

        Each epoch is a train pass over ``train_data``, then a val pass over ``val_data`` if given; its numbers become
        a row of the history. Training stops early once ``monitor`` has not improved for ``patience`` epochs. However
        the fit ends (epochs used up, early stop, Ctrl-C, an exception), the weights of the best epoch are loaded back
        into the net, on its device. On Ctrl-C the ``KeyboardInterrupt`` propagates once the best weights are back
        (a script stops; in a notebook, ``self.history`` keeps the finished epochs).

        Args:
            train_data: an iterable of batches, e.g. a ``DataLoader`` (one over an ``IterableDataset`` works too).
            val_data: batches for the val pass, or ``None``.
            epochs: the most epochs to run, >= 1.
            monitor: the history column that picks the best epoch; ``None`` means ``"val_loss"`` when there is
                val data, else ``"train_loss"``.
            mode: ``"min"`` or ``"max"``: whether lower or higher ``monitor`` is better. ``None`` (default): from
                the column: losses are minimised, a metric's ``higher_is_better`` decides (torchmetrics metrics
                carry it); for a column neither says (a plain function's), ``None`` is an error before any step.
            patience: epochs without improvement before stopping; ``None`` never stops early.
            min_delta: an improvement must beat the best by more than this; a tie never improves.
            delta_mode: ``"abs"``: ``min_delta`` is an amount; ``"rel"``: a fraction of ``abs(best)``.
            restore_best_weights: ``False`` leaves the last epoch's weights in the net.
            ckpt_path: also write the best weights to this file whenever they improve (atomically); no file is
                written without it.
            callbacks: more :class:`~kerasish.Callback` instances, run in order after the built-in ones.
            verbose: 1 shows a progress bar per pass (from 0.5 s into it) and a line per epoch; 2 only the lines
                (for logs and CI); 0 prints nothing.
            plot: ``True`` draws the history's curves (:func:`~kerasish.plot_history`, needs matplotlib): in a
                notebook live, one figure redrawn after each epoch; elsewhere the final figure is written as a new
                ``history.png`` beside ``ckpt_path`` (else in the current directory) and its path printed. A path
                (``"runs/curves.svg"``) names the file instead, also in a notebook. ``False``: nothing is drawn or
                written. See :class:`~kerasish.LivePlot`.
            state_path: write the run's whole state here (atomically) after every epoch: weights, optimizer,
                scheduler, every callback's state, the history and the random generators (see
                :mod:`kerasish.resume`); nothing is written without it. An existing file is an error unless
                ``resume=True``.
            resume: continue the run saved at ``state_path`` with its next epoch, up to ``epochs`` in all, ending as
                the uninterrupted run would have; no file yet starts a new run. Pass the same arguments, net,
                optimizer, scheduler, loaders and callbacks (same kinds, same order) as the saved run; a run that
                early stopping ended trains no further. A ``CSVLogger`` continues its file with ``append=True``.
            quiet: ``True`` is ``verbose=0`` (torchkeras's spelling); ``None`` or ``False``: ``verbose`` decides.
            steps_per_epoch: an epoch is this many train batches; the loader's iterator carries over between epochs
                and a new pass (reshuffled, ``set_epoch`` data-parallel) starts when it is exhausted. This is how an
                endless ``IterableDataset`` trains. ``None``: an epoch is one pass. See :mod:`kerasish.cursor`.
            validation_steps: the val pass reads at most this many batches (its numbers then cover those only);
                ``None``: the whole val data.
            state_every_n_steps: also write the run state to ``state_path`` after every this many optimizer steps,
                within a pass; ``resume=True`` then goes on from the exact batch where it was written, without
                reading the batches before it again (see :mod:`kerasish.cursor`). ``None``: at epoch ends only.

        Returns:
            The history, one row per finished epoch (also kept as ``self.history``): ``epoch``, ``train_loss``,
            ``train_<metric>``, ``val_loss``, ``val_<metric>``, ``lr`` (the learning rate at the epoch's start,
            which its first optimizer step used) and ``time`` (the wall seconds of the epoch's passes;
            data-parallel, the slowest rank's, up to each pass's reduction). Losses are sample-weighted means over
            the pass; data-parallel, over every rank's samples, so every rank returns the same history.

        Raises:
            ValueError, TypeError: a bad argument, or a state file that is not one or does not match this fit,
                before any training step.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from kerasish import KerasModel
            >>> _ = torch.manual_seed(0)
            >>> x = torch.randn(96, 4)
            >>> y = (x[:, 0] > 0).long()
            >>> batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
            >>> model = KerasModel(nn.Linear(4, 2), nn.CrossEntropyLoss(), device="cpu")
            >>> history = model.fit(batches, batches, epochs=3, monitor="val_loss", patience=2, verbose=0)
            >>> list(history.columns), len(history)
            (['epoch', 'train_loss', 'val_loss', 'lr', 'time'], 3)
        """
        plan = plan_fit(
            self, train_data, val_data, epochs=epochs, monitor=monitor, mode=mode, patience=patience,
            min_delta=min_delta, delta_mode=delta_mode, restore_best_weights=restore_best_weights,
            ckpt_path=ckpt_path, callbacks=callbacks, verbose=quiet_verbose(quiet, verbose), plot=plot,
            state_path=state_path, resume=resume, steps_per_epoch=steps_per_epoch,
            validation_steps=validation_steps, state_every_n_steps=state_every_n_steps,
        )  # fmt: skip
        callbacks, history, run, epochs, verbose = plan.callbacks, plan.history, plan.run, plan.epochs, plan.verbose
        self._history, self._checkpoint, self.stop_training = history, plan.checkpoint, False
        callbacks.call("on_fit_begin", self, {})
        warned_nan = plan.answers_nan  # warned once per fit, and not where a callback already acts on it
        try:
            for epoch in range(run.restore(epochs=epochs, verbose=verbose), epochs + 1):
                if run.carried(epoch) is None:  # an epoch saved within had its on_epoch_begin before the save
                    callbacks.call("on_epoch_begin", self, {"epoch": epoch})
                logs = plan.epoch(self, epoch)
                history.append(logs)
                warned_nan = warned_nan or warn_non_finite(logs)
                if verbose:
                    say(f"epoch {epoch}/{epochs}  {format_logs(logs)}", self)
                callbacks.call("on_epoch_end", self, logs)
                # A stop asked for on any rank (a user callback's, say) ends the fit on every rank at this epoch.
                self.stop_training = self.strategy.any(self.stop_training)
                step_per_epoch(self, logs[plan.monitor.name])
                run.save(epochs=epochs)
                if self.stop_training:
                    break
        except KeyboardInterrupt:
            # Re-raised once on_fit_end has put the best weights back (the run state is as of the last epoch's end):
            # a script stops, a notebook keeps model.history and the weights.
            if verbose:
                say(f"interrupted: fit stops after {len(history.rows)} finished epochs", self)
            raise
        finally:
            # The last finished epoch's row: an epoch cut short (an error or Ctrl-C in its val pass) has none.
            callbacks.call_all("on_fit_end", self, dict(history.rows[-1]) if history.rows else {})
        return history.frame

    @foreign_arguments
    def evaluate(self, data: Iterable, verbose: int = 0, *, quiet: bool | None = None) -> dict[str, float]:
        """One pass over ``data`` without training: ``{"val_loss": ..., "val_<metric>": ...}``.

        Uses the same loss, metrics, precision and batch conventions as the val pass of ``fit``, with metric state
        of its own. ``verbose=1`` shows a progress bar; ``quiet=True`` is ``verbose=0``.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from kerasish import KerasModel
            >>> net = nn.Linear(2, 1, bias=False)
            >>> _ = net.weight.data.fill_(1.0)
            >>> batches = [(torch.ones(4, 2), torch.full((4, 1), 3.0))]   # predictions 2, targets 3
            >>> KerasModel(net, nn.MSELoss(), device="cpu").evaluate(batches)
            {'val_loss': 1.0}
        """
        verbose = quiet_verbose(quiet, verbose)
        check_loader(data, "data")
        check_verbose(verbose)
        loader, _ = self.strategy.eval_loader(data)
        return self._epoch_runner("val", CallbackList(), verbose)(loader)

    @foreign_arguments
    def predict(
        self,
        data: Iterable,
        *,
        callbacks: Sequence[Callback] | None = None,
        verbose: int = 0,
        pad_value: float = PAD_VALUE,
    ) -> Any:
        """The predictions for every batch, concatenated in order, on CPU.

        Each batch goes through :meth:`StepRunner.predict`: by default the net's output for the batch's inputs
        (``logits`` for outputs that carry them), read as in ``fit`` with the labels ignored (the last element of a
        tuple, ``batch["labels"]`` of a mapping; a bare tensor or a 1-tuple ``(x,)`` is input only); with an
        overridden ``compute_loss``, the preds it returns. A net that returns a tuple or a dict of tensors (several
        heads) gives the same structure back, each tensor concatenated over the batches (a dict for any mapping).
        Runs in eval mode without gradients, under the model's precision; reduced-precision outputs come back as
        float32. ``callbacks`` get the ``on_predict_*`` hooks; ``verbose=1`` shows a progress bar.

        Outputs whose sizes differ between batches beyond the batch dimension (token classification or language
        models with dynamic padding) are padded at the end of each dimension to the largest size, with
        ``pad_value``: -100 by default, the value Hugging Face pads labels with and ``CrossEntropyLoss`` ignores,
        so one mask ``labels != -100`` selects the real positions of both (``float("nan")`` for float outputs
        makes padding impossible to mistake for a value). See :mod:`kerasish.prediction`.

        Data-parallel, a ``DataLoader`` over a map-style data set is split into one contiguous block per rank, and
        every rank gets the whole output, in the data set's order (call ``predict`` on every rank). Other data (a
        list of batches, an ``IterableDataset``, a loader with your own ``DistributedSampler``) is used as given:
        each rank predicts what it reads and gets its own outputs.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from kerasish import KerasModel
            >>> net = nn.Linear(3, 2)
            >>> KerasModel(net, device="cpu").predict([torch.randn(4, 3), torch.randn(2, 3)]).shape
            torch.Size([6, 2])
        """
        check_loader(data, "data")
        check_verbose(verbose)
        check_pad_value(pad_value)
        loader, sharded = self.strategy.eval_loader(data)
        runner = self._epoch_runner("val", CallbackList(callbacks or []), verbose, metrics={})
        outputs = runner.predict(loader)
        # Outputs stay on the device until the end: one transfer per output instead of a sync per batch.
        result = map_leaves(_to_cpu, concat_outputs(outputs, pad_value)) if outputs else None
        if sharded:  # a rank whose block is empty still takes part
            shards = [shard for shard in self.strategy.all_gather_objects(result) if shard is not None]
            result = concat_outputs(shards, pad_value) if shards else None
        if result is None:
            raise ValueError("data yielded no batches")
        return result

    def summary(
        self,
        example: Any = None,
        *,
        input_shape: Sequence[int] | None = None,
        depth: int | None = None,
        print_fn: Callable[[str], None] | None = print,
    ) -> ModelSummary:
        """Runs ``example`` through the net once and shows its layers, output shapes and parameter counts.

        ``example`` is what the net takes: a tensor, a tuple of positional inputs or a dict of keyword inputs. Or
        ``input_shape``, one sample's shape without the batch dimension (torchkeras's spelling): the example is then
        a batch of one float32 zero sample. The table is printed with ``print_fn`` (``None``: not printed) and
        returned as a :class:`~kerasish.ModelSummary`. See :func:`kerasish.summary`.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from kerasish import KerasModel
            >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> KerasModel(net, device="cpu").summary(torch.zeros(1, 4), print_fn=None).total_params
            58
        """
        result = summary(self.net, example, input_shape=input_shape, device=self.device, depth=depth)
        if print_fn is not None:
            print_fn(str(result))
        return result

    def save_ckpt(self, path: str | os.PathLike) -> None:
        """Writes the net's weights (its ``state_dict``) to ``path``, atomically; data-parallel, rank 0 alone writes."""
        if self.is_main_process:
            atomic_save(self.net.state_dict(), check_writable(path, "path"))

    def load_ckpt(self, path: str | os.PathLike | None = None) -> None:
        """Loads weights written by :meth:`save_ckpt` or ``fit(ckpt_path=...)`` into the net, on its device.

        ``path=None`` loads the best epoch's file that the latest ``fit`` wrote with its ``ckpt_path`` (a template's
        file of the best epoch), and is an error when that fit had no ``ckpt_path``.

        The file is read with ``weights_only=True``: tensors only, no pickled code is ever run. Files whose keys all
        carry a wrapper's prefix (``module.`` from ``DistributedDataParallel``, ``_orig_mod.`` from
        ``torch.compile``) load too. Data-parallel, rank 0 reads the file and sends it to the others, so only rank 0
        needs it on disk: call ``load_ckpt`` on every rank. A file that does not fit the net (missing or unexpected
        keys, other shapes) is an error listing what differs, raised before anything is copied: the net is left as
        it was.
        """
        if path is None:
            path = last_checkpoint(self._checkpoint)
        weights = self.strategy.from_main(lambda: load_weights(path, torch.device("cpu")))
        load_into(self.net, weights, path)

    def _epoch_runner(
        self, stage: str, callbacks: CallbackList, verbose: int, metrics: Mapping | None = None
    ) -> runners.EpochRunner:
        check_runner_classes(self.StepRunner, self.EpochRunner)
        training = stage == "train"
        metrics = self.metrics_dict if metrics is None else metrics
        step = self.StepRunner(
            self.step_net if training else self.eval_net,
            self.loss_fn,
            stage=stage,
            metrics=MetricSet(metrics, self.device, strategy=self.strategy),
            device=self.device,
            precision=self.precision,
            strategy=self.strategy,
            **(self._train_controls() if training else {}),
        )
        return self.EpochRunner(step, model=self, callbacks=callbacks, verbose=verbose, prefetch=self.prefetch)

    def _train_controls(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "lr_scheduler": self.lr_scheduler if self.scheduler_interval == "step" else None,
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "clip_grad_norm": self.clip_grad_norm,
            "clip_grad_value": self.clip_grad_value,
        }


def _to_cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.cpu()


def _compiled(net: nn.Module, compile_kwargs: dict[str, Any] | None) -> nn.Module:
    return net if compile_kwargs is None else torch.compile(net, **compile_kwargs)
