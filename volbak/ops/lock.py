"""Local locks: two volbak runs never work on the same repository or volume at once.

One lock file per key under the lock directory, locked with ``fcntl.flock``. The kernel
drops a flock when the holding process dies (kill -9, OOM, reboot), so a lock left by a
dead run is stale by construction and the next run simply takes it over. The holder
also writes its pid, host, start time and command line into the file, for messages
only: the flock, not the file's content, is the lock. Lock files are never deleted
(deleting one would let two processes lock two different inodes of the same name).

Usage::

    keys = [repo_key(repo.url), volume_key(engine_url, "pgdata")]
    with acquire(keys, wait=args.wait):        # LockBusyError (exit 9) after `wait` s
        ...

Keys are taken in sorted order, so two runs that want overlapping sets cannot deadlock.
A key is held by an open file description: a second ``acquire`` of the same key in the
same process also blocks (locks are not re-entrant), and a child made by ``fork``
without exec keeps the lock while it lives (volbak starts subprocesses with close_fds,
the default).

The lock directory: ``$VOLBAK_LOCK_DIR``; else ``/run/volbak-locks`` as root; else
``$XDG_RUNTIME_DIR/volbak``; else ``/tmp/volbak-locks-<uid>``. The locks protect runs on
this host only: two hosts writing one shared repository are not serialised.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import LockBusyError, VolbakError

POLL_INTERVAL = 0.1


def lock_dir() -> Path:
    env = os.environ.get("VOLBAK_LOCK_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/volbak-locks")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "volbak"
    return Path(f"/tmp/volbak-locks-{os.getuid()}")


def repo_key(url: str) -> str:
    """The key for a repository; a plain path is made absolute so spellings agree."""
    if "://" not in url or url.startswith("file://"):
        path = url[len("file://"):] if url.startswith("file://") else url
        url = os.path.realpath(os.path.expanduser(path))
    return f"repo:{url.rstrip('/') or '/'}"


def volume_key(engine_url: str, volume: str) -> str:
    """The key for one volume on one engine."""
    return f"volume:{engine_url}#{volume}"


def key_filename(key: str) -> str:
    """A safe file name for a key: readable prefix plus a hash of the whole key."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:60].strip("_.")
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{slug}-{digest}.lock"


def _describe(key: str) -> str:
    kind, _, rest = key.partition(":")
    if kind == "repo":
        return f"repository {rest}"
    if kind == "volume":
        engine, _, volume = rest.rpartition("#")
        return f"volume '{volume}' on {engine}"
    return key


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 65536, 0)
        info = json.loads(raw.decode() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _holder_text(info: dict[str, Any]) -> str:
    if not info.get("pid"):
        return "another volbak process"
    text = f"pid {info['pid']}"
    if info.get("host") and info["host"] != socket.gethostname():
        text += f" on {info['host']}"
    if info.get("command"):
        text += f" ({info['command']})"
    if info.get("started"):
        text += f", since {info['started']}"
    return text


class Lock:
    """Held locks for a set of keys; release with ``release()`` or by leaving ``with``."""

    def __init__(self, keys: list[str], fds: dict[str, int],
                 shared: frozenset[str] = frozenset()) -> None:
        self.keys = keys
        self._fds = fds
        self._shared = shared

    @property
    def held(self) -> bool:
        return bool(self._fds)

    def release(self) -> None:
        for key in reversed(self.keys):
            fd = self._fds.pop(key, None)
            if fd is None:
                continue
            if key not in self._shared:  # other holders of a shared lock may still be there
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten lock is still released by the kernel
        with contextlib.suppress(Exception):
            self.release()


def _open(directory: Path, key: str) -> int:
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        return os.open(directory / key_filename(key), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise VolbakError(
            f"cannot create lock file in {directory}: {e.strerror or e}",
            hint="set VOLBAK_LOCK_DIR to a writable directory",
        ) from None


def _write_holder(fd: int, key: str) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["volbak", *sys.argv[1:3]]) if sys.argv else "volbak",
        "key": key,
    }
    data = json.dumps(info).encode()
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


def acquire(
    keys: Iterable[str],
    wait: float = 0,
    *,
    directory: Path | None = None,
    on_wait: Callable[[str, dict[str, Any]], None] | None = None,
    shared: Iterable[str] = (),
) -> Lock:
    """Take the locks for all ``keys`` (sorted, duplicates dropped) or none of them.

    Keys also in ``shared`` are taken shared: any number of holders at once, none while
    an exclusive holder has it. Backups hold the repository shared (two backups of
    different volumes run side by side), prune and forget exclusively.

    ``wait``: seconds to keep trying (0 = fail at once, ``float('inf')`` = forever).
    ``on_wait(key, holder)`` is called once when a key is found busy and we start to
    wait (``holder`` is the pid/host/started/command dict the holder wrote; may be empty).
    Raises LockBusyError naming the key and its holder when the time runs out.
    """
    ordered = sorted(set(keys))
    shared_keys = frozenset(shared) & set(ordered)
    directory = directory or lock_dir()
    deadline = time.monotonic() + max(wait, 0)
    fds: dict[str, int] = {}
    lock = Lock(ordered, fds, shared_keys)
    try:
        for key in ordered:
            fd = _open(directory, key)
            announced = False
            while True:
                try:
                    mode = fcntl.LOCK_SH if key in shared_keys else fcntl.LOCK_EX
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        os.close(fd)
                        raise VolbakError(f"cannot lock {_describe(key)}: {e.strerror}") from None
                holder = _read_holder(fd)
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockBusyError(
                        f"{_describe(key)} is in use by {_holder_text(holder)}",
                        hint="wait for it to finish, or pass --wait SECONDS to wait for the lock"
                        + (f" (waited {wait:g} s)" if wait else ""),
                    )
                if on_wait and not announced:
                    on_wait(key, holder)
                    announced = True
                time.sleep(min(POLL_INTERVAL, max(deadline - time.monotonic(), 0.001)))
            fds[key] = fd
            _write_holder(fd, key)
    except BaseException:
        lock.release()
        raise
    return lock


def holder(key: str, directory: Path | None = None) -> dict[str, Any] | None:
    """Who holds ``key`` now (the dict it wrote), or None if it is free."""
    path = (directory or lock_dir()) / key_filename(key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
