"""A dedup repository's shared state: config, keys, lock objects, GC plans.

Lock objects (``_locks/<kind>-<hex>``, plain JSON) are restic's protocol reduced to what
the time-based GC needs: every backup writes one before it reads the index and GC plans,
rewrites it every LOCK_REFRESH seconds, and deletes it after its manifest. Prune
deletes a planned pack only if no *live* backup lock was created before the plan (plus
CLOCK_SKEW); a lock not refreshed for LOCK_STALE seconds is dead, and a backup whose own
refreshes lapsed for LOCK_STALE/2 fails instead of writing its manifest. Prune takes an
exclusive ``prune`` lock the same way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import socket
import threading
import time
from typing import Any

from ...backend import Backend
from ...errors import BackendError, LockBusyError, NotFoundError, VolbakError
from ...util.host import pid_alive
from . import keys as keymod
from .crypto import seal, unseal
from .index import IdSet, Index

LOCK_PREFIX = "_locks/"
GC_PREFIX = "_gc/"
CLOCK_SKEW = dt.timedelta(minutes=5)


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def lock_refresh() -> float:
    return _env_seconds("VOLBAK_LOCK_REFRESH", 300.0)


def lock_stale() -> float:
    return _env_seconds("VOLBAK_LOCK_STALE", 1800.0)


def gc_grace() -> dt.timedelta:
    """How long a GC plan waits before its packs are deleted (VOLBAK_GC_GRACE, seconds;
    tests shorten it)."""
    return dt.timedelta(seconds=_env_seconds("VOLBAK_GC_GRACE", 2 * 3600.0))


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def parse_iso(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def machine_id() -> str | None:
    """This machine's systemd/D-Bus id, to tell two hosts of one hostname apart."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            return open(path).read().strip() or None
    return None


def _dead_here(d: dict[str, Any]) -> bool:
    """A lock made on this very machine by a process that no longer exists: its run
    died (or lost the repository while releasing it, as when an S3 server went away),
    so waiting for it to go stale would only block the next prune (restic's rule; the
    machine id guards against two hosts of one hostname)."""
    mine = machine_id()
    return (mine is not None and d.get("machine") == mine
            and d.get("host") == socket.gethostname()
            and isinstance(d.get("pid"), int) and not pid_alive(d["pid"]))


