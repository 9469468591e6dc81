"""Garbage in a repository: what crashed or killed runs left behind.

- orphans: stored objects without a manifest (a backup killed between its archive's
  commit and its manifest, an interrupted prune);
- incomplete writes: temp files of the local backend, multipart uploads of S3 that
  were never completed or aborted (the backend's optional ``list_incomplete``).

Only garbage older than a grace period is removed: a backup running right now on
another host also has an archive without a manifest, and an upload in progress, for as
long as it runs. The default (24 h) must exceed the longest backup. An orphan's age is
that of its name's stamp and of the time the backend stored it (``ObjectInfo.mtime``);
a backend that cannot say when it stored an object (mtime None) gets its orphans
reported, never removed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from ..repository import Repository
from .retention import DEFAULT_ORPHAN_GRACE, clean_orphans


@dataclasses.dataclass
class Garbage:
    orphans: list[str]  # removed (or, with dry_run / younger than grace, only found)
    orphans_kept: list[str]  # younger than the grace period: maybe a live run's
    incomplete: list[str]
    dry_run: bool
    # never removed: no stamp in the name, or a backend that reports no object times
    orphans_unaged: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def found(self) -> int:
        return len(self.orphans) + len(self.incomplete)


def collect(repo: Repository, grace: dt.timedelta = DEFAULT_ORPHAN_GRACE, *,
            dry_run: bool = False) -> Garbage:
    """Find garbage older than ``grace``; remove it unless ``dry_run``."""
    found = clean_orphans(repo, grace, dry_run=dry_run)
    old = [o.name for o in found if o.expired]
    unaged = [o.name for o in found if o.stamp_time is None or o.mtime is None]
    young = [o.name for o in found if not o.expired and o.name not in unaged]
    incomplete = repo.incomplete_writes(grace.total_seconds(), remove=not dry_run)
    return Garbage(old, young, incomplete, dry_run, unaged)
