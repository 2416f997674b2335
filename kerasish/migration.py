"""What users coming from torchkeras, Keras, Lightning or Hugging Face type, and what kerasish answers.

Where another library's spelling is unambiguous and free to accept, kerasish accepts it (``fit(quiet=True)``,
``load_ckpt()`` without a path, ``summary(input_shape=...)``). Where it means something kerasish does elsewhere,
the error says where: an argument that belongs on the model, a hook under another name, extra positional arguments
in torchkeras's order. See the README's "Coming from torchkeras, Keras or Hugging Face".
"""

from __future__ import annotations

import difflib
import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from kerasish.checks import user_stacklevel

F = TypeVar("F", bound=Callable[..., Any])

_ON_MODEL = "it is set on the model, for fit, evaluate and predict alike"
FOREIGN_ARGUMENTS: dict[str, dict[str, str]] = {
    "fit": {
        "mixed_precision": f"{_ON_MODEL}: KerasModel(..., precision='bf16') or precision='fp16'",
        "cpu": f"{_ON_MODEL}: KerasModel(..., device='cpu')",
        "gradient_accumulation_steps": f"{_ON_MODEL}: KerasModel(..., accumulate_grad_batches=N)",
        "wandb": "kerasish has no Weights & Biases callback; log from a Callback's on_epoch_end(model, logs), or use "
        "CSVLogger or TensorBoard",
        "validation_data": "val data is fit's second argument: fit(train_dl, val_dl, epochs)",
        "batch_size": "kerasish trains on iterables of batches: set batch_size on the DataLoader",
        "shuffle": "set shuffle on the DataLoader",
        "initial_epoch": "a run continues where it stopped with fit(state_path=..., resume=True)",
    },
    "evaluate": {
        "batch_size": "kerasish evaluates iterables of batches: set batch_size on the DataLoader",
        "return_dict": "evaluate always returns a dict",
    },
    "predict": {
        "batch_size": "kerasish predicts iterables of batches: set batch_size on the DataLoader",
    },
}

# torchkeras's fit(train_data, val_data, epochs, ckpt_path, patience, monitor, mode, callbacks, plot, ...): the names
# of the positional arguments kerasish takes by keyword only.
TORCHKERAS_FIT_ORDER = ("ckpt_path", "patience", "monitor", "mode", "callbacks", "plot")

# Hook names of torchkeras, Lightning and Keras callbacks, and kerasish's hook that runs at that point.
FOREIGN_HOOKS = {
    "on_fit_start": "on_fit_begin",
    "on_train_begin": "on_fit_begin",
    "on_train_start": "on_fit_begin",
    "on_train_end": "on_fit_end",
    "on_epoch_start": "on_epoch_begin",
    "on_train_epoch_start": "on_epoch_begin",
    "on_train_epoch_end": "on_epoch_end",
    "on_validation_epoch_end": "on_epoch_end",
    "on_validation_end": "on_epoch_end",
    "on_train_batch_start": "on_train_batch_begin",
    "on_validation_batch_start": "on_val_batch_begin",
    "on_validation_batch_end": "on_val_batch_end",
    "on_test_batch_begin": "on_val_batch_begin",
    "on_test_batch_end": "on_val_batch_end",
    "on_predict_start": "on_predict_begin",
    "on_predict_batch_start": "on_predict_batch_begin",
}


def foreign_arguments(method: F) -> F:
    """Wraps ``KerasModel.fit`` / ``evaluate`` / ``predict`` to answer other libraries' arguments with the kerasish way.

    Only arguments kerasish does not take are looked at, before the call; the method's own are passed on untouched.
    """
    hints = FOREIGN_ARGUMENTS[method.__name__]
    parameters = inspect.signature(method).parameters.values()
    positional = [p.name for p in parameters if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD][1:]

    @functools.wraps(method)
    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) > len(positional):
            raise TypeError(_positional_hint(method.__name__, positional, args))
        for name in kwargs.keys() & hints.keys():
            raise TypeError(f"{method.__name__}() takes no argument {name}={kwargs[name]!r}: {hints[name]}")
        return method(self, *args, **kwargs)

    return checked  # type: ignore[return-value]


