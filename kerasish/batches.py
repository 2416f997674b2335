"""How a batch becomes the net's inputs and labels, and how the net's output becomes preds and a loss.

The conventions, in one place for training, evaluation and prediction:

- a tensor, or a 1-tuple ``(x,)``: inputs only, ``net(x)``;
- a tuple or list ``(x1, ..., xk, y)``: ``net(x1, ..., xk)`` with labels ``y``;
- a mapping: ``net(**batch)``, labels ``batch["labels"]`` when present.

An output that is a mapping with ``"logits"`` (or has a ``.logits`` attribute) gives those as preds; its ``"loss"``
(or ``.loss``) is the loss when the model has no ``loss_fn``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LABELS_KEY = "labels"


def split_batch(batch: Any, *, keep_mapping_labels: bool = False) -> tuple[tuple, dict, Any]:
    """Returns ``(args, kwargs, labels)`` for one batch; ``labels`` is ``None`` when the batch has none.

    Args:
        batch: a tensor, a tuple or list, or a mapping.
        keep_mapping_labels: leave ``"labels"`` among a mapping's keyword arguments, for nets that compute their
            own loss from them.
    """
    # Every step passes here: the (x, y) a DataLoader yields is answered first, by the cheapest checks.
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return (batch[0],), {}, batch[1]
        if len(batch) == 0:
            raise ValueError("a batch is an empty tuple; expected (x, y), (x1, ..., xk, y) or (x,)")
        if len(batch) == 1:
            return (batch[0],), {}, None
        return tuple(batch[:-1]), {}, batch[-1]
    if batch is None:
        raise TypeError(
            "the loader yielded None as a batch; a batch is a tensor, a tuple (x, y) or a dict of tensors: check the "
            "dataset's __getitem__ and the loader's collate_fn"
        )
    if isinstance(batch, Mapping):
        kwargs = dict(batch)
        labels = kwargs.get(LABELS_KEY) if keep_mapping_labels else kwargs.pop(LABELS_KEY, None)
        return (), kwargs, labels
    return (batch,), {}, None


def call_net(net: Any, args: tuple, kwargs: dict) -> Any:
    """``net(*args, **kwargs)``; when the call fails because the batch does not fit ``forward``, says how.

    Only a failed call is inspected, so a step pays nothing for the check.
    """
    try:
        return net(*args, **kwargs)
    except TypeError as error:
        mismatch = _forward_mismatch(net, args, kwargs)
        if mismatch is None:
            raise
        raise TypeError(mismatch) from error


def _forward_mismatch(net: Any, args: tuple, kwargs: dict) -> str | None:
    module = getattr(getattr(net, "module", net), "_orig_mod", getattr(net, "module", net))  # past DDP and compile
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*args, **kwargs)
    except TypeError as why:
        given = f"{len(args)} positional input(s)" + (f" and keywords {sorted(kwargs)}" if kwargs else "")
        return (
            f"the batch gives the net {given}, but {type(module).__name__}.forward{signature} cannot take them "
            f"({why}). A tuple batch (x1, ..., xk, y) passes all but its last element, a dict passes its keys (without "
            "'labels' when a loss_fn is given): reshape the batches, or override StepRunner.compute_loss"
        )
    return None


def no_labels_message(batch: Any) -> str:
    """Why ``loss_fn`` has no labels for ``batch``, naming a mapping's keys."""
    if isinstance(batch, Mapping):
        return (
            f"loss_fn needs labels, but the batch is a dict with keys {sorted(batch)} and no {LABELS_KEY!r}: put the "
            f"labels under {LABELS_KEY!r} (in the dataset or the collate_fn), or override StepRunner.compute_loss"
        )
    return (
        "loss_fn needs labels, but the batch has none: yield (x, y) tuples or dicts with a 'labels' key, "
        "or override StepRunner.compute_loss"
    )


SAME_SHAPE_LOSSES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)
SAME_SHAPE_FUNCTIONS = (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss)


def needs_same_shape(loss_fn: Any) -> bool:
    """Whether ``loss_fn`` is one of torch's element-wise regression losses, which broadcast mismatched shapes."""
    return isinstance(loss_fn, SAME_SHAPE_LOSSES) or any(loss_fn is fn for fn in SAME_SHAPE_FUNCTIONS)


def check_same_shape(preds: Any, labels: Any, loss_fn: Any) -> None:
    """Raises when an element-wise loss would broadcast preds against labels of another shape (N×1 against N)."""
    if isinstance(preds, torch.Tensor) and isinstance(labels, torch.Tensor) and preds.shape != labels.shape:
        name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
        result = tuple(torch.broadcast_shapes(preds.shape, labels.shape)) if _broadcastable(preds, labels) else None
        raise ValueError(
            f"preds have shape {tuple(preds.shape)} and labels {tuple(labels.shape)}: {name} would broadcast them to "
            f"{result or 'an error'} and compare values that do not belong together. Give the labels the preds' "
            "shape (y.view(-1, 1) or y[:, None] in the dataset for a net ending in Linear(..., 1)), or squeeze the "
            "preds in StepRunner.compute_loss"
        )


def _broadcastable(preds: torch.Tensor, labels: torch.Tensor) -> bool:
    try:
        torch.broadcast_shapes(preds.shape, labels.shape)
    except RuntimeError:
        return False
    return True


def preds_of(output: Any) -> Any:
    """The predictions in a net's output: its ``logits`` when it carries them, else the output itself."""
    if type(output) is torch.Tensor:  # the common case, and the dearest to ask for a missing attribute
        return output
    if isinstance(output, Mapping):
        return output["logits"] if output.get("logits") is not None else output
    logits = getattr(output, "logits", None)
    return output if logits is None else logits


def loss_of(output: Any) -> torch.Tensor:
    """The loss a net computed itself, for models built without ``loss_fn``."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if loss is None:
        raise TypeError(
            "loss_fn is None, so the net's output must carry the loss as out['loss'] or out.loss; "
            f"got an output of type {type(output).__name__}. Pass loss_fn=... or return the loss from forward."
        )
    return loss


def batch_size(batch: Any) -> int:
    """The number of samples in a batch: the leading size of the first tensor found in it, depth first."""
    size = _first_leading_size(batch)
    if size is None:
        raise TypeError(
            f"cannot tell how many samples a batch of type {type(batch).__name__} holds: it contains no tensor "
            "with a batch dimension. Override StepRunner.batch_size(batch) to say."
        )
    return size


def _first_leading_size(data: Any) -> int | None:
    if isinstance(data, (tuple, list)):  # the (x, y) of every step first, before any dearer check
        values = data
    elif isinstance(data, torch.Tensor):
        return data.shape[0] if data.ndim > 0 else None
    else:
        values = data.values() if isinstance(data, Mapping) else ()
    for value in values:
        size = _first_leading_size(value)
        if size is not None:
            return size
    return None
