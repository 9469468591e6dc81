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
as the outermost block ends. Where SIGINT still has Python's own handler (volbak used as
a library, without the CLI's), ``deferred()`` puts one in that does the same for the
length of the block: Python's raises KeyboardInterrupt at once, and a Ctrl-C that
another thread received would cut the block short (a forked helper started inside one
was left running).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

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


def _holding_int_handler(signum: int, frame: Any) -> None:
    """Python's default SIGINT handler, held inside ``deferred()``."""
    if not hold(signum):
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only ever handled in the main thread
        return
    # Every step inside the try: Python runs a pending handler as a call returns, so a
    # Ctrl-C may come out of any of them, and must find the mask put back (blocked, a
    # later Ctrl-C would wait forever). From the first line on, a handler that asks
    # hold() holds it.
    _depth += 1
    old: set[signal.Signals] | None = None
    swapped = False
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, set())  # blocks nothing yet
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        if _depth == 1 and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _holding_int_handler)
            swapped = True
        yield
    finally:
        _depth -= 1
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # first: never left blocked
        # A Ctrl-C handled between these two lines leaves the holding handler in:
        # outside deferred() it does what Python's does.
        if swapped and signal.getsignal(signal.SIGINT) is _holding_int_handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if _depth == 0 and _held:
            signum = _held[0]
            _held.clear()
            signal.raise_signal(signum)  # handled now, as if it had just arrived
