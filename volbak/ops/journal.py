"""The intent journal: what a run is about to do, on disk before it does it.

A run writes an entry before a step that must not be left half-done by a crash
(stopping a container, creating a restore target, replacing a volume's content) and
removes it once the step is complete. An entry whose owner died (kill -9, OOM, reboot)
is found by recovery (``volbak.ops.recovery``), which finishes or undoes the step.

One entry is one file ``<journal_dir>/<uuid>.json``: a temp file, written, ``flock``ed,
fsynced, renamed into place, directory fsynced. The owner keeps the file open and
flocked for as long as the entry is its own, so the kernel tells whether the owner is
still alive: the lock goes with the process, whatever way it dies, and a reused pid
cannot fake it. Entries also carry ``host`` and ``pid`` for people reading them.

Engine objects (helpers, staging volumes) cannot hold a lock; they carry the owner
label ``<hostname>:<pid>`` instead, and count as dead only on this host with that pid
gone (see ``owner_alive``): never what a run on another host may still be using.

Journal directory: ``$VOLBAK_STATE_DIR/journal``; else ``/var/lib/volbak/journal`` as
root; else ``$XDG_STATE_HOME/volbak/journal`` (default ``~/.local/state``).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..engine.helpers import engines_with_unremoved_helpers, on_helper_create
from ..errors import VolbakError
from ..util.host import fsync_dir, pid_alive, state_dir
from ..util.signals import deferred

VERSION = 1


def default_journal_dir() -> Path:
    return state_dir() / "journal"


# -- owners ----------------------------------------------------------------------------------


def owner_alive(label: str | None) -> bool:
    """Whether the owner named by a label may still be running. Unknown owners (no
    label, another host, garbled) count as alive: recovery never takes what it cannot
    prove abandoned."""
    host, _, pid = (label or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    return int(pid) == os.getpid() or pid_alive(int(pid))


# -- entries ---------------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_locked(directory: Path, path: Path, record: dict[str, Any]) -> int:
    """Write ``record`` to ``path`` atomically; returns the new file's fd, flocked."""
    tmp = directory / f".{path.stem}.{uuid.uuid4().hex[:8]}.partial"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # before the rename: never visible unlocked
        os.write(fd, json.dumps(record, indent=1, sort_keys=True).encode() + b"\n")
        os.fsync(fd)
        os.rename(tmp, path)
        fsync_dir(directory)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return fd


class Entry:
    """One journal entry, owned (and flocked) by this process until removed or released."""

    def __init__(self, kind: str, record: dict[str, Any], directory: Path | None = None) -> None:
        self.directory = directory or default_journal_dir()
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise VolbakError(
                f"cannot create the journal in {self.directory}: {e.strerror or e}",
                hint="set VOLBAK_STATE_DIR to a writable directory",
            ) from None
        self.path = self.directory / f"{uuid.uuid4().hex}.json"
        self.record = {**record, "kind": kind, "version": VERSION, "host": socket.gethostname(),
                       "pid": os.getpid(), "created": _now()}
        self.fd: int | None = self._write()

    def _write(self) -> int:
        try:
            return _write_locked(self.directory, self.path, self.record)
        except OSError as e:
            raise VolbakError(
                f"cannot write the journal entry {self.path}: {e.strerror or e}",
                hint="free space or fix permissions there, or set VOLBAK_STATE_DIR",
            ) from None

    def update(self, **fields: Any) -> None:
        """Replace the entry's record (atomically; the lock moves to the new file)."""
        self.record.update(fields)
        old = self.fd
        self.fd = self._write()
        if old is not None:
            os.close(old)

    def remove(self) -> None:
        """The step is complete: forget it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            fsync_dir(self.directory)
        self.release()

    def release(self) -> None:
        """Keep the entry but give it up: from now on recovery treats it as a dead
        run's (used when this run could not finish or undo the step itself)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def claim(path: Path) -> Iterator[dict[str, Any] | None]:
    """Take over a dead owner's entry for recovery: yields its record (with ``path``),
    or None if its owner is alive, someone else recovers it now, or it is gone. The
    entry stays claimed (flocked) for the block; call ``forget(path)`` once handled."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                yield None  # its owner is alive (or another recovery has it)
                return
            raise
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                yield None  # replaced or removed while we waited
                return
        except FileNotFoundError:
            yield None
            return
        try:
            rec = json.loads(os.pread(fd, 1 << 20, 0))
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError as e:
            rec = {"kind": "unreadable", "error": str(e)}
        rec.setdefault("kind", "stop")  # entries of volbak <= 0.1 held stops only
        yield {**rec, "path": str(path)}
    finally:
        os.close(fd)


def forget(path: str | Path) -> None:
    """Remove an entry recovery has dealt with (call inside its ``claim`` block)."""
    p = Path(path)
    with contextlib.suppress(FileNotFoundError):
        p.unlink()
    with contextlib.suppress(OSError):
        fsync_dir(p.parent)


def paths(directory: Path | None = None) -> list[Path]:
    d = directory or default_journal_dir()
    return sorted(d.glob("*.json")) if d.is_dir() else []


def entries(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every entry's record plus ``path`` and ``live`` (its owner still runs), touching
    nothing."""
    out = []
    for path in paths(directory):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                live = False
            except OSError:
                live = True
            try:
                rec = json.loads(os.pread(fd, 1 << 20, 0))
                if not isinstance(rec, dict):
                    rec = {"kind": "unreadable"}
            except ValueError:
                rec = {"kind": "unreadable"}
            rec.setdefault("kind", "stop")
            out.append({**rec, "path": str(path), "live": live})
        finally:
            os.close(fd)
    return out


# -- the run's engines -----------------------------------------------------------------------

_run_lock = threading.Lock()
_run_entry: Entry | None = None


def touch_engine(url: str, directory: Path | None = None) -> None:
    """Note that this run creates helpers or staging volumes on engine ``url``; if it
    dies, recovery sweeps that engine for what it left. Cheap after the first call."""
    global _run_entry
    with _run_lock:
        if _run_entry is None:
            _run_entry = Entry("engines", {"engines": [url]}, directory)
            atexit.register(end_run)
        elif url not in _run_entry.record["engines"]:
            _run_entry.update(engines=[*_run_entry.record["engines"], url])


on_helper_create(touch_engine)


def run_engines() -> list[str]:
    """The engines this run has noted so far (``touch_engine``)."""
    with _run_lock:
        return list(_run_entry.record["engines"]) if _run_entry is not None else []


def end_run() -> None:
    """At a normal exit every helper and staging volume was removed by the finally
    blocks that made them, and the note is no longer needed; unless an engine refused
    to remove a helper (it can, for a while, after an aborted transfer): then the note
    stays for the next command's recovery."""
    global _run_entry
    # The process is on its way out: a Ctrl-C now waits for the entry's removal, then
    # is dropped (from an atexit callback it would only print a traceback).
    with contextlib.suppress(KeyboardInterrupt), deferred(), _run_lock:
        if _run_entry is not None and not engines_with_unremoved_helpers():
            _run_entry.remove()
            _run_entry = None
