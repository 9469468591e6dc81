"""Crash safety for restore and migrate targets, and recovery after a dead run.

Three promises, each kept with a journal entry (``volbak.ops.journal``) written
before the step and removed after it:

- **new targets** (``new-target``): a volume or data-volume container a run creates
  as a restore/migrate target is journalled before it is created, and the entry is
  removed once the target is complete and verified. A dead run's target is removed by
  recovery, if it still carries the labels the run gave it (and, for volumes, the
  same creation time): a user's volume of the same name is never touched.
- **replacement** (``replace``): an existing volume's content is replaced only from a
  staging volume that already holds the complete, verified data, and only after the
  intent (target, staging, the target's labels, driver, options) is on disk. From
  then on the replacement only ever rolls *forward*: recovery makes the target hold
  exactly the staging content (recreating it if it is gone, emptying it, copying,
  comparing both canonical digests through the archive API), then removes the staging
  volume, then the entry. A crash before the entry exists leaves the target untouched;
  the staging volume is then garbage.
- **garbage**: helpers and staging volumes carry their owner (``<host>:<pid>``);
  those of dead owners on this host are removed on every engine a dead run noted
  (``journal.touch_engine``) and on the engines the caller names.

The API restore and migrate use::

    with new_targets() as nt:                       # nests: the outermost group decides
        nt.volume(engine, "pgdata2", {RESTORED_LABEL: info.id})   # journal, then create
        fill(...)                                   # a failure removes what nt created
        nt.container(engine, "web2", {RESTORED_LABEL: set_id})    # journal; caller creates
    # here the targets are complete and their entries gone

    staging = fill_staging(engine, fill, labels)    # owner-labelled staging volume
    replace_from_staging(engine, staging, target, empty, helper_image)  # crash-safe

    report = recover_all(connect, on_event, on_error)   # at the start of every command
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..engine import (
    MANAGED_LABEL,
    OWNER_LABEL,
    STAGING_PREFIX,  # noqa: F401 - public name
    Engine,
    create_volume,
    inspect_container,
    inspect_volume,
    list_volumes,
    remove_container,
    remove_volume,
    staging_name,
    sweep_stale_helpers,
)
from ..errors import EngineError, IntegrityError, NotFoundError, VolbakError
from ..util.host import owner
from ..util.signals import deferred
from . import journal, stopper

Event = Callable[[str], None]
# A new target volume's own nonce. Docker's CreatedAt of a local volume is the ctime of
# its data directory: it moves as soon as a run writes into the volume's root (or sets
# the root's mode), so it cannot tell a dead run's half-made target from a later volume
# of the same name (chaos restore-new: 8 of 30 runs left mixed targets). The nonce can.
TARGET_LABEL = "volbak.target"


# -- volumes -----------------------------------------------------------------------------------


def _inspect_volume(engine: Engine, name: str) -> dict[str, Any] | None:
    try:
        return inspect_volume(engine, name)
    except NotFoundError:
        return None


def _labels_match(have: dict[str, str] | None, want: dict[str, str]) -> bool:
    have = have or {}
    return bool(want) and all(have.get(k) == v for k, v in want.items())


def note_engine(engine: Engine) -> None:
    """Call before creating helpers on an engine: if this run dies, recovery sweeps
    that engine for what it left."""
    journal.touch_engine(engine.url)


# -- new targets -------------------------------------------------------------------------------


class NewTargets:
    """The targets one run creates; see the module doc. Use ``new_targets()``."""

    def __init__(self, journal_dir: Path | None = None) -> None:
        self._dir = journal_dir
        self._items: list[tuple[journal.Entry, Engine]] = []

    def volume(self, engine: Engine, name: str, labels: dict[str, str], driver: str = "local",
               options: dict[str, str] | None = None) -> None:
        """Journal, then create a new target volume with ``labels`` (which must include
        a volbak label: recovery removes the volume only if it still carries them)."""
        journal.touch_engine(engine.url, self._dir)
        labels = {**labels, TARGET_LABEL: secrets.token_hex(8)}
        entry = journal.Entry("new-target", {"engine": engine.url, "type": "volume",
                                             "name": name, "labels": labels}, self._dir)
        try:
            create_volume(engine, name, labels, driver, options)
        except BaseException:
            entry.remove()
            raise
        self._items.append((entry, engine))

    def container(self, engine: Engine, name: str, labels: dict[str, str]) -> None:
        """Journal a data-volume container the caller creates right after this call."""
        entry = journal.Entry("new-target", {"engine": engine.url, "type": "container",
                                             "name": name, "labels": labels}, self._dir)
        self._items.append((entry, engine))

    def done(self) -> None:
        """Every target is complete and verified: forget them."""
        for entry, _ in self._items:
            entry.remove()
        self._items.clear()

    def undo(self) -> list[str]:
        """Remove what was created (containers first: they hold the volumes). Returns
        the targets that could not be removed; their entries are left to recovery."""
        left = []
        with deferred():
            for entry, engine in reversed(self._items):
                try:
                    gone = _undo_target(engine, entry.record)
                except VolbakError:
                    gone = False
                if gone:
                    entry.remove()
                else:
                    entry.release()
                    left.append(entry.record["name"])
            self._items.clear()
        return left


_local = threading.local()  # the active group, per thread (library calls may run in threads)


@contextlib.contextmanager
def new_targets(journal_dir: Path | None = None) -> Iterator[NewTargets]:
    """A group of new targets: complete when the outermost block ends normally, undone
    (removed) when it raises. Inner blocks join the outer group, so a restore into a
    new container keeps every new volume journalled until the container exists."""
    current = getattr(_local, "group", None)
    if current is not None:
        yield current
        return
    group = _local.group = NewTargets(journal_dir)
    try:
        yield group
    except BaseException:
        group.undo()
        raise
    else:
        group.done()
    finally:
        _local.group = None


def current_targets() -> NewTargets:
    """The group of the enclosing ``new_targets()`` block."""
    current = getattr(_local, "group", None)
    if current is None:
        raise RuntimeError("no new_targets() block is active")
    return current


def _undo_target(engine: Engine, rec: dict[str, Any]) -> bool:
    """Remove a dead (or failed) run's target if it is still the one it made."""
    name, want = rec["name"], rec.get("labels") or {}
    if rec.get("type") == "container":
        try:
            attrs = inspect_container(engine, name)
        except NotFoundError:
            return True
        except EngineError:
            return False
        if not _labels_match((attrs.get("Config") or {}).get("Labels"), want):
            return True  # not ours (any more): leave it
        # one attempt: what the engine refuses now, the next recovery retries
        return remove_container(engine, attrs["Id"], patience=0)
    info = _inspect_volume(engine, name)
    if info is None:
        return True
    if not _labels_match(info.get("Labels"), want):
        return True
    if TARGET_LABEL not in want and rec.get("created_at") \
            and info.get("CreatedAt") != rec["created_at"]:
        return True  # (an entry from before the nonce) maybe made later by someone else
    return remove_volume(engine, name)


