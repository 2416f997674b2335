"""What ``verbose=1`` shows: a bar per pass, a line per epoch; ``verbose=2``: only the lines; ``verbose=0``: nothing.

Bars are drawn only where they can be redrawn in place (see :func:`bars_wanted`): in a terminal, or as widgets in a
notebook. With stderr going to a pipe or a file, ``verbose=1`` prints the epoch lines alone, so a log holds no
carriage-return frames.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm.std import tqdm as std_tqdm

from kerasish.distributed import is_main_process

# The bar's loss is read from the device (a host sync) at most this often.
REFRESH_SECONDS = 0.5
# A bar appears only once its pass has run this long. A shorter pass would just flicker, and skipping its first draw
# and its erasure saves about 0.15 ms per pass, 0.5 % of a small model's epoch.
BAR_DELAY_SECONDS = 0.5


def bars_wanted() -> bool:
    """Whether ``verbose=1`` draws bars: stderr is a terminal, or this is a notebook's kernel.

    A bar redraws itself with carriage returns, which a terminal and a notebook (tqdm.auto's widget) show as one line
    changing, and a pipe or a file keeps as a frame per redraw. Asked when each pass begins, so output redirected
    between fits is honoured.
    """
    return _in_notebook_kernel() or _is_terminal(sys.stderr)


def _in_notebook_kernel() -> bool:
    # The test tqdm.auto makes to pick its widget. A kernel has imported IPython already; a script that has not must
    # not pay for importing it here.
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no stderr at all (None under pythonw), or a closed one: not a terminal
        return False


def say(message: str, model: Any) -> None:
    """Prints a line to stdout without tearing an open progress bar, from the main process only.

    Every line kerasish prints goes through here, so this is the one place that decides: the other ranks of a
    data-parallel fit stay silent (``model.is_main_process``; anything without that attribute counts as main).
    """
    if is_main_process(model):
        std_tqdm.write(message, file=sys.stdout)


def format_logs(logs: dict) -> str:
    """``train_loss=0.1234  val_acc=0.9650  lr=0.0010  (42 ms)``: an epoch's numbers on one line."""
    parts = [f"{key}={_number(value)}" for key, value in logs.items() if key not in ("epoch", "time")]
    if "time" in logs:
        seconds = logs["time"]
        parts.append(f"({seconds * 1e3:.0f} ms)" if seconds < 1 else f"({seconds:.1f} s)")
    return "  ".join(parts)


def _number(value: object) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}" if abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


class PassProgress:
    """A progress bar over one pass, whose loss figure refreshes at most every :data:`REFRESH_SECONDS`.

    The bar is drawn once the pass has run :data:`BAR_DELAY_SECONDS`, and erased when it ends.

    With ``enabled=False``, or where :func:`bars_wanted` says no (stderr is a pipe or a file, outside a notebook),
    every method is a no-op and nothing is printed.

    Args:
        enabled: whether the caller wants a bar (``verbose=1`` on the main process).
        description: the bar's label, e.g. ``"epoch 3/20 train"``.
        total: the number of batches, or ``None`` when the loader has no length.
        read_loss: returns the running loss; called only when the figure refreshes. ``None``: no loss figure.
    """

    def __init__(
        self, *, enabled: bool, description: str, total: int | None, read_loss: Callable[[], float] | None
    ) -> None:
        self.bar = None
        if enabled and bars_wanted():
            # Imported when a bar is first wanted: in a notebook without ipywidgets, tqdm.auto warns on import,
            # and a fit with verbose=0 or 2 should not show that.
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, delay=BAR_DELAY_SECONDS)
        self.read_loss = read_loss
        self.next_refresh = time.monotonic() + REFRESH_SECONDS

    def step(self) -> None:
        """Advances the bar by one batch."""
        if self.bar is None:
            return
        self.bar.update()
        if self.read_loss is None:
            return
        now = time.monotonic()
        if now >= self.next_refresh:
            self.next_refresh = now + REFRESH_SECONDS
            self.bar.set_postfix_str(f"loss={self.read_loss():.4f}", refresh=False)  # sync point, throttled

    def close(self) -> None:
        """Removes the bar."""
        if self.bar is not None:
            self.bar.close()
