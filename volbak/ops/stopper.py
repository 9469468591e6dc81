"""Stop the containers that use a volume during a backup, and always start them again.

Usage::

    users = containers_using(client, "pgdata")              # running users of the volume
    victims = select_to_stop(users, force=args.stop)        # --stop, or label volbak.stop=true
    # (or both at once, for several volumes: containers_to_stop(client, vols, force=...))
    with stopped(client, victims, engine_url=url) as were_stopped:
        run_backup()                                        # any exception, Ctrl-C, SIGTERM...
    # ...and here every container in were_stopped is running again

    recover(lambda url: connect(url).client)              # at the start of every command

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
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..engine import containers as ctrs
from ..engine import containers_using
from ..engine.containers import engine_url_of
from ..errors import EngineError, NotFoundError, VolbakError
from ..util.signals import deferred
from . import journal
from .journal import default_journal_dir, state_dir  # noqa: F401 - public names

STOP_LABEL = "volbak.stop"
TRUE_VALUES = {"true", "1", "yes", "on"}

Event = Callable[[str], None]
Client = Any  # a docker.DockerClient (the engine package owns docker-py)


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in TRUE_VALUES


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


def containers_to_stop(client: Client, volumes: Iterable[str],
                       force: bool = False) -> list[Any]:
    """The running containers using any of ``volumes`` that ``select_to_stop`` picks."""
    users: list[Any] = []
    for v in volumes:
        users.extend(containers_using(client, v))
    return select_to_stop(users, force)


# ---------------------------------------------------------------- journal


_GRACE = 15.0  # seconds past a stop's timeout before a dead run's stop counts as over


def _effective_timeout(c: Any, timeout: int | None) -> int:
    if timeout is not None:
        return timeout
    own = (c.attrs.get("Config") or {}).get("StopTimeout")
    return int(own) if isinstance(own, int) and own >= 0 else 10


def _settle(client: Client, item: dict[str, Any], on_event: Event | None) -> Any:
    """The container, once any stop that may still be under way for it is over.

    A ``docker stop`` whose caller died (or was interrupted) goes on in the engine: the
    container is still running, with the same StartedAt, until its timeout. Starting
    it is only right after that, so wait (bounded) while it may still be stopping."""
    c = ctrs.get(client, item["id"])
    since = item.get("stopping_since")
    if since is None or c.status != "running":
        return c
    deadline = float(since) + float(item.get("timeout", 10)) + _GRACE
    said = False
    while c.status == "running" and time.time() < deadline:
        if (c.attrs.get("State") or {}).get("StartedAt") != item.get("started_at"):
            break  # started again since: not the run we stopped
        if on_event and not said:
            on_event(f"waiting for the stop of container {item.get('name')} to finish")
            said = True
        time.sleep(0.2)
        ctrs.reload(c)
    return c


def _start_all(client: Client, items: list[dict[str, Any]],
               on_event: Event | None) -> tuple[list[str], list[str]]:
    """Start containers in reverse order and see them running. Returns (started
    names, failure messages)."""
    started: list[str] = []
    failed: list[str] = []
    for item in reversed(items):
        name = item.get("name") or item["id"][:12]
        try:
            c = _settle(client, item, on_event)
            if c.status in ("running", "restarting"):
                continue
            if on_event:
                on_event(f"starting container {name}")
            ctrs.start(c)
            ctrs.reload(c)
            if c.status not in ("running", "restarting", "exited"):
                failed.append(f"{name}: is {c.status} after start")
                continue
            started.append(name)
        except NotFoundError:
            if on_event:
                on_event(f"container {name} no longer exists; nothing to start")
        except EngineError as e:
            failed.append(f"{name}: {e}")
    return started, failed


@contextlib.contextmanager
def stopped(
    client: Client,
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
            ctrs.reload(c)
        except NotFoundError:
            continue
        except EngineError as e:
            raise EngineError(f"cannot inspect container {ctrs.name(c)}: {e}") from None
        if c.status in ("running", "restarting") and all(r.id != c.id for r in running):
            running.append(c)
    if not running:
        yield []
        return

    items: list[dict[str, Any]] = [
        {"id": c.id, "name": ctrs.name(c), "timeout": _effective_timeout(c, timeout),
         "started_at": (c.attrs.get("State") or {}).get("StartedAt")}
        for c in running]
    record = {"engine": engine_url or engine_url_of(client), "containers": items}
    entry = journal.Entry("stop", record, journal_dir)
    body_error: BaseException | None = None
    try:
        for n, c in enumerate(running):
            if on_event:
                # docker stop waits for the process to exit: say how long it may take.
                on_event(f"stopping container {ctrs.name(c)} (it gets up to "
                         f"{items[n]['timeout']} s to exit "
                         "before it is killed; --stop-timeout changes that)")
            # Recovery must know a stop may still be under way in the engine when this
            # process dies in the middle of it (the engine finishes the stop anyway).
            items[n]["stopping_since"] = time.time()
            entry.update(containers=items)
            t_stop = time.monotonic()
            try:
                ctrs.stop(c, timeout)
                if on_event:
                    on_event(f"container {ctrs.name(c)} stopped after "
                             f"{time.monotonic() - t_stop:.1f} s")
            except NotFoundError:
                pass
            except EngineError as e:
                raise EngineError(f"cannot stop container {ctrs.name(c)}: {e}") from None
        yield running
    except BaseException as e:
        body_error = e
        raise
    finally:
        with deferred():
            _, failed = _start_all(client, items, on_event)
            if failed:
                entry.release()  # keep the entry: recover() retries
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
    """Stop entries (their records, plus 'path' and 'live') without touching anything.
    ``live`` is True while the run that wrote the entry is still going."""
    return [e for e in journal.entries(journal_dir) if e["kind"] == "stop"]


def recover_entry(rec: dict[str, Any], client_factory: Callable[[str], Client],
                  clients: dict[str, Any], on_event: Event | None) -> tuple[list[str], list[str]]:
    """Start the containers of one claimed stop entry. Returns (started, errors); the
    caller forgets the entry when there are no errors."""
    try:
        engine = rec["engine"]
        items = list(rec["containers"])
    except (KeyError, TypeError) as e:
        return [], [f"journal entry {rec.get('path')} is unreadable ({e}); remove it by hand"]
    try:
        with ctrs.failures():
            client = clients.get(engine) or client_factory(engine)
        clients[engine] = client
    except VolbakError as e:
        return [], [f"cannot reach engine {engine}: {e}"]
    return _start_all(client, items, on_event)


def recover(
    client_factory: Callable[[str], Client],
    journal_dir: Path | None = None,
    *,
    on_event: Event | None = None,
    on_error: Callable[[str], None] | None = None,
) -> list[str]:
    """Start the containers an earlier, dead volbak process left stopped.

    Goes through the stop entries whose owner is gone, starts their containers
    (reverse order; missing containers are skipped) and removes each entry once they
    are seen running. Returns the names of the containers it started. Failures (engine
    unreachable...) keep the entry; they are passed to ``on_error`` if given, else
    raised together as one EngineError after all entries were tried.
    """
    started: list[str] = []
    errors: list[str] = []
    clients: dict[str, Any] = {}
    for path in journal.paths(journal_dir):
        with journal.claim(path) as rec:
            if rec is None or rec["kind"] != "stop":
                continue
            ok, failed = recover_entry(rec, client_factory, clients, on_event)
            started.extend(ok)
            if failed:
                errors.extend(failed)
            else:
                journal.forget(path)
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
