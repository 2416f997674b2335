"""The argument checks every part of kerasish shares: counts, flags, and classes passed where instances belong.

Each raises before any training step, with a message that names the argument, the value received and what would
be valid. Counts accept any integral number (``numpy.int64(3)`` from a config or a sweep), never a bool, and come
back as plain ``int``.
"""

from __future__ import annotations

import numbers
import os
import sys
from typing import Any

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def integer(value: Any, name: str, *, minimum: int, hint: str = "") -> int:
    """``value`` as an ``int`` when it is an integral number ``>= minimum`` (not a bool); else a ``ValueError``.

    Example:
        >>> import numpy as np
        >>> integer(np.int64(3), "epochs", minimum=1)
        3
        >>> integer(2.0, "epochs", minimum=1)
        Traceback (most recent call last):
        ...
        ValueError: epochs=2.0 is not valid; use an int >= 1
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} is not valid; use an int >= {minimum}{f' ({hint})' if hint else ''}")
    return int(value)


def flag(value: Any, name: str) -> bool:
    """``value`` when it is a bool; else a ``ValueError``: ``"no"``, ``0`` or ``None`` must not pass for one.

    Example:
        >>> flag("no", "restore_best_weights")
        Traceback (most recent call last):
        ...
        ValueError: restore_best_weights='no' is not valid; use True or False
    """
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not valid; use True or False")
    return value


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the user's line: the first frame outside kerasish.

    Counted from the caller of ``warnings.warn`` (level 1), however deep inside kerasish the warning is raised.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def not_a_class(value: Any, name: str, example: str) -> None:
    """Raises a ``TypeError`` when ``value`` is a class: ``loss_fn=nn.CrossEntropyLoss`` instead of an instance.

    Args:
        value: what the user passed.
        name: the argument, as the message names it.
        example: how to build an instance, with ``{cls}`` for the class's name, e.g. ``"{cls}()"``.
    """
    if isinstance(value, type):
        instance = example.format(cls=value.__name__)
        raise TypeError(f"{name} is the class {value.__name__}, not an instance of it; pass {name}={instance}")
