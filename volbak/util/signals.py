"""Holding Ctrl-C and SIGTERM back while cleanup runs.

volbak turns SIGTERM into an exception (cli.Terminated) so that every ``finally``
block runs. A second signal, or one that lands while cleanup itself is running
(removing a helper, restarting containers, deleting an unfinished archive), would cut
that cleanup short. Inside ``deferred()`` both signals are blocked; they are handled
as soon as the block ends.

Blocking them in the main thread is not enough on its own: the kernel hands a signal
sent to the process to any thread that does not block it (a thread started outside
``deferred()``: the dedup lock's refresher, a hook's reader), and Python then runs the
handler in the main thread all the same, in the middle of the cleanup. So a handler
asks ``hold(signum)`` first: inside ``deferred()`` the signal is kept and raised again
as the outermost block ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_depth = 0  # nesting of deferred() in the main thread
_held: list[int] = []  # signals that reached the handler inside deferred()


def hold(signum: int) -> bool:
    """For a signal handler: True if the main thread is inside ``deferred()``; the
    signal is then raised again when the outermost block ends."""
    if _depth == 0:
        return False
    if signum not in _held:
        _held.append(signum)
    return True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only ever handled in the main thread
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if _depth == 0 and _held:
            signum = _held[0]
            _held.clear()
            signal.raise_signal(signum)  # handled now, as if it had just arrived
