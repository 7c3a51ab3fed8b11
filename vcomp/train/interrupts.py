"""Hold Ctrl-C / SIGTERM back while a training step and its bookkeeping finish.

Why: a step updates the weights, then the step counter, then the log; an interrupt that lands in
between leaves a checkpoint whose step has no log line (or whose weights are one update ahead of its
step, so a resumed run trains that batch twice). Inside `deferred_interrupts()` the first SIGINT or
SIGTERM is only noted and delivered, through the handler that was in place, when the block ends; a
second one is delivered at once, so a stuck step can still be stopped.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Defer SIGINT/SIGTERM whose handler is Python code (the ones that would raise mid-step)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    handled = {s: h for s, h in previous.items() if callable(h)}
    pending: list[int] = []

    def note(signum, frame):
        if pending:  # the second signal: the user means it
            handled[signum](signum, frame)
        pending.append(signum)

    for s in handled:
        signal.signal(s, note)
    try:
        yield
    finally:
        for s, h in handled.items():
            signal.signal(s, h)
    if pending:
        handled[pending[0]](pending[0], None)
