"""Stop the containers that use a volume during a backup, and always start them again.

Usage::

    users = containers_using(client, "pgdata")              # running users of the volume
    victims = select_to_stop(users, force=args.stop)        # --stop, or label volbak.stop=true
    # (or both at once, for several volumes: containers_to_stop(client, vols, force=...))
    with stopped(client, victims, engine_url=url) as were_stopped:
        run_backup()                                        # any exception, Ctrl-C, SIGTERM...
    # ...and here every container in were_stopped is running again

    recover(lambda url: docker.DockerClient(base_url=url))  # at the start of every command

The crash-safety protocol:

1. Before anything is stopped, the intent (engine URL, IDs and names of the running
   containers to stop, our pid/host) is written to a journal entry: a temp file,
   fsynced, renamed to ``<journal_dir>/<uuid>.json``, directory fsynced. The entry is
   ``flock``ed by its owner for as long as the ``with`` block runs.
2. The containers are stopped in the given order (``timeout`` as ``docker stop -t``).
3. On leaving the block, whatever the reason, they are started in reverse order.
   SIGINT/SIGTERM are blocked while restarting, so a second Ctrl-C cannot cut the
   restart short: the signal is handled right after it. The journal entry is removed
   once every container is started (or no longer exists).
4. If the process dies instead (kill -9, OOM, reboot), its entry stays. ``recover()``
   finds entries whose owner is gone (the kernel dropped the owner's flock), starts
   those containers and removes the entry. Entries of a live run are left alone, so
   ``recover`` is safe to call at the start of every command, even during another run.

A restart that fails raises EngineError (exit 4) naming the containers left stopped and
keeps the journal entry, so ``volbak recover`` can retry later.

Journal directory: ``$VOLBAK_STATE_DIR/journal``; else ``/var/lib/volbak/journal`` as
root; else ``$XDG_STATE_HOME/volbak/journal`` (default ``~/.local/state``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from ..engine import containers_using
from ..errors import EngineError, VolbakError
from ..local import fsync_dir as _fsync_dir
from ..util.signals import deferred

STOP_LABEL = "volbak.stop"
TRUE_VALUES = {"true", "1", "yes", "on"}
_DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)

Event = Callable[[str], None]


def state_dir() -> Path:
    env = os.environ.get("VOLBAK_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/volbak")
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "volbak"


def default_journal_dir() -> Path:
    return state_dir() / "journal"


def engine_url_of(client: docker.DockerClient) -> str:
    """The URL a client talks to, as the user would write it (unix://, tcp://, ssh://)."""
    api = client.api
    adapter = getattr(api, "_custom_adapter", None)
    sock = getattr(adapter, "socket_path", None)
    if sock:
        return f"unix://{sock}"
    ssh_host = getattr(adapter, "ssh_host", None)
    if ssh_host:
        return ssh_host if "://" in ssh_host else f"ssh://{ssh_host}"
    base = api.base_url
    if base.startswith("http://"):
        return "tcp://" + base[len("http://"):]
    return base


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE_VALUES


def _name(c: Any) -> str:
    name = getattr(c, "name", None) or c.attrs.get("Name", "") or c.id[:12]
    return name.lstrip("/")


def select_to_stop(containers: Iterable[Any], force: bool = False) -> list[Any]:
    """The containers to stop: all of them with ``--stop`` (``force``), otherwise those
    that opt in with the label ``volbak.stop=true``. Duplicates (by ID) are dropped."""
    seen: set[str] = set()
    out = []
    for c in containers:
        if c.id in seen:
            continue
        seen.add(c.id)
        if force or _is_true((c.labels or {}).get(STOP_LABEL)):
            out.append(c)
    return out


def containers_to_stop(client: docker.DockerClient, volumes: Iterable[str],
                       force: bool = False) -> list[Any]:
    """The running containers using any of ``volumes`` that ``select_to_stop`` picks."""
    users: list[Any] = []
    for v in volumes:
        users.extend(containers_using(client, v))
    return select_to_stop(users, force)


# ---------------------------------------------------------------- journal


class _Entry:
    """One journal entry, created and flocked by its owner."""

    def __init__(self, directory: Path, record: dict[str, Any]) -> None:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise VolbakError(
                f"cannot create the stop journal in {directory}: {e.strerror or e}",
                hint="set VOLBAK_STATE_DIR to a writable directory",
            ) from None
        self.path = directory / f"{uuid.uuid4().hex}.json"
        tmp = directory / f".{self.path.stem}.partial"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, json.dumps(record, indent=1).encode() + b"\n")
            os.fsync(fd)
            os.rename(tmp, self.path)
            _fsync_dir(directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self.fd: int | None = fd

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            _fsync_dir(self.path.parent)
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _start_all(client: docker.DockerClient, items: list[dict[str, str]],
               on_event: Event | None) -> tuple[list[str], list[str]]:
    """Start containers in reverse order. Returns (started names, failure messages)."""
    started: list[str] = []
    failed: list[str] = []
    for item in reversed(items):
        name = item.get("name") or item["id"][:12]
        try:
            c = client.containers.get(item["id"])
            if c.status == "running":
                continue
            if on_event:
                on_event(f"starting container {name}")
            c.start()
            started.append(name)
        except docker.errors.NotFound:
            if on_event:
                on_event(f"container {name} no longer exists; nothing to start")
        except _DOCKER_ERRORS as e:
            failed.append(f"{name}: {e}")
    return started, failed


@contextlib.contextmanager
def stopped(
    client: docker.DockerClient,
    containers: Iterable[Any],
    *,
    journal_dir: Path | None = None,
    engine_url: str | None = None,
    timeout: int | None = None,
    on_event: Event | None = None,
) -> Iterator[list[Any]]:
    """Stop the running ``containers`` for the duration of the block; see module doc.

    Yields the containers that were stopped (those not running are left as they are).
    ``timeout``: seconds before SIGKILL (``docker stop -t``); None = the container's
    own StopTimeout or the engine's default (10 s). ``on_event`` receives progress lines.
    """
    running = []
    for c in containers:
        try:
            c.reload()
        except docker.errors.NotFound:
            continue
        except _DOCKER_ERRORS as e:
            raise EngineError(f"cannot inspect container {_name(c)}: {e}") from None
        if c.status in ("running", "restarting") and all(r.id != c.id for r in running):
            running.append(c)
    if not running:
        yield []
        return

    items = [{"id": c.id, "name": _name(c)} for c in running]
    record = {
        "version": 1,
        "engine": engine_url or engine_url_of(client),
        "containers": items,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    entry = _Entry(journal_dir or default_journal_dir(), record)
    body_error: BaseException | None = None
    try:
        for c in running:
            if on_event:
                # docker stop waits for the process to exit: say how long it may take.
                grace = timeout if timeout is not None else (
                    ((getattr(c, "attrs", None) or {}).get("Config") or {}).get("StopTimeout")
                    or 10)
                on_event(f"stopping container {_name(c)} (it gets up to {grace} s to exit "
                         "before it is killed; --stop-timeout changes that)")
            t_stop = time.monotonic()
            try:
                if timeout is None:
                    c.stop()
                else:
                    c.stop(timeout=timeout)
                if on_event:
                    on_event(f"container {_name(c)} stopped after "
                             f"{time.monotonic() - t_stop:.1f} s")
            except docker.errors.NotFound:
                pass
            except _DOCKER_ERRORS as e:
                raise EngineError(f"cannot stop container {_name(c)}: {e}") from None
        yield running
    except BaseException as e:
        body_error = e
        raise
    finally:
        with deferred():
            _, failed = _start_all(client, items, on_event)
            if failed:
                entry.close()  # keep the entry: recover() retries
            else:
                entry.remove()
        if failed:
            msg = "could not start again: " + "; ".join(failed)
            if body_error is not None:
                msg += f" (after: {body_error or type(body_error).__name__})"
            raise EngineError(
                msg, hint="the containers are left stopped; run 'volbak recover' to retry"
            ) from body_error


# ---------------------------------------------------------------- recover


def pending(journal_dir: Path | None = None) -> list[dict[str, Any]]:
    """Journal entries (their records, plus 'path' and 'live') without touching anything.
    ``live`` is True while the run that wrote the entry is still going."""
    d = journal_dir or default_journal_dir()
    out = []
    for path in sorted(d.glob("*.json")) if d.is_dir() else []:
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
            except ValueError:
                rec = {}
            out.append({**rec, "path": str(path), "live": live})
        finally:
            os.close(fd)
    return out


def recover(
    client_factory: Callable[[str], docker.DockerClient],
    journal_dir: Path | None = None,
    *,
    on_event: Event | None = None,
    on_error: Callable[[str], None] | None = None,
) -> list[str]:
    """Start the containers an earlier, dead volbak process left stopped.

    Goes through the journal entries whose owner is gone, starts their containers
    (reverse order; missing containers are skipped) and removes each entry once done.
    Returns the names of the containers it started. Failures (engine unreachable...)
    keep the entry; they are passed to ``on_error`` if given, else raised together as
    one EngineError after all entries were tried.
    """
    d = journal_dir or default_journal_dir()
    if not d.is_dir():
        return []
    started: list[str] = []
    errors: list[str] = []
    clients: dict[str, docker.DockerClient] = {}
    for path in sorted(d.glob("*.json")):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    continue  # its owner is alive and will restart them itself
                raise
            try:
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    continue  # removed (and maybe replaced) while we waited
            except FileNotFoundError:
                continue
            try:
                rec = json.loads(os.pread(fd, 1 << 20, 0))
                engine = rec["engine"]
                items = rec["containers"]
            except (ValueError, KeyError, TypeError) as e:
                errors.append(f"journal entry {path} is unreadable ({e}); remove it by hand")
                continue
            try:
                client = clients.get(engine) or client_factory(engine)
                clients[engine] = client
            except (VolbakError, *_DOCKER_ERRORS) as e:
                errors.append(f"cannot reach engine {engine}: {e}")
                continue
            ok, failed = _start_all(client, items, on_event)
            started.extend(ok)
            if failed:
                errors.extend(failed)
                continue
            path.unlink()
            with contextlib.suppress(OSError):
                _fsync_dir(d)
        finally:
            os.close(fd)
    if errors:
        if on_error:
            for e in errors:
                on_error(e)
        else:
            raise EngineError(
                "could not start containers an earlier volbak run had stopped: "
                + "; ".join(errors),
                hint="fix the engine, then run 'volbak recover' again",
            )
    return started
