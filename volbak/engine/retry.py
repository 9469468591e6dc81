"""The one retry helper for engine operations.

Right after an aborted transfer an engine may still hold a helper or a volume for a
moment and refuse to remove it; a connection may drop while dockerd restarts. Cleanup
must not be cut short by either, nor by a signal: attempts run with SIGINT/SIGTERM
held back (``deferred``), for at most ``seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import docker.errors

from ..util.signals import deferred
from .client import FAILURES

T = TypeVar("T")

TRANSIENT = FAILURES


def retry(op: Callable[[], T], *, seconds: float = 10.0,
          gone_ok: bool = True) -> tuple[bool, T | None]:
    """Call ``op`` until it succeeds or ``seconds`` pass; returns (done, result).
    With ``gone_ok`` a NotFound counts as done (removing what is already gone).
    Never raises an engine error: the caller decides what a failure means."""
    deadline = time.monotonic() + seconds
    delay = 0.1
    with deferred():
        while True:
            try:
                return True, op()
            except docker.errors.NotFound:
                if gone_ok:
                    return True, None
                return False, None
            except TRANSIENT:
                if time.monotonic() + delay > deadline:
                    return False, None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