# -- staging and replacement -------------------------------------------------------------------


def staging_labels(labels: dict[str, str] | None = None) -> dict[str, str]:
    """Labels of a staging volume: managed, and owned by this process (recovery removes
    only dead owners' staging volumes)."""
    return {**(labels or {}), MANAGED_LABEL: "staging", OWNER_LABEL: owner()}


def create_staging(engine: Engine, labels: dict[str, str] | None = None) -> str:
    journal.touch_engine(engine.url)
    name = staging_name()
    create_volume(engine, name, staging_labels(labels))
    return name


def fill_staging(engine: Engine, fill: Callable[[str], None], labels: dict[str, str]) -> str:
    """Create a staging volume and ``fill(name)`` it; on any failure it is removed again.
    Returns the staging volume's name."""
    staging = create_staging(engine, labels)
    try:
        fill(staging)
    except BaseException:
        remove_volume(engine, staging)
        raise
    return staging


def _digest(engine: Engine, volume: str, image: str | None) -> Any:
    """The canonical digest of a volume, read the best way this host allows."""
    from ..engine import inspect_volume
    from ..volumes import owners_comparable, read_back
    from ..volumes.select import choose

    info = inspect_volume(engine, volume)
    kind, _ = choose(engine.url, info, "auto")
    return read_back(engine, volume, info, "data", kind, owners=owners_comparable(engine, kind),
                     all_xattrs=kind == "direct", image=image)