def _positional_hint(name: str, positional: list[str], args: tuple) -> str:
    message = f"{name}() takes {', '.join(positional)} by position and the rest by name; got {len(args)} positional"
    extra = args[len(positional) :]
    if name != "fit" or len(extra) > len(TORCHKERAS_FIT_ORDER):
        return message
    named = ", ".join(f"{key}={value!r}" for key, value in zip(TORCHKERAS_FIT_ORDER, extra, strict=False))
    return f"{message}. In torchkeras's order these are: fit({', '.join(positional)}, {named})"


def check_hooks(callback: Any, hooks: tuple[str, ...], base: type) -> None:
    """Checks a callback's ``on_*`` methods before a fit: kerasish's hooks taking ``(model, logs)``, no others.

    Raises:
        TypeError: a hook that cannot be called as ``hook(model, logs)`` (torchkeras's take only ``model``), or a
            method under another library's hook name (``on_fit_start``), which kerasish would never call.

    Warns:
        UserWarning: any other ``on_*`` method that is no hook (``on_epoch_ends``): it would never run.
    """
    owner = type(callback).__name__
    for name in _on_names(callback, base):
        if name in hooks:
            _check_signature(callback, name, owner)
        elif name in FOREIGN_HOOKS:
            raise TypeError(
                f"{owner}.{name} is another library's hook, which kerasish never calls; kerasish runs "
                f"{FOREIGN_HOOKS[name]}(self, model, logs) at that point: rename it"
            )
        else:
            close = difflib.get_close_matches(name, hooks, n=1)
            hint = f"did you mean {close[0]}?" if close else f"the hooks are {', '.join(hooks)}"
            message = f"{owner}.{name} is not a kerasish hook, so it never runs; {hint}"
            warnings.warn(message, UserWarning, stacklevel=user_stacklevel())


def _on_names(callback: Any, base: type) -> list[str]:
    """The ``on_*`` methods the callback's own classes or the instance define (not ``base``'s no-op hooks)."""
    names = {name for klass in type(callback).__mro__ if klass not in (base, object) for name in vars(klass)}
    names.update(vars(callback))
    return sorted(name for name in names if name.startswith("on_") and callable(getattr(callback, name, None)))


def _check_signature(callback: Any, name: str, owner: str) -> None:
    try:
        inspect.signature(getattr(callback, name)).bind(None, {})
    except TypeError:
        raise TypeError(
            f"{owner}.{name} must take (model, logs), as every kerasish hook is called; "
            f"its signature is {name}{inspect.signature(getattr(callback, name))}"
        ) from None
    except ValueError:  # no signature to read (a builtin): trust it
        return


def quiet_verbose(quiet: Any, verbose: Any) -> Any:
    """torchkeras's ``quiet``: ``True`` is ``verbose=0``; ``None`` and ``False`` leave ``verbose`` as given."""
    if quiet is not None and not isinstance(quiet, bool):
        raise TypeError(f"quiet={quiet!r} is not valid; use True (print nothing, as verbose=0), False or None")
    return 0 if quiet else verbose


def example_of(example: Any, input_shape: Any) -> Any:
    """``summary``'s example: as given, or a batch of one zero sample of ``input_shape`` (torchkeras's spelling)."""
    if (example is None) == (input_shape is None):
        raise TypeError(
            "summary needs an example of what the net takes (a tensor, a tuple or a dict of inputs) or "
            f"input_shape=(one sample's shape); got example={example!r} and input_shape={input_shape!r}"
        )
    if example is not None:
        return example
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else None
    if not shape or not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape):
        raise ValueError(
            f"input_shape={input_shape!r} is not valid; use one sample's shape without the batch dimension, such "
            "as (3, 32, 32), or pass an example tensor (integer inputs, such as token ids, need one)"
        )
    return torch.zeros((1, *shape))


def last_checkpoint(checkpoint: Any) -> Any:
    """The file ``load_ckpt()`` loads without a path: the best one the latest fit's ``ckpt_path`` wrote."""
    path = None if checkpoint is None else checkpoint.best_path
    if path is None:
        why = "had no ckpt_path" if checkpoint is None else "wrote no checkpoint yet"
        raise ValueError(f"load_ckpt() without a path loads the latest fit's best checkpoint, but that fit {why}; "
                         "pass the file: load_ckpt('path/to/weights.pt')")  # fmt: skip
    return path
