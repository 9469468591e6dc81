"""Holding Ctrl-C and SIGTERM back while cleanup runs.

volbak turns SIGTERM into an exception (cli.Terminated) so that every ``finally``
block runs. A second signal, or one that lands while cleanup itself is running
(removing a helper, restarting containers, deleting an unfinished archive), would cut
that cleanup short. Inside ``deferred()`` both signals are blocked; they are handled
as soon as the block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only ever handled in the main thread
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
