"""Retention: which backups a ``--keep-*`` policy keeps, and pruning the rest.

The rules are restic's ``forget`` algorithm, applied to each volume separately:

- a volume's backups are sorted newest first (by ``created``, then stamp);
- every ``keep`` kind (last, hourly, daily, weekly, monthly, yearly) has a counter set
  from the policy and remembers the bucket value of the last backup it kept;
- walking from the newest, a backup is kept by a kind when its bucket value differs
  from that kind's last kept value and the counter is not exhausted (a count of -1,
  "unlimited", never runs out); the counter then goes down by one;
- when a kind still has counts left at the oldest backup, the oldest is kept too
  (restic >= 0.16 "oldest daily snapshot"), which maximises the history kept;
- the results of the kinds are ORed: a backup kept by any kind is kept.

Buckets are calendar periods in UTC: hour ``2026-11-28T07``, day ``2026-11-28``, ISO
week ``2026-W48`` (Monday to Sunday), month ``2026-11``, year ``2026``. ``last`` puts
every backup in its own bucket.

Two safety rules on top of restic: an all-zero policy is refused (restic also refuses to
forget everything), and the newest complete backup of a volume is never deleted.

Usage::

    policy = Policy(daily=7, weekly=4)
    for d in plan(repo.list(), policy):
        print(d.info.id, "keep" if d.keep else "delete", ", ".join(d.reasons))
    prune(repo, policy, volume="pgdata", dry_run=True)   # same decisions, deletes nothing
    clean_orphans(repo)                                  # archives left by crashes, see there

``prune`` deletes through ``Repository.delete`` (manifest first), so a prune
interrupted at any point leaves no backup that is listed but unreadable; it leaves
orphan archives alone. ``clean_orphans`` removes them, but only those whose stamp and
stored time are both older than a grace period: a backup still being written has no
manifest yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable

from ..errors import IntegrityError, NotFoundError, ObjectNotFound, UsageError
from ..repository import STAMP_FORMAT, BackupInfo, Repository

UNLIMITED = -1
KINDS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


@dataclasses.dataclass(frozen=True)
class Policy:
    """How many backups of each kind to keep; 0 = none of that kind, -1 = unlimited."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def __post_init__(self) -> None:
        for kind in KINDS:
            n = getattr(self, kind)
            if isinstance(n, bool) or not isinstance(n, int) or n < UNLIMITED:
                raise UsageError(
                    f"--keep-{kind} must be a non-negative number (or 'unlimited'), got {n!r}"
                )

    def empty(self) -> bool:
        return all(getattr(self, k) == 0 for k in KINDS)

    def check(self) -> None:
        """Refuse a policy that would forget everything."""
        if self.empty():
            raise UsageError(
                "no retention policy given: refusing to delete every backup",
                hint="pass at least one of --keep-last/--keep-hourly/--keep-daily/"
                "--keep-weekly/--keep-monthly/--keep-yearly with a value above 0",
            )

    def __str__(self) -> str:
        parts = [
            f"{'all' if getattr(self, k) == UNLIMITED else getattr(self, k)} {k}"
            for k in KINDS
            if getattr(self, k)
        ]
        return "keep " + (", ".join(parts) if parts else "nothing")


@dataclasses.dataclass
class Decision:
    info: BackupInfo
    keep: bool
    reasons: list[str]

    def summary(self) -> dict[str, object]:
        return {"id": self.info.id, "keep": self.keep, "reasons": list(self.reasons)}


def _bucket(kind: str, t: dt.datetime, nr: int) -> str:
    t = t.astimezone(dt.UTC)
    if kind == "last":
        return str(nr)
    if kind == "hourly":
        return t.strftime("%Y-%m-%dT%H")
    if kind == "daily":
        return t.strftime("%Y-%m-%d")
    if kind == "weekly":
        year, week, _ = t.isocalendar()
        return f"{year}-W{week:02d}"
    if kind == "monthly":
        return t.strftime("%Y-%m")
    if kind == "yearly":
        return t.strftime("%Y")
    raise AssertionError(kind)


def _created(info: BackupInfo) -> dt.datetime:
    try:
        return info.created
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(
            f"backup {info.id} has no valid 'created' time in its manifest ({e})",
            hint="the manifest was modified by hand or is damaged; check it with volbak verify",
        ) from None


