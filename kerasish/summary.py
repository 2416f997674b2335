"""A table of a net's layers: what each one outputs for an example input, and how many parameters it holds.

:func:`summary` runs one forward pass with hooks on every submodule and returns a :class:`ModelSummary`.

Choices worth knowing:

- One row per module, in the order modules first run. A module called more than once (a layer reused in a loop)
  keeps one row: ``calls`` says how often it ran and ``output_shape`` is from its first call.
- Every parameter is counted in exactly one row, the first that holds it, so the rows add up to the total. A later
  row holding the same (tied) parameter reports it under ``shared_params`` instead.
- Modules that hold parameters but did not run still get a row, at the end, with ``calls=0``; otherwise the rows
  would not add up to the total.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kerasish.device import resolve_device, to_device
from kerasish.migration import example_of
from kerasish.runners import pass_mode

# Nested outputs deeper than this are shown as "..." (and a self-referencing output cannot recurse forever).
MAX_SHAPE_NESTING = 8
# Attributes worth showing on an output object even when they are properties rather than instance attributes.
OUTPUT_ATTRIBUTES = ("logits", "loss")

if TYPE_CHECKING:  # imported by to_frame, when a table is asked for
    import pandas as pd


@dataclass
class LayerRow:
    """One module's line in a :class:`ModelSummary`.

    Attributes:
        name: dotted path from ``named_modules`` (``""`` for the net itself).
        type: the module's class name.
        output_shape: see :func:`shape_of`; ``None`` when the module did not run.
        params: parameters counted in this row (none that an earlier row already counted).
        shared_params: parameters this module holds that an earlier row already counted (tied weights).
        calls: how many times the module ran in the forward pass.
    """

    name: str
    type: str
    output_shape: Any
    params: int
    shared_params: int = 0
    calls: int = 1


@dataclass
class ModelSummary:
    """What :func:`summary` found; ``str()`` renders it as a fixed-width table.

    Attributes:
        rows: one :class:`LayerRow` per module shown, in the order they ran.
        total_params: distinct parameters in the net (a tied weight counts once).
        trainable_params: those with ``requires_grad``.
        non_trainable_params: the rest.
        output_shape: the shape of the whole net's output, see :func:`shape_of`.
    """

    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    output_shape: Any

    def to_frame(self) -> pd.DataFrame:
        """The rows as a DataFrame, one column per :class:`LayerRow` field."""
        import pandas as pd

        return pd.DataFrame([asdict(row) for row in self.rows], columns=[f.name for f in fields(LayerRow)])

    def __str__(self) -> str:
        return render_table(self)


def summary(
    net: nn.Module,
    example: Any = None,
    *,
    input_shape: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    depth: int | None = None,
) -> ModelSummary:
    """Runs ``example`` through ``net`` once and lists its layers, output shapes and parameter counts.

    The pass runs in eval mode without gradients; the net's mode and the grad mode are restored afterwards and the
    hooks removed, however the pass ends.

    Args:
        net: the network.
        example: the input of one forward pass: a tensor (``net(x)``), a tuple or list of positional arguments
            (``net(*example)``) or a mapping of keyword arguments (``net(**example)``). It is moved to ``device``.
        input_shape: instead of ``example``, one sample's shape without the batch dimension (torchkeras's
            spelling): the example is a batch of one float32 zero sample.
        device: where the example goes; ``None`` means the device of the net's first parameter or buffer (the CPU
            for a net with neither). The net itself is not moved.
        depth: ``None`` shows every module that holds parameters itself or has no children. An int ``k >= 1`` shows
            the modules ``k`` levels down (top-level children for 1) with the parameters of everything below them,
            plus any shallower module that holds parameters itself or has no children. The net itself gets a row
            only when it holds parameters directly or has no children.

    Returns:
        The rows and totals; ``print`` it for the table.

    Raises:
        TypeError: ``net`` is not an ``nn.Module``.
        ValueError: ``depth`` is not ``None`` or an int >= 1.
        RuntimeError: the forward pass failed on ``example`` (the original error is chained).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> result = summary(net, torch.zeros(5, 4))
        >>> [(row.name, row.type, row.output_shape, row.params) for row in result.rows]
        [('0', 'Linear', (5, 3), 15), ('1', 'ReLU', (5, 3), 0), ('2', 'Linear', (5, 2), 8)]
        >>> print(result)
        Layer (type)  Output shape  Params
        ==================================
        0 (Linear)    (5, 3)            15
        1 (ReLU)      (5, 3)             0
        2 (Linear)    (5, 2)             8
        ==================================
        Total params: 23
        Trainable params: 23
        Non-trainable params: 0
    """
    example = example_of(example, input_shape)
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module; got {type(net).__name__}: {net!r}")
    _check_depth(depth)
    target = _device_of(net) if device is None else resolve_device(device)
    example = to_device(example, target)
    calls = _CallLog()
    handles = []
    try:
        for module in net.modules():
            handles.append(module.register_forward_pre_hook(calls.on_begin))
            handles.append(module.register_forward_hook(calls.on_end))
        with pass_mode(net, training=False):
            output = _run(net, example)
    finally:
        for handle in handles:
            handle.remove()
    # Counted after the pass, so lazy modules have their parameters by now.
    total, trainable = _count(net.parameters())
    rows = _rows(net, calls, depth)
    return ModelSummary(rows, total, trainable, total - trainable, shape_of(output))


class _CallLog:
    """Forward hooks' record: each module's call count and first output shape, in the order of first calls."""

    def __init__(self) -> None:
        self.counts: dict[nn.Module, int] = {}
        self.shapes: dict[nn.Module, Any] = {}

    def on_begin(self, module: nn.Module, args: tuple) -> None:
        self.counts[module] = self.counts.get(module, 0) + 1

    def on_end(self, module: nn.Module, args: tuple, output: Any) -> None:
        if module not in self.shapes:
            self.shapes[module] = shape_of(output)


def _check_depth(depth: Any) -> None:
    if depth is None:
        return
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be None (every layer) or an int >= 1 (levels of nesting); got {depth!r}")


def _device_of(net: nn.Module) -> torch.device:
    first = next(itertools.chain(net.parameters(), net.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _run(net: nn.Module, example: Any) -> Any:
    try:
        if isinstance(example, Mapping):
            return net(**example)
        if isinstance(example, (tuple, list)):
            return net(*example)
        return net(example)
    except Exception as err:
        raise RuntimeError(
            f"the example could not run through the net: {type(err).__name__}: {err}. The example had shape "
            f"{format_shape(shape_of(example))}; pass what {type(net).__name__}.forward takes: a tensor, a tuple of "
            "positional arguments or a dict of keyword arguments"
        ) from err


def _count(params: Iterator[nn.Parameter]) -> tuple[int, int]:
    """``(all, trainable)`` element counts of ``params``."""
    total = trainable = 0
    for param in params:
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return total, trainable


def _shown_modules(net: nn.Module, depth: int | None) -> Iterator[tuple[str, nn.Module, bool]]:
    """``(name, module, recursive)`` for each module that gets a row; ``recursive``: count its subtree's params."""
    for name, module in net.named_modules():
        level = name.count(".") + 1 if name else 0
        if depth is not None and level >= depth:
            if level == depth:
                yield name, module, True
            continue
        holds_params = next(module.parameters(recurse=False), None) is not None
        if holds_params or next(module.children(), None) is None:
            yield name, module, False