def _copy(engine: Engine, src: str, dst: str, image: str | None) -> None:
    from ..volumes import copy_tree

    copy_tree(engine, src, dst, image=image)


def _roll_forward(engine: Engine, rec: dict[str, Any], fresh: bool,
                  on_event: Event | None = None) -> None:
    """Make ``target`` hold exactly ``staging``'s content, then remove ``staging``.
    ``fresh``: called by the run that wrote the entry, with the target as checked."""
    staging, target = rec["staging"], rec["target"]
    image = rec.get("helper_image")
    if _inspect_volume(engine, staging) is None:
        return  # staging goes only after the target was verified: nothing left to do
    if on_event and not fresh:
        on_event(f"completing the replacement of volume '{target}' from '{staging}'")
    # An empty target is filled in place (it may be mounted by a container that waits
    # for it); anything else is recreated empty with its own labels, driver, options.
    if rec.get("in_use"):
        # containers mount the target: the engine will not remove it, so it is emptied
        # in place (a roll-forward may repeat this: emptying is idempotent)
        from ..volumes import clear_tree

        clear_tree(engine, target, image=image)
    elif not (fresh and rec.get("empty")):
        if _inspect_volume(engine, target) is not None and not remove_volume(engine, target):
            raise EngineError(f"cannot remove volume '{target}' on {engine.url} to replace "
                              "its content (in use?)", hint="'volbak recover' retries")
        create_volume(engine, target, rec.get("labels") or {}, rec.get("driver") or "local",
                      rec.get("options") or {})
    elif _inspect_volume(engine, target) is None:
        create_volume(engine, target, rec.get("labels") or {}, rec.get("driver") or "local",
                      rec.get("options") or {})
    _copy(engine, staging, target, image)
    want = _digest(engine, staging, image)
    got = _digest(engine, target, image)
    if got.hexdigest() != want.hexdigest() or got.entries != want.entries:
        raise IntegrityError(
            f"volume '{target}' does not hold what staging volume '{staging}' holds after "
            f"the copy ({got.entries} entries, {got.file_bytes} file bytes; staging "
            f"{want.entries} entries, {want.file_bytes} file bytes)",
            hint="the engine did not store the copy faithfully (full disk?); the verified "
            f"data stays in '{staging}' and 'volbak recover' retries",
        )
    if not remove_volume(engine, staging):
        raise EngineError(f"could not remove staging volume '{staging}' on {engine.url}",
                          hint="'volbak recover' retries")


