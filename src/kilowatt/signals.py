"""Install signal handlers for the length of a ``with`` block, then put the old ones back.

One helper for every place that turns SIGTERM/SIGINT into an orderly stop (the training
loop, its worker launcher, the job worker, the Ray serve wait, the quickstart's cleanup):

    >>> stopped = []
    >>> with handling_signals(lambda signum, frame: stopped.append(signum)):
    ...     pass  # a SIGTERM or SIGINT here is recorded instead of ending the process
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["STOP_SIGNALS", "handling_signals"]

#: The signals a scheduler (SIGTERM) or a person (Ctrl-C, SIGINT) sends to stop a process.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Handler = Callable[[int, Any], Any] | int | signal.Handlers


@contextmanager
def handling_signals(
    handler: Handler, signums: Iterable[signal.Signals] = STOP_SIGNALS
) -> Iterator[bool]:
    """Handle ``signums`` with ``handler`` inside the block; restore the previous handlers
    after it, however it ends.

    Python lets only the main thread install handlers; elsewhere (a test's thread, a Ray
    actor) nothing is installed, the previous behaviour stays, and the block gets False.
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield True
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