def _rows(net: nn.Module, calls: _CallLog, depth: int | None) -> list[LayerRow]:
    ran = {module: index for index, module in enumerate(calls.counts)}  # order of first calls
    never = len(ran)  # modules that never ran go last, in named_modules order (the sort is stable)

    def first_call(item: tuple[str, nn.Module, bool]) -> int:
        _, module, recursive = item
        return min((ran.get(m, never) for m in (module.modules() if recursive else [module])), default=never)

    counted: set[int] = set()
    rows = []
    for name, module, recursive in sorted(_shown_modules(net, depth), key=first_call):
        params = list(module.parameters(recurse=recursive))
        fresh = [param for param in params if id(param) not in counted]
        counted.update(id(param) for param in params)
        held, new = sum(p.numel() for p in params), sum(p.numel() for p in fresh)
        shape, count = calls.shapes.get(module), calls.counts.get(module, 0)
        rows.append(LayerRow(name, type(module).__name__, shape, new, held - new, count))
    return rows


def shape_of(value: Any) -> Any:
    """A readable shape for a value: tensors become tuples of ints, containers keep their structure.

    Mappings become dicts (keeping only entries that hold tensors), lists lists, tuples tuples, namedtuples dicts of
    their fields, and other objects (model outputs with ``logits`` / ``loss`` attributes) dicts of their public
    attributes that hold tensors. A value with no tensor inside gives ``None``.

    Example:
        >>> shape_of({"logits": torch.zeros(2, 3), "loss": torch.tensor(0.5), "note": "hi"})
        {'logits': (2, 3), 'loss': ()}
        >>> shape_of((torch.zeros(4), [torch.zeros(1, 2)]))
        ((4,), [(1, 2)])
    """
    return _shape(value, MAX_SHAPE_NESTING)


