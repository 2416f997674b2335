"""One batch (:class:`StepRunner`) and one pass over a loader (:class:`EpochRunner`).

Both are plugged into :class:`~kerasish.KerasModel` as class attributes; subclass either to change a step or a pass::

    class TwoTower(StepRunner):
        def compute_loss(self, batch):
            query, doc, target = batch
            sim = F.cosine_similarity(self.net.encode(query), self.net.encode(doc))
            return F.mse_loss(sim, target), sim, target

    class MyModel(KerasModel):
        StepRunner = TwoTower
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from kerasish.batches import (
    batch_size,
    call_net,
    check_same_shape,
    loss_of,
    needs_same_shape,
    no_labels_message,
    preds_of,
    split_batch,
)
from kerasish.callbacks.base import CallbackList
from kerasish.device import to_device
from kerasish.distributed import Strategy, is_main_process
from kerasish.metrics import MetricSet
from kerasish.precision import autocast, check_precision, grad_scaler
from kerasish.prediction import check_structure, map_leaves
from kerasish.prefetch import prefetch
from kerasish.progress import PassProgress

STAGES = ("train", "val")


class StepRunner:
    """Runs one batch: moves it to the device, computes the loss, and in training steps the optimizer.

    Override :meth:`compute_loss` for a custom loss; the rest (precision, backward, accumulation, clipping, step,
    metrics) stays as it is.

    Args:
        net: the network (or its ``torch.compile`` wrapper).
        loss_fn: ``loss_fn(preds, labels) -> scalar tensor``, or ``None`` when the net's output carries its loss.
        stage: ``"train"`` (backward and optimizer step) or ``"val"`` (forward only).
        metrics: where the step's loss and metric updates accumulate.
        device: where batches go.
        optimizer: required for ``stage="train"``.
        lr_scheduler: stepped after each optimizer step when given; ``KerasModel`` passes it only when asked to
            step per batch.
        accumulate_grad_batches: batches per optimizer step. Each batch's gradient is weighted by its samples, so
            a window of batches gives the gradient of one batch holding all their samples, also for a short last
            window, which :meth:`finish_pass` steps at the end of a pass.
        clip_grad_norm: rescale the gradients so their total L2 norm is at most this, before each optimizer step.
        clip_grad_value: clamp every gradient element to ``[-clip_grad_value, clip_grad_value]``, likewise.
        precision: ``"32"``, ``"bf16"`` or ``"fp16"`` (autocast of the forward pass and loss; fp16 adds a
            gradient scaler, on CUDA only).
        strategy: the model's :class:`~kerasish.distributed.Strategy`; ``None``: one process. Data-parallel with
            accumulation, the micro-batches before a window's last keep their gradients local (DDP's ``no_sync``),
            so a window costs one gradient all-reduce.
    """

    def __init__(
        self,
        net: nn.Module,
        loss_fn: Callable | None,
        *,
        stage: str,
        metrics: MetricSet,
        device: torch.device,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        accumulate_grad_batches: int = 1,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        precision: str = "32",
        strategy: Strategy | None = None,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r} is not valid; use one of {STAGES}")
        if stage == "train" and optimizer is None:
            raise ValueError("a train StepRunner needs an optimizer")
        self.net = net
        self.loss_fn = loss_fn
        self.stage = stage
        self.metrics = metrics
        self.device = device
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.accumulate_grad_batches = accumulate_grad_batches
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self.precision = check_precision(precision, device)
        self.scaler = grad_scaler(self.precision, device) if stage == "train" else None
        self.strategy = Strategy(device) if strategy is None else strategy
        self.optimizer_steps = 0
        # Decided once: a step-time check of this flag is all that one process pays for distributed accumulation.
        self._defer_sync = stage == "train" and accumulate_grad_batches > 1 and self.strategy.distributed
        self._clipping = clip_grad_norm is not None or clip_grad_value is not None
        self._same_shape = needs_same_shape(loss_fn)
        self._window_batches = 0
        self._window_samples = 0
        self._non_blocking = device.type != "cpu"

    def __call__(self, batch: Any) -> tuple[torch.Tensor, int]:
        """Runs the step; returns the batch's detached loss (a device tensor) and its number of samples."""
        if self._defer_sync and self._window_batches + 1 < self.accumulate_grad_batches:
            with self.strategy.no_sync(self.net):
                return self._run(batch)
        return self._run(batch)

    def _run(self, batch: Any) -> tuple[torch.Tensor, int]:
        batch = to_device(batch, self.device, non_blocking=self._non_blocking)
        if self.precision == "32":  # no autocast context to enter and leave, at every step
            loss, preds, labels = self.compute_loss(batch)
        else:
            with autocast(self.precision, self.device):
                loss, preds, labels = self.compute_loss(batch)
        _check_loss(loss)
        size = self.batch_size(batch)
        if self.stage == "train":
            self.backward(loss, size)
        loss = loss.detach()
        self.metrics.update(loss, preds, labels, size)
        return loss, size

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        """Returns ``(loss, preds, labels)`` for a batch already on the device.

        ``labels=None`` means the metrics skip this batch. The default follows :mod:`kerasish.batches`: the net gets
        the inputs, and the loss is ``loss_fn(preds, labels)``, or the net's own ``loss`` when ``loss_fn`` is None
        (a mapping batch then reaches the net with its ``"labels"``, so the net can compute it).
        """
        args, kwargs, labels = split_batch(batch, keep_mapping_labels=self.loss_fn is None)
        if labels is None and self.loss_fn is not None:
            raise ValueError(no_labels_message(batch))
        output = call_net(self.net, args, kwargs)
        preds = preds_of(output)
        if self.loss_fn is None:
            return loss_of(output), preds, labels
        if isinstance(preds, (tuple, list)):
            raise TypeError(
                f"the net returned a {type(preds).__name__} of {len(preds)} outputs, but loss_fn(preds, labels) takes "
                "one tensor of preds: return a tensor (or a dict with 'logits'), or override StepRunner.compute_loss "
                "to combine the outputs"
            )
        if self._same_shape:
            check_same_shape(preds, labels, self.loss_fn)
        return self.loss_fn(preds, labels), preds, labels

    def predict(self, batch: Any) -> Any:
        """The predictions for one batch already on the device, as :meth:`KerasModel.predict` collects them.

        Runs in eval mode, without gradients, under the model's precision. By default: when :meth:`compute_loss`
        is overridden, the preds it returns, so a model trained through it (a two-tower model without ``forward``)
        predicts the same way, from batches shaped as in training; otherwise the net's output for the batch's
        inputs, its ``logits`` when it carries them, labels ignored. Override it to predict from batches without
        labels through a custom model, or to return something else (probabilities, a dict of heads). Return a
        tensor with the batch first, or a tuple, list or dict of them.
        """
        if type(self).compute_loss is not StepRunner.compute_loss:
            try:
                return self.compute_loss(batch)[1]
            except Exception as error:
                error.add_note(
                    f"predict took the preds of {type(self).__name__}.compute_loss, which failed on this batch; "
                    "for batches it cannot read (inputs without labels, say), override StepRunner.predict(batch)"
                )
                raise
        args, kwargs, _ = split_batch(batch)
        return preds_of(call_net(self.net, args, kwargs))

    def predict_batch(self, batch: Any) -> Any:
        """Runs :meth:`predict` on a batch as the loader yields it: moved to the device, under the precision's
        autocast; reduced-precision float outputs come back as float32."""
        batch = to_device(batch, self.device, non_blocking=self._non_blocking)
        with autocast(self.precision, self.device):
            outputs = self.predict(batch)
        return outputs if self.precision == "32" else map_leaves(_full_precision, outputs)

    def batch_size(self, batch: Any) -> int:
        """How many samples the batch holds, for sample-weighted means; override for unusual batches."""
        return batch_size(batch)

    def backward(self, loss: torch.Tensor, size: int) -> None:
        """Adds the batch's gradient to the window and steps the optimizer when the window is full."""
        if self._window_batches == 0:
            self.optimizer.zero_grad(set_to_none=True)
        if self.accumulate_grad_batches > 1:
            # Summed over samples here, divided by the window's samples at the step: exact for uneven batches.
            loss = loss * size
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()
        self._window_batches += 1
        self._window_samples += size
        if self._window_batches == self.accumulate_grad_batches:
            self.optimizer_step()

    def _params_with_grads(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]

    def _average_and_clip(self) -> None:
        params = self._params_with_grads()
        if self.accumulate_grad_batches > 1:
            for param in params:
                param.grad.div_(self._window_samples)
        if self.scaler is not None and self._clipping:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        if self.clip_grad_value is not None:
            nn.utils.clip_grad_value_(params, self.clip_grad_value)

    def finish_pass(self) -> None:
        """Steps the optimizer on a window the pass left unfinished (fewer than ``accumulate_grad_batches``).

        Data-parallel, that window's gradients were kept local, so they are averaged across ranks first (one
        collective); then every rank gets rank 0's buffers (batch-norm statistics), so all ranks validate and save
        the same model.
        """
        if self._window_batches:
            if self._defer_sync:
                self.strategy.average_gradients(self._params_with_grads())
            self.optimizer_step()
        self.strategy.sync_buffers(self.net)

    def optimizer_step(self) -> None:
        """Averages the window's gradients, clips them, steps the optimizer (and a per-step scheduler)."""
        if self.accumulate_grad_batches > 1 or self._clipping:
            self._average_and_clip()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step when a gradient is inf/NaN (torch syncs here)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.optimizer_steps += 1
        self._window_batches = self._window_samples = 0


