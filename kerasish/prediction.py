"""Joining the per-batch outputs of ``predict`` into one output shaped like a single batch's.

A net's output for one batch is a tensor, or tuples, lists and mappings of tensors (``None`` allowed where every
batch gives ``None``). ``concat_outputs`` joins the batches along dim 0, position by position.

Batches need not agree beyond dim 0: with dynamic padding, token classification gives logits of shape (8, 12, 5)
for one batch and (8, 17, 5) for the next. Such tensors are padded at the end of every non-batch dimension to the
largest size seen, with ``pad_value``.

Why the default ``PAD_VALUE`` is -100: it is the value Hugging Face's data collators pad token labels with, and
the one torch's ``CrossEntropyLoss`` ignores (``ignore_index=-100``). Padding predictions with it too means a single
mask, ``labels != -100``, selects the real positions of both the padded labels and the padded predictions. Pass
``pad_value=float("nan")`` to make padded float positions impossible to mistake for values.

Nothing here reads a value back from the device: leaves stay where they are, and the caller moves the result to the
CPU once (``map_leaves`` helps).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from kerasish.device import rebuild

PAD_VALUE = -100

_SUPPORTED = "predict concatenates tensors, and tuples, lists and dicts of them (None where every batch gives None)"


def concat_outputs(batches: list, pad_value: float = PAD_VALUE) -> Any:
    """Concatenates the outputs of a net's batches along dim 0, keeping the structure of one batch's output.

    Tensors are joined with ``torch.cat``; those whose shapes differ beyond dim 0 are first padded at the end of
    each non-batch dimension with ``pad_value``. A zero-dimensional tensor (say a loss in an output dict) is one
    value per batch, so those are stacked into shape ``(len(batches),)``. Tuples and lists keep their type
    (namedtuples included); mappings (``OrderedDict``, Hugging Face's ``ModelOutput``) become plain dicts with the
    first batch's key order. Leaves stay on their device.

    Args:
        batches: the outputs of the net for each batch, in order; all with the same structure.
        pad_value: fills the padded positions. It must be representable in the padded tensor's dtype: ``nan`` fits
            float tensors only, -100 fits neither bool nor unsigned tensors.

    Returns:
        One output with the structure of ``batches[0]``.

    Raises:
        ValueError: ``batches`` is empty; batches disagree on a tensor's number of dimensions, a sequence's length
            or a mapping's keys; or ``pad_value`` cannot be stored in a tensor that needs padding.
        TypeError: a leaf is neither a tensor nor ``None`` in every batch.

    Example:
        >>> out = concat_outputs([{"ids": torch.tensor([[1, 2]])}, {"ids": torch.tensor([[3, 4, 5]])}])
        >>> out["ids"]
        tensor([[   1,    2, -100],
                [   3,    4,    5]])
    """
    if len(batches) == 0:
        raise ValueError("predict: no outputs to concatenate (batches is empty); did the loader yield any batch?")
    return _concat(list(batches), "outputs", pad_value)


def check_structure(outputs: Any, path: str = "outputs") -> None:
    """Raises the ``TypeError`` :func:`concat_outputs` would, for one batch's outputs: before a pass is spent.

    Example:
        >>> check_structure({"logits": torch.zeros(2, 3), "names": ["a", "b"]})
        Traceback (most recent call last):
        ...
        TypeError: predict: outputs['names'][0] is a str in batch 0; predict concatenates tensors, ...
    """
    kind = _check_same_kind([outputs], path)
    if kind == "mapping":
        for key, value in outputs.items():
            check_structure(value, f"{path}[{key!r}]")
    elif kind == "sequence":
        for index, value in enumerate(outputs):
            check_structure(value, f"{path}[{index}]")


def map_leaves(fn: Callable[[torch.Tensor], Any], outputs: Any) -> Any:
    """Applies ``fn`` to every tensor in ``outputs`` and returns the same structure.

    Mappings come back as plain dicts, tuples and lists (namedtuples included) as their own type. ``None`` and
    any other non-tensor leaf are returned unchanged.

    Example:
        >>> map_leaves(lambda t: t.float(), {"ids": torch.tensor([1]), "extra": None})
        {'ids': tensor([1.]), 'extra': None}
    """
    if isinstance(outputs, torch.Tensor):
        return fn(outputs)
    if isinstance(outputs, Mapping):
        return {key: map_leaves(fn, value) for key, value in outputs.items()}
    if isinstance(outputs, (tuple, list)):
        return rebuild(outputs, [map_leaves(fn, value) for value in outputs])
    return outputs


def _concat(items: list, path: str, pad_value: float) -> Any:
    """Concatenates one position of every batch; ``path`` names that position in error messages."""
    kind = _check_same_kind(items, path)
    if kind == "none":
        return None
    if kind == "tensor":
        return _concat_tensors(items, path, pad_value)
    if kind == "mapping":
        return _concat_mappings(items, path, pad_value)
    return _concat_sequences(items, path, pad_value)


def _kind(value: Any) -> str | None:
    if value is None:
        return "none"
    if isinstance(value, torch.Tensor):
        return "tensor"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (tuple, list)):
        return "sequence"
    return None


def _check_same_kind(items: list, path: str) -> str:
    """Returns the kind of leaf or container at ``path``, after checking that every batch has the same kind."""
    first = _kind(items[0])
    for index, item in enumerate(items):
        kind = _kind(item)
        if kind is None:
            raise TypeError(f"predict: {path} is a {type(item).__name__} in batch {index}; {_SUPPORTED}")
        if kind != first:
            raise TypeError(
                f"predict: {path} is a {type(items[0]).__name__} in batch 0 but a {type(item).__name__} "
                f"in batch {index}; {_SUPPORTED}"
            )
    return first


def _concat_mappings(items: list, path: str, pad_value: float) -> dict:
    keys = list(items[0].keys())
    for index, item in enumerate(items):
        if set(item.keys()) != set(keys):
            differing = sorted(set(keys) ^ set(item.keys()), key=repr)
            raise ValueError(
                f"predict: {path} has keys {keys} in batch 0 but {list(item.keys())} in batch {index} "
                f"(differing: {', '.join(map(repr, differing))}); every batch must give the same keys"
            )
    return {key: _concat([item[key] for item in items], f"{path}[{key!r}]", pad_value) for key in keys}


def _concat_sequences(items: list, path: str, pad_value: float) -> tuple | list:
    length = len(items[0])
    for index, item in enumerate(items):
        if len(item) != length:
            raise ValueError(
                f"predict: {path} has {length} items in batch 0 but {len(item)} in batch {index}; "
                "every batch must give the same number"
            )
    columns = [_concat([item[i] for item in items], f"{path}[{i}]", pad_value) for i in range(length)]
    return rebuild(items[0], columns)


def _concat_tensors(tensors: list[torch.Tensor], path: str, pad_value: float) -> torch.Tensor:
    ndim = tensors[0].dim()
    for index, tensor in enumerate(tensors):
        if tensor.dim() != ndim:
            raise ValueError(
                f"predict: {path} has {ndim} dimensions in batch 0 but {tensor.dim()} in batch {index} "
                f"(shapes {tuple(tensors[0].shape)} and {tuple(tensor.shape)}); every batch must give it the same "
                "number of dimensions"
            )
    if ndim == 0:
        return torch.stack(tensors)
    if all(tensor.shape[1:] == tensors[0].shape[1:] for tensor in tensors):
        return torch.cat(tensors)
    return _pad_and_concat(tensors, path, pad_value)


def _pad_and_concat(tensors: list[torch.Tensor], path: str, pad_value: float) -> torch.Tensor:
    """Copies each tensor into its rows of one tensor pre-filled with ``pad_value``, sized to the largest shape."""
    dtype = functools.reduce(torch.promote_types, (tensor.dtype for tensor in tensors))
    fill = _fill_value(pad_value, dtype, path)
    trailing = [max(sizes) for sizes in zip(*(tensor.shape[1:] for tensor in tensors), strict=True)]
    rows = sum(tensor.shape[0] for tensor in tensors)
    out = tensors[0].new_full((rows, *trailing), fill, dtype=dtype)
    start = 0
    for tensor in tensors:
        region = (slice(start, start + tensor.shape[0]), *(slice(0, size) for size in tensor.shape[1:]))
        out[region] = tensor
        start += tensor.shape[0]
    return out


def _fill_value(pad_value: float, dtype: torch.dtype, path: str) -> float | int | bool:
    """``pad_value`` as a value of ``dtype``; a ValueError when ``dtype`` cannot hold it exactly."""
    if dtype.is_floating_point or dtype.is_complex:
        if math.isfinite(pad_value) and abs(pad_value) > torch.finfo(dtype).max:
            raise ValueError(
                f"predict: {path} is {dtype} and needs padding, but pad_value={pad_value!r} is beyond its range "
                f"(±{torch.finfo(dtype).max:g}); pass a smaller pad_value, such as -100 or float('nan')"
            )
        return pad_value
    if dtype == torch.bool:
        if pad_value in (0, 1):
            return bool(pad_value)
        raise ValueError(
            f"predict: {path} is torch.bool and needs padding, but pad_value={pad_value!r} is not a bool; "
            "pass pad_value=0 (False) or 1 (True)"
        )
    info = torch.iinfo(dtype)
    if float(pad_value).is_integer() and info.min <= pad_value <= info.max:
        return int(pad_value)
    suggestion = PAD_VALUE if info.min <= PAD_VALUE else 0
    raise ValueError(
        f"predict: {path} is {dtype} and needs padding, but pad_value={pad_value!r} is not an integer in "
        f"[{info.min}, {info.max}]; pass an integer pad_value in that range, such as {suggestion}"
    )