def _shape(value: Any, levels: int) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if levels == 0:
        return "..."
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return _keep_tensors(zip(value._fields, value, strict=True), levels)
    if isinstance(value, Mapping):
        return _keep_tensors(value.items(), levels)
    if isinstance(value, (tuple, list)):
        shapes = [_shape(item, levels - 1) for item in value]
        return shapes if isinstance(value, list) else tuple(shapes)
    if isinstance(value, (str, bytes, int, float, complex, bool)) or value is None:
        return None
    names = [name for name in vars(value) if not name.startswith("_")] if hasattr(value, "__dict__") else []
    names += [name for name in OUTPUT_ATTRIBUTES if name not in names and hasattr(value, name)]
    return _keep_tensors(((name, getattr(value, name)) for name in names), levels) or None


def _keep_tensors(items: Any, levels: int) -> dict:
    shapes = ((key, _shape(item, levels - 1)) for key, item in items)
    return {key: shape for key, shape in shapes if shape is not None}


def format_shape(shape: Any) -> str:
    """Renders a :func:`shape_of` result compactly: ``(2, 3)``, ``{logits: (2, 3), loss: ()}``, ``-`` for none.

    Example:
        >>> format_shape({"logits": (2, 3), "hidden": [(2, 5), (2, 5)]})
        '{logits: (2, 3), hidden: [(2, 5), (2, 5)]}'
    """
    if shape is None:
        return "-"
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{key}: {format_shape(item)}" for key, item in shape.items()) + "}"
    if isinstance(shape, list):
        return "[" + ", ".join(format_shape(item) for item in shape) + "]"
    if isinstance(shape, tuple) and not all(isinstance(size, int) for size in shape):
        return "(" + ", ".join(format_shape(item) for item in shape) + ("," if len(shape) == 1 else "") + ")"
    return str(shape)


def render_table(result: ModelSummary) -> str:
    """The fixed-width table ``str(ModelSummary)`` shows: layer and type, output shape, params, then the totals."""
    header = ("Layer (type)", "Output shape", "Params")
    cells = [(_layer_cell(row), format_shape(row.output_shape), _params_cell(row)) for row in result.rows]
    widths = [max(len(line[column]) for line in [header, *cells]) for column in range(3)]

    def line(cell: tuple[str, str, str]) -> str:
        return f"{cell[0]:<{widths[0]}}  {cell[1]:<{widths[1]}}  {cell[2]:>{widths[2]}}"

    rule = "=" * (sum(widths) + 4)
    totals = [
        f"Total params: {result.total_params:,}",
        f"Trainable params: {result.trainable_params:,}",
        f"Non-trainable params: {result.non_trainable_params:,}",
    ]
    return "\n".join([line(header), rule, *(line(cell) for cell in cells), rule, *totals])


def _layer_cell(row: LayerRow) -> str:
    cell = f"{row.name or '<root>'} ({row.type})"
    return cell if row.calls <= 1 else f"{cell} ×{row.calls}"


def _params_cell(row: LayerRow) -> str:
    return f"{row.params:,}" if not row.shared_params else f"{row.params:,} (+{row.shared_params:,} shared)"