def replace_from_staging(engine: Engine, staging: str, target: str, empty: bool,
                         helper_image: str | None = None, flag: str = "--to-volume",
                         what: str = "restored", rerun: str = "rerun the restore",
                         journal_dir: Path | None = None, in_use: bool = False) -> None:
    """Replace ``target``'s content with the complete, verified ``staging`` volume's,
    crash-safe (see the module doc), then remove ``staging``.

    If this fails or is interrupted, the entry is left for recovery, which finishes the
    replacement: the target never ends up with a mix, and the data is never lost."""
    info = _inspect_volume(engine, target)
    if info is None:
        raise NotFoundError(f"no volume '{target}' on engine {engine.url} ({flag})")
    journal.touch_engine(engine.url, journal_dir)
    rec = {"engine": engine.url, "target": target, "staging": staging, "empty": empty,
           "labels": info.get("Labels") or {}, "driver": info.get("Driver") or "local",
           "options": info.get("Options") or {}, "helper_image": helper_image,
           "in_use": in_use}
    entry = journal.Entry("replace", rec, journal_dir)
    try:
        _roll_forward(engine, entry.record, fresh=True)
    except BaseException as e:
        entry.release()  # recovery rolls forward from here
        if not isinstance(e, Exception):
            raise
        raise EngineError(
            f"replacing the contents of volume '{target}' failed ({e}); the verified "
            f"{what} data is kept in volume '{staging}'",
            hint="'volbak recover' (or any later volbak command) completes the replacement "
            f"once the engine works; or {rerun}",
        ) from None
    entry.remove()


# -- recovery ----------------------------------------------------------------------------------


@dataclasses.dataclass
class RecoveryReport:
    started: list[str] = dataclasses.field(default_factory=list)  # containers
    replaced: list[str] = dataclasses.field(default_factory=list)  # target volumes
    removed_targets: list[str] = dataclasses.field(default_factory=list)
    removed_staging: list[str] = dataclasses.field(default_factory=list)
    removed_helpers: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def anything(self) -> bool:
        return bool(self.started or self.replaced or self.removed_targets
                    or self.removed_staging or self.removed_helpers)

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merge(self, other: RecoveryReport) -> RecoveryReport:
        return RecoveryReport(
            self.started + other.started, self.replaced + other.replaced,
            self.removed_targets + other.removed_targets,
            self.removed_staging + other.removed_staging,
            self.removed_helpers + other.removed_helpers, self.errors + other.errors,
            round(self.seconds + other.seconds, 3))


def sweep_staging(engine: Engine, keep: Iterable[str] = ()) -> list[str]:
    """Remove staging volumes whose owner is a dead process on this host, except those
    named in ``keep`` (still the data of a pending replacement)."""
    keep = set(keep)
    removed = []
    for v in list_volumes(engine, f"{MANAGED_LABEL}=staging"):
        labels = v.get("Labels") or {}
        owner = labels.get(OWNER_LABEL)
        if v["Name"] in keep or not owner or journal.owner_alive(owner):
            continue
        if remove_volume(engine, v["Name"], patience=3):
            removed.append(v["Name"])
    return removed