def _plan_volume(backups: list[BackupInfo], policy: Policy) -> list[Decision]:
    dated = [(_created(b), b) for b in backups]
    dated.sort(key=lambda p: (p[0], p[1].stamp), reverse=True)
    counts = {k: getattr(policy, k) for k in KINDS}
    last: dict[str, str | None] = dict.fromkeys(KINDS)
    out: list[Decision] = []
    oldest = len(dated) - 1
    for nr, (when, info) in enumerate(dated):
        reasons: list[str] = []
        for kind in KINDS:
            if counts[kind] == 0:
                continue
            val = _bucket(kind, when, nr)
            if val != last[kind] or nr == oldest:
                label = kind if kind == "last" else f"{kind} {val}"
                if val == last[kind]:
                    label = f"oldest {label}"
                reasons.append(label)
                last[kind] = val
                if counts[kind] > 0:
                    counts[kind] -= 1
        out.append(Decision(info, bool(reasons), reasons))
    # Never delete the newest backup. Restic's rules already keep it for any
    # non-empty policy; this guards the invariant against future edits.
    if out and not out[0].keep:
        out[0].keep = True
        out[0].reasons.append("newest")
    return out


def plan(backups: Iterable[BackupInfo], policy: Policy) -> list[Decision]:
    """Decide keep/delete for every backup, each volume on its own.

    Returns one Decision per backup: volumes in name order, each volume's backups newest
    first. Raises UsageError for an all-zero policy.
    """
    policy.check()
    by_volume: dict[str, list[BackupInfo]] = {}
    for b in backups:
        by_volume.setdefault(b.volume, []).append(b)
    out: list[Decision] = []
    for volume in sorted(by_volume):
        out.extend(_plan_volume(by_volume[volume], policy))
    return out


def prune(
    repo: Repository,
    policy: Policy,
    volume: str | None = None,
    dry_run: bool = False,
    on_delete: Callable[[Decision], None] | None = None,
) -> list[Decision]:
    """Delete the backups ``policy`` does not keep (of one volume, or all volumes).

    Returns every decision (kept and deleted). With ``dry_run`` nothing is deleted.
    ``on_delete`` is called after each deletion (for progress output). Each deletion
    removes the manifest first (``Repository.delete``), so an interrupted prune leaves
    at most unlisted orphan archives, which ``clean_orphans`` removes later. Orphans are
    not touched here.
    """
    policy.check()
    backups = repo.list(volume)
    if volume and not backups:
        raise NotFoundError(
            f"no backup of volume '{volume}' in repository {repo.url}",
            hint="run 'volbak list' to see the backups",
        )
    decisions = plan(backups, policy)
    if dry_run:
        return decisions
    for d in decisions:
        if d.keep:
            continue
        # Already gone (deleted meanwhile by someone else) is the outcome we wanted.
        with contextlib.suppress(NotFoundError, ObjectNotFound):
            repo.delete(d.info)
        if on_delete:
            on_delete(d)
    return decisions


@dataclasses.dataclass
class Orphan:
    name: str
    stamp_time: dt.datetime | None  # from the object's name; None if it has no stamp
    expired: bool  # older than the grace period: deleted unless dry_run
    deleted: bool
    mtime: float | None = None  # when the backend stored it (None: it cannot say)


DEFAULT_ORPHAN_GRACE = dt.timedelta(hours=24)


def _stamp_time(name: str) -> dt.datetime | None:
    stamp = name.rpartition("/")[2].split(".", 1)[0]
    try:
        return dt.datetime.strptime(stamp, STAMP_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def clean_orphans(
    repo: Repository,
    grace: dt.timedelta = DEFAULT_ORPHAN_GRACE,
    volume: str | None = None,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> list[Orphan]:
    """Find archive objects without a manifest; delete those older than ``grace``.

    An orphan is left by a backup that crashed after storing its archive, or by a prune
    interrupted between a manifest and its archive. A backup *in progress* (here or on
    another host) also has an archive without a manifest for a moment, and its stamp is
    its start time, so the grace period must exceed the longest backup run (default
    24 h, the same safe age as for temp files and multipart uploads). An orphan is old
    only when both its stamp and the time the backend stored it (``ObjectInfo.mtime``)
    are older than ``grace``: the stamp alone would take the archive a long backup
    stored a moment ago. Orphans without a stamp (not volbak's naming), or whose
    backend cannot say when it stored them (mtime None: a plugin from before object
    times), are only reported (``expired=False``), as are younger ones; with
    ``dry_run`` nothing is deleted. Returns every orphan found.
    """
    now = now or dt.datetime.now(dt.UTC)
    out: list[Orphan] = []
    for obj in repo.orphan_objects():
        name = obj.name
        if volume and not name.startswith(f"{volume}/"):
            continue
        when = _stamp_time(name)
        old = (when is not None and now - when > grace and obj.mtime is not None
               and now.timestamp() - obj.mtime > grace.total_seconds())
        deleted = False
        if old and not dry_run:
            with contextlib.suppress(NotFoundError, ObjectNotFound):
                repo.delete_orphan(name)
            deleted = True
        out.append(Orphan(name, when, old, deleted, obj.mtime))
    return out