def _full_precision(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _check_loss(loss: Any) -> None:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"the loss must be a tensor; got {type(loss).__name__}: {loss!r}")
    if loss.ndim != 0:
        raise ValueError(
            f"the loss must be a scalar tensor; got shape {tuple(loss.shape)}. Use a mean- or sum-reduced loss "
            "(e.g. reduction='mean') or reduce it in StepRunner.compute_loss"
        )


class EpochRunner:
    """Runs one pass of a :class:`StepRunner` over a loader and returns the pass's logs.

    The net is put in train or eval mode and gradients are switched on or off for the pass; both are restored after,
    however the pass ends. The loss and metrics accumulate on the device and become floats once, at the end
    (data-parallel, after one reduction across ranks, so every rank returns the same logs).

    Attributes:
        seconds: the last pass's wall time, part of the epoch's ``time``: to the end of its metrics' compute in one
            process; data-parallel, the slowest rank's up to the pass's reduction (which carries it), so that every
            rank records the same number.

    Args:
        step_runner: runs each batch.
        model: passed to the batch hooks.
        callbacks: whose ``on_<stage>_batch_begin/end`` hooks run around each step.
        verbose: 1 shows a progress bar for the pass; 0 and 2 show none.
        prefetch: read each batch one ahead, its copy to the device started while the current step runs
            (:func:`kerasish.prefetch.prefetch`). A pass that writes the run state within it reads in step, so
            that the saved position is that of the batches trained.
    """

    def __init__(
        self,
        step_runner: StepRunner,
        *,
        model: Any = None,
        callbacks: CallbackList | None = None,
        verbose: int = 0,
        prefetch: bool = False,
    ) -> None:
        self.step_runner = step_runner
        self.prefetch = prefetch
        self.stage = step_runner.stage
        self.model = model
        self.callbacks = callbacks or CallbackList()
        self.verbose = verbose
        self.seconds = 0.0
        self.carry: dict[str, Any] | None = None

    def __call__(
        self,
        loader: Iterable,
        *,
        epoch: int | None = None,
        epochs: int | None = None,
        total: int | None = None,
        checkpoint: Callable[[int, float], None] | None = None,
        checkpoint_every: int | None = None,
    ) -> dict[str, float]:
        """Runs the pass; returns ``{"<stage>_loss": ..., "<stage>_<metric>": ...}``.

        ``total`` is the number of batches the pass will run, for the progress bar, when ``loader`` has no length
        of its own (an epoch of ``steps_per_epoch`` batches); ``None``: the loader's length, if it has one.
        ``checkpoint(batches, seconds)`` is called after every ``checkpoint_every``-th optimizer step (after that
        batch's hooks), to write the run state within the pass. A pass that a resumed run goes on with starts from
        :attr:`carry` (its sums so far, batches and seconds), which the run state sets.

        Raises:
            ValueError: the loader yielded no batches (data-parallel: on no rank).
        """
        start = time.perf_counter()
        metrics = self.step_runner.metrics
        carry, self.carry = self.carry, None
        done = 0 if carry is None else carry["batches"]
        if carry is None:
            metrics.reset()
        else:
            metrics.load_state_dict(carry["metrics"])
            start -= carry["seconds"]
        begin_hook, end_hook = f"on_{self.stage}_batch_begin", f"on_{self.stage}_batch_end"
        call_begin, call_end = self.callbacks.overrides(begin_hook), self.callbacks.overrides(end_hook)
        # Data-parallel, a batch hook's stop waits for the epoch's end: a rank leaving its pass early would leave the
        # others waiting in their next gradient all-reduce.
        may_stop = self.stage == "train" and not self.step_runner.strategy.distributed
        progress = PassProgress(
            enabled=self.verbose == 1 and is_main_process(self.model),
            description=self.stage if epoch is None else f"epoch {epoch}/{epochs} {self.stage}",
            total=loader_length(loader) if total is None else total,
            read_loss=metrics.running_loss,
        )
        batches, stepped = done, self.step_runner.optimizer_steps
        if checkpoint is None:
            loader = self._read_ahead(loader)
        with pass_mode(self.step_runner.net, training=self.stage == "train"):
            try:
                for batches, batch in enumerate(loader, start=done + 1):
                    if call_begin:
                        self.callbacks.call(begin_hook, self.model, {"epoch": epoch, "batch": batches - 1})
                    loss, size = self.step_runner(batch)
                    progress.step()
                    if call_end:
                        logs = {"epoch": epoch, "batch": batches - 1, "loss": loss, "size": size}
                        self.callbacks.call(end_hook, self.model, logs)
                    # A train batch hook, begin or end, may end the pass after this batch (TerminateOnNaN); the val
                    # pass always runs whole, so the epoch's row is complete even when the fit is stopping.
                    if may_stop and (call_begin or call_end) and getattr(self.model, "stop_training", False):
                        break
                    if checkpoint_every and self.step_runner.optimizer_steps != stepped:
                        stepped = self.step_runner.optimizer_steps
                        if stepped % checkpoint_every == 0:
                            checkpoint(batches, time.perf_counter() - start)
                if self.stage == "train":
                    self.step_runner.finish_pass()
            finally:
                progress.close()
        logs = metrics.compute(self.stage, batches=batches, seconds=time.perf_counter() - start)
        self.seconds = metrics.seconds if self.step_runner.strategy.distributed else time.perf_counter() - start
        return logs

    def predict(self, loader: Iterable) -> list:
        """A prediction pass: :meth:`StepRunner.predict_batch` for every batch, the outputs in order.

        Eval mode without gradients, restored after; the callbacks get ``on_predict_begin``,
        ``on_predict_batch_begin`` / ``_end`` (``{"batch"}``, end adds ``"outputs"``) and ``on_predict_end``
        (``{"batches"}``, however the pass ends). The first batch's outputs are checked to be tensors (or tuples,
        lists, dicts of them), so a net returning something else fails at once rather than after the pass.
        """
        progress = PassProgress(
            enabled=self.verbose == 1 and is_main_process(self.model),
            description="predict",
            total=loader_length(loader),
            read_loss=None,
        )
        outputs: list = []
        self.callbacks.call("on_predict_begin", self.model, {})
        try:
            with pass_mode(self.step_runner.net, training=False):
                for index, batch in enumerate(self._read_ahead(loader)):
                    self.callbacks.call("on_predict_batch_begin", self.model, {"batch": index})
                    outputs.append(self.step_runner.predict_batch(batch))
                    if index == 0:
                        check_structure(outputs[0])
                    self.callbacks.call("on_predict_batch_end", self.model, {"batch": index, "outputs": outputs[-1]})
                    progress.step()
        finally:
            progress.close()
            self.callbacks.call_all("on_predict_end", self.model, {"batches": len(outputs)})
        return outputs

    def _read_ahead(self, loader: Iterable) -> Iterable:
        return prefetch(loader, self.step_runner.device) if self.prefetch else loader


def loader_length(loader: Iterable) -> int | None:
    """The number of batches a loader yields, or ``None`` when it has no length (an ``IterableDataset``'s)."""
    try:
        return len(loader)
    except TypeError:
        return None


@contextlib.contextmanager
def pass_mode(net: nn.Module, *, training: bool) -> Iterator[None]:
    """Train or eval mode with gradients on or off, both put back as they were however the block ends."""
    was_training = net.training
    net.train(training)
    try:
        with torch.set_grad_enabled(training):
            yield
    finally:
        net.train(was_training)
