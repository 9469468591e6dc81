"""How the stages are put together: the two shapes every operation uses.

- ``pump_into``: a source read in a thread, each piece inspected (tar parser, progress)
  and handed to a sink (a repository writer, which compresses/encrypts/hashes/stores).
  Backup uses it.
- ``checked_chunks``: a source read in a thread and inspected there, yielded to a
  consumer (an engine upload) with the *last* piece held back until the source ended
  and every check passed, so the consumer never receives a complete-looking stream that
  failed a check. Restore, verify and migrate use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .pump import CHUNK, Drain, Pump

Read = Callable[[int], bytes]


def pump_into(read: Read, write: Callable[[bytes], Any],
              inspect: Callable[[bytes], Any] | None = None,
              progress: Callable[[int], Any] | None = None) -> int:
    """Copy ``read`` to ``write`` until EOF; returns the bytes copied."""
    pump = Pump(read, CHUNK)
    total = 0
    try:
        for chunk in pump:
            if inspect:
                inspect(chunk)
            write(chunk)
            total += len(chunk)
            if progress:
                progress(len(chunk))
    finally:
        pump.stop()
    return total


def checked_chunks(read: Read, inspect: Callable[[bytes], Any] | None,
                   finish: Callable[[], Any] | None,
                   *, progress: Callable[[int], Any] | None = None,
                   threaded: bool = False) -> Iterator[bytes]:
    """The pieces of ``read``, unchanged. Each goes through ``inspect`` (in the reader
    thread, or with ``threaded`` in a thread of its own so that inspection overlaps
    both the reading and the consumer's writes); ``finish()`` runs after the source
    ended, and only if it passes is the last piece yielded. Both may be None where the
    consumer parses the stream itself (the direct target); the source's own end checks
    (its reader's) still come before the last piece."""

    def look(data: bytes) -> None:
        if inspect is not None:
            inspect(data)
        if progress:
            progress(len(data))

    drain = Drain(look) if threaded else None

    def reader(n: int) -> bytes:
        data = read(n)
        if data and drain is None:
            look(data)
        return data

    pump = Pump(reader, CHUNK)
    pending = b""
    try:
        for data in pump:
            if drain is not None:
                drain.write(data)
            if pending:
                yield pending
            pending = data
        if drain is not None:
            drain.close()
            drain = None
        if finish is not None:
            finish()
    finally:
        if drain is not None:
            drain.abandon()
        pump.stop()
    if pending:
        yield pending