def recover_all(connect: Callable[[str], Engine], on_event: Event | None = None,
                on_error: Callable[[str], None] | None = None, engines: Iterable[str] = (),
                journal_dir: Path | None = None) -> RecoveryReport:
    """Finish or undo what dead volbak runs left: start the containers they stopped,
    roll their replacements forward, remove their unfinished targets, and sweep their
    helpers and staging volumes on every engine they noted (and on ``engines``).
    Entries of live runs are left alone; failures keep their entries and go to
    ``on_error`` (or are raised as one EngineError if there is none)."""
    t0 = time.monotonic()
    report = RecoveryReport()
    conns: dict[str, Engine | None] = {}

    def engine_for(url: str) -> Engine | None:
        if url not in conns:
            try:
                conns[url] = connect(url)
            except VolbakError as e:
                report.errors.append(f"cannot reach engine {url}: {e}")
                conns[url] = None
        return conns[url]

    clients: dict[str, Any] = {}

    def client_for(url: str) -> Any:
        eng = engine_for(url)
        if eng is None:
            raise EngineError(f"engine {url} is unreachable")
        return eng.client

    all_entries = journal.entries(journal_dir)
    dead = [e for e in all_entries if not e["live"]]
    try:
        # Services first: a stopped container is an outage.
        for e in dead:
            if e["kind"] != "stop":
                continue
            with journal.claim(Path(e["path"])) as rec:
                if rec is None or rec["kind"] != "stop":
                    continue
                ok, failed = stopper.recover_entry(rec, client_for, clients, on_event)
                report.started.extend(ok)
                report.errors.extend(failed)
                if not failed:
                    journal.forget(rec["path"])

        # Dead runs' helpers hold volumes (staging, targets): remove them before those.
        urls = list(dict.fromkeys(
            [*(u for e in dead for u in _engines_of(e)), *engines]))
        # engine URL -> every dead run's helper on it is gone (else their notes are kept)
        swept: dict[str, bool] = {}
        for url in urls:
            eng = engine_for(url)
            if eng is None:
                continue
            sweep = sweep_stale_helpers(eng)
            report.removed_helpers += len(sweep.removed)
            swept[url] = not sweep.left
            if sweep.left and on_event:
                on_event(f"{len(sweep.left)} helper container(s) of an interrupted run "
                         f"on {url} could not be removed yet; the next volbak command "
                         "tries again")

        for e in dead:
            if e["kind"] != "replace":
                continue
            with journal.claim(Path(e["path"])) as rec:
                if rec is None or rec["kind"] != "replace":
                    continue
                eng = engine_for(rec["engine"])
                if eng is None:
                    continue
                try:
                    _roll_forward(eng, rec, fresh=False, on_event=on_event)
                except VolbakError as err:
                    report.errors.append(f"replacing volume '{rec['target']}': {err}")
                    continue
                report.replaced.append(rec["target"])
                journal.forget(rec["path"])

        # Containers before volumes: a data-volume container holds its volumes.
        targets = [e for e in dead if e["kind"] == "new-target"]
        targets.sort(key=lambda e: e.get("type") != "container")
        for e in targets:
            with journal.claim(Path(e["path"])) as rec:
                if rec is None or rec["kind"] != "new-target":
                    continue
                eng = engine_for(rec["engine"])
                if eng is None:
                    continue
                try:
                    gone = _undo_target(eng, rec)
                except VolbakError as err:
                    report.errors.append(str(err))
                    continue
                if not gone:
                    report.errors.append(f"could not remove the unfinished {rec.get('type')} "
                                         f"'{rec['name']}' on {rec['engine']}")
                    continue
                if on_event:
                    on_event(f"removed the unfinished {rec.get('type')} '{rec['name']}' "
                             "an interrupted run had created")
                report.removed_targets.append(rec["name"])
                journal.forget(rec["path"])

        pending = {e.get("staging") for e in journal.entries(journal_dir)
                   if e["kind"] == "replace"}
        for url in swept:
            eng = conns.get(url)
            assert eng is not None
            try:
                report.removed_staging += sweep_staging(eng, keep=pending - {None})
            except VolbakError as err:
                report.errors.append(str(err))

        for e in dead:
            if e["kind"] == "engines" and all(swept.get(u) for u in _engines_of(e)):
                with journal.claim(Path(e["path"])) as rec:
                    if rec is not None:
                        journal.forget(rec["path"])
            elif e["kind"] == "unreadable":
                report.errors.append(f"journal entry {e['path']} is unreadable; remove it "
                                     "by hand")
    finally:
        for eng in conns.values():
            if eng is not None:
                eng.close()
    report.seconds = round(time.monotonic() - t0, 3)
    if report.errors:
        if on_error:
            for msg in report.errors:
                on_error(msg)
        else:
            raise EngineError("recovery of an interrupted volbak run failed: "
                              + "; ".join(report.errors),
                              hint="fix the cause, then run 'volbak recover' again")
    return report


def _engines_of(e: dict[str, Any]) -> list[str]:
    if e["kind"] == "engines":
        return [u for u in e.get("engines") or [] if isinstance(u, str)]
    url = e.get("engine")
    return [url] if isinstance(url, str) and e["kind"] in ("new-target", "replace") else []


def pending_entries(journal_dir: Path | None = None) -> list[dict[str, Any]]:
    """Journal entries left by dead runs that recovery could not finish yet."""
    return [e for e in journal.entries(journal_dir) if not e["live"]]