class RepoLock:
    """A lock object kept fresh by a daemon thread until ``release``."""

    def __init__(self, backend: Backend, kind: str, what: str) -> None:
        self._backend = backend
        self.kind = kind
        self.name = f"{LOCK_PREFIX}{kind}-{secrets.token_hex(12)}"
        self.created = now_utc()
        self._info = {"kind": kind, "what": what, "host": socket.gethostname(),
                      "machine": machine_id(), "pid": os.getpid(),
                      "created": iso(self.created)}
        self._stop = threading.Event()
        self._last_ok = time.monotonic()
        self._write()
        self._thread = threading.Thread(target=self._run, name="volbak-lock", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        self._backend.put_bytes(self.name, json.dumps(
            {**self._info, "refreshed": iso(now_utc())}).encode())
        self._last_ok = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(lock_refresh()):
            with contextlib.suppress(VolbakError, OSError):
                self._write()

    def check(self) -> None:
        """Raise if refreshes lapsed so long that a prune may have taken us for dead."""
        if time.monotonic() - self._last_ok > lock_stale() / 2:
            raise BackendError(
                f"this run's lock object {self.name} was not refreshed for "
                f"{time.monotonic() - self._last_ok:.0f} s; a prune may have ignored it",
                hint="nothing was listed; run the backup again (was the repository "
                "unreachable, or the process suspended?)")

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        with contextlib.suppress(VolbakError, OSError):
            self._backend.delete(self.name)


def list_locks(backend: Backend, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Every lock object with ``alive`` (refreshed within LOCK_STALE of ``now``)."""
    out = []
    now = now or now_utc()
    for o in backend.list(LOCK_PREFIX):
        try:
            d = json.loads(backend.get_bytes(o.name))
            d["created_at"] = parse_iso(d["created"])
            d["refreshed_at"] = parse_iso(d.get("refreshed", d["created"]))
        except NotFoundError:
            continue
        except (ValueError, KeyError, TypeError):
            d = {"kind": "?", "created_at": now, "refreshed_at": now}  # unreadable: assume live
        d["name"] = o.name
        d["alive"] = (now - d["refreshed_at"]).total_seconds() < lock_stale() \
            and not _dead_here(d)
        out.append(d)
    return out


class DedupStore:
    def __init__(self, backend: Backend, config: keymod.RepoConfig,
                 derive: list[Any] | tuple = ()) -> None:
        self.backend = backend
        self.config = config
        # Passphrase identities a passphrase repository's host keys may be derived from
        # when this host has no host key file (see _host_keys).
        self.derive = list(derive)

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def chunker(self) -> tuple[int, int, int]:
        c = self.config.chunker
        return (int(c.get("min", keymod.CHUNK_MIN)), int(c.get("avg", keymod.CHUNK_AVG)),
                int(c.get("max", keymod.CHUNK_MAX)))

    @property
    def chunk_blocks(self) -> bool:
        """Big files' data in fixed blocks (chunker.Chunker ``blocks``); repositories
        made before this setting existed record "fastcdc+tar"."""
        return self.config.chunker.get("algorithm") == "fastcdc+tar+blocks"

    @property
    def chunk_tar(self) -> bool:
        return self.config.chunker.get("algorithm", "fastcdc+tar") != "fastcdc"

    def _host_keys(self) -> keymod.Keys:
        """The host key file; in a passphrase repository on a host without one, the same
        keys derived from the passphrase (it unlocks ``_keys/passphrase.age``, whose
        identity unlocks ``_keys/repo.age``; one scrypt per run, nothing written)."""
        enc = self.config.encryption or {}
        if self.derive and enc.get("passphrase") and \
                not keymod.host_key_path(self.config.id).exists():
            return keymod.unlock(self.backend, self.config, self.derive)[0]
        return keymod.read_host_key(self.config, self.url)

    def write_keys(self) -> keymod.Keys:
        """What a backup needs: never an identity (but see _host_keys)."""
        if not self.config.encrypted:
            return self.config.plain_keys()
        return self._host_keys()

    def meta_keys(self, identities: list[Any] | tuple = ()) -> keymod.Keys:
        """The metadata key: from the host key file, else unlocked with an identity."""
        if not self.config.encrypted:
            return self.config.plain_keys()
        if identities and not keymod.host_key_path(self.config.id).exists():
            return keymod.unlock(self.backend, self.config, list(identities))[0]
        return self._host_keys()

    def read_keys(self, identities: list[Any] | tuple) -> tuple[keymod.Keys, list[Any]]:
        return keymod.unlock(self.backend, self.config, list(identities))

    def encryption_record(self) -> dict[str, Any] | None:
        return dict(self.config.encryption) if self.config.encryption else None

    # -- GC plans ---------------------------------------------------------------------

    def plans(self, key: bytes) -> list[dict[str, Any]]:
        out = []
        for o in self.backend.list(GC_PREFIX):
            try:
                d = json.loads(unseal(self.backend.get_bytes(o.name), key, f"GC plan {o.name}"))
            except NotFoundError:
                continue
            d["name"] = o.name
            d["created_at"] = parse_iso(d["created"])
            out.append(d)
        return out

    def write_plan(self, key: bytes, packs: list[str], created: dt.datetime) -> str:
        name = f"{GC_PREFIX}{created.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(8)}"
        self.backend.put_bytes(name, seal(json.dumps(
            {"created": iso(created), "packs": sorted(packs)}).encode(), key))
        return name

    def planned_packs(self, key: bytes) -> set[str]:
        return {p for plan in self.plans(key) for p in plan["packs"]}

    def load_index(self, key: bytes, skip: set[str] = frozenset(),  # type: ignore[assignment]
                   fill: IdSet | None = None, ids_only: bool = False,
                   tail: int = 30) -> Index:
        return Index.load(self.backend, key, skip, fill, ids_only, tail)

    def prune_lock(self) -> RepoLock:
        lock = RepoLock(self.backend, "prune", "prune")
        others = [d for d in list_locks(self.backend)
                  if d["kind"] == "prune" and d["alive"] and d["name"] != lock.name]
        # Two prunes that start together both see each other; the older one (by
        # creation time, then name) wins.
        mine = (lock.created, lock.name)
        if any((d["created_at"], d["name"]) < mine for d in others):
            lock.release()
            who = others[0]
            raise LockBusyError(
                f"another prune is running on repository {self.url} "
                f"(host {who.get('host')}, pid {who.get('pid')})",
                hint="wait for it to finish; a dead one's lock expires after "
                f"{lock_stale():.0f} s")
        # Locks of runs that are gone (stale, or dead on this machine) block nothing
        # any more; the prune that holds the repository clears them away.
        for d in list_locks(self.backend):
            if not d["alive"] and d["name"] != lock.name:
                with contextlib.suppress(NotFoundError):
                    self.backend.delete(d["name"])
        return lock
