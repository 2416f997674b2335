"""How a batch becomes the net's inputs and labels, and how the net's output becomes preds and a loss.

The conventions, in one place for training, evaluation and prediction:

- a tensor, or a 1-tuple ``(x,)``: inputs only, ``net(x)``;
- a tuple or list ``(x1, ..., xk, y)``: ``net(x1, ..., xk)`` with labels ``y``;
- a mapping: ``net(**batch)``, labels ``batch["labels"]`` when present.

An output that is a mapping with ``"logits"`` (or has a ``.logits`` attribute) gives those as preds; its ``"loss"``
(or ``.loss``) is the loss when the model has no ``loss_fn``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

LABELS_KEY = "labels"


def split_batch(batch: Any, *, keep_mapping_labels: bool = False) -> tuple[tuple, dict, Any]:
    """Returns ``(args, kwargs, labels)`` for one batch; ``labels`` is ``None`` when the batch has none.

    Args:
        batch: a tensor, a tuple or list, or a mapping.
        keep_mapping_labels: leave ``"labels"`` among a mapping's keyword arguments, for nets that compute their
            own loss from them.
    """
    if isinstance(batch, Mapping):
        kwargs = dict(batch)
        labels = kwargs.get(LABELS_KEY) if keep_mapping_labels else kwargs.pop(LABELS_KEY, None)
        return (), kwargs, labels
    if isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise ValueError("a batch is an empty tuple; expected (x, y), (x1, ..., xk, y) or (x,)")
        if len(batch) == 1:
            return (batch[0],), {}, None
        return tuple(batch[:-1]), {}, batch[-1]
    return (batch,), {}, None


def preds_of(output: Any) -> Any:
    """The predictions in a net's output: its ``logits`` when it carries them, else the output itself."""
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
    if isinstance(data, torch.Tensor):
        return data.shape[0] if data.dim() > 0 else None
    values = data.values() if isinstance(data, Mapping) else data if isinstance(data, (tuple, list)) else ()
    for value in values:
        size = _first_leading_size(value)
        if size is not None:
            return size
    return None
