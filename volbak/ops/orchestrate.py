"""Backups as cron runs them: locked, consistent (hooks, stopped containers), pruned,
reported. The CLI's ``backup`` and ``run`` commands are thin over these functions.

Nesting, outermost first: the lock (repository + each volume), the hooks (so a
pre-hook such as a database dump runs while the service is up), the stopped
containers (started again on every way out), then the backups themselves.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..engine import (
    Engine,
    container_volumes,
    containers_using,
    inspect_container,
    inspect_volume,
    volumes_with_label,
)
from ..errors import NotFoundError, VolbakError
from ..repository import BackupInfo, Repository
from ..util.redact import redact, redact_obj
from . import lock
from .backup import BackupOptions, backup_container, backup_volume
from .hooks import hooks
from .recovery import note_engine
from .stopper import containers_to_stop, stopped

Event = Callable[[str], None]


@dataclasses.dataclass
class Consistency:
    stop: bool = False  # stop every running user of the volumes (label volbak.stop=true opts in)
    pre_backup: str | None = None  # replace the containers' volbak.pre-backup labels
    post_backup: str | None = None
    lock_wait: float = 0
    stop_timeout: int | None = None  # docker stop -t; None = the container's own default


def volumes_of(engine: Engine, volumes: Sequence[str], containers: Sequence[str]) -> list[str]:
    """Every volume named or mounted by a named container, without duplicates."""
    out = list(volumes)
    for c in containers:
        out += [v for v, _ in container_volumes(inspect_container(engine, c))]
    return list(dict.fromkeys(out))


def volumes_by_label(engine: Engine, labels: Sequence[str]) -> list[str]:
    return [name for label in labels for name in volumes_with_label(engine, label)]


@dataclasses.dataclass
class Plan:
    """What a backup run will do, found before anything is done (``--dry-run`` shows it)."""

    volumes: list[str]  # named volumes, backed up one by one
    sets: dict[str, list[str]]  # container -> its volumes, backed up as one set
    stop: list[str]  # running containers that will be stopped
    in_use: list[str]  # running containers that keep running (no --stop)
    hooks: list[str]  # containers a pre/post-backup hook runs in

    @property
    def all_volumes(self) -> list[str]:
        return list(dict.fromkeys([*self.volumes, *(v for vs in self.sets.values() for v in vs)]))

    def summary(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "dry_run": True}


def _names(cs: Sequence[Any]) -> list[str]:
    return [c.name for c in cs]


def plan_backup(engine: Engine, volumes: Sequence[str], containers: Sequence[str],
                how: Consistency) -> tuple[Plan, list[Any], list[Any]]:
    """Check every name before anything starts (a typo must not leave half a run), and
    find the containers to stop. Returns (plan, running users, containers to stop)."""
    from .hooks import LABELS as HOOK_LABELS

    for v in dict.fromkeys(volumes):
        inspect_volume(engine, v)
    sets = {c: [v for v, _ in container_volumes(inspect_container(engine, c))]
            for c in dict.fromkeys(containers)}
    for c, vs in sets.items():
        if not vs:
            raise NotFoundError(
                f"container '{c}' has no volumes to back up (--container)",
                hint="bind mounts are not backed up; use 'docker inspect' to see its mounts")
    all_volumes = list(dict.fromkeys([*volumes, *(v for vs in sets.values() for v in vs)]))
    client = engine.client
    users = list({c.id: c for v in all_volumes for c in containers_using(client, v)}.values())
    victims = containers_to_stop(client, all_volumes, force=how.stop)
    stopping = {c.id for c in victims}
    hooked = [c for c in users if how.pre_backup or how.post_backup
              or any((c.labels or {}).get(k) for k in HOOK_LABELS.values())]
    plan = Plan(list(dict.fromkeys(volumes)), sets, _names(victims),
                [c.name for c in users if c.id not in stopping], _names(hooked))
    return plan, users, victims


def guarded_backup(
    engine: Engine, repo: Repository, volumes: Sequence[str], containers: Sequence[str],
    opts: BackupOptions, how: Consistency, on_event: Event | None = None,
    on_stored: Callable[[BackupInfo], None] | None = None,
    on_warning: Event | None = None,
) -> list[BackupInfo]:
    """Back up ``volumes`` and the volumes of ``containers``. ``on_stored`` is called
    for each backup as soon as it is listed, so a run that fails later can still say
    what it stored."""
    plan, users, victims = plan_backup(engine, volumes, containers, how)
    # Backups of different volumes may run side by side: the repository is only shared
    # (prune and forget take it exclusively); a volume is exclusive.
    vkeys = [lock.volume_key(engine.url, v) for v in plan.all_volumes]

    def waiting(key: str, holder: dict[str, Any]) -> None:
        if on_event:
            on_event(f"waiting for the lock on {key} (held by pid {holder.get('pid', '?')})")

    hooked = set(plan.hooks)
    unguarded = [n for n in plan.in_use if n not in hooked]
    if unguarded and on_warning:
        on_warning(f"container(s) {', '.join(unguarded)} use the volume(s) and keep running: "
                   "the backup may catch files mid-write (add --stop, or a --pre-backup dump)")
    infos: list[BackupInfo] = []

    def stored(info: BackupInfo) -> BackupInfo:
        infos.append(info)
        if on_stored:
            on_stored(info)
        return info

    client = engine.client
    note_engine(engine)  # helpers of this run are swept if it dies
    with lock.acquire([lock.repo_key(repo.url), *vkeys], how.lock_wait, on_wait=waiting,
                      shared=[lock.repo_key(repo.url)]), \
            hooks(users, how.pre_backup, how.post_backup, on_event=on_event), \
            stopped(client, victims, engine_url=engine.url, timeout=how.stop_timeout,
                    on_event=on_event):
        for v in plan.volumes:
            stored(backup_volume(engine, repo, v, opts))
        for c in plan.sets:
            backup_container(engine, repo, c, opts, on_stored=stored)
    return infos


@dataclasses.dataclass
class JobReport:
    job: str
    status: str = "ok"  # ok | failed
    backups: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    pruned: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    hint: str | None = None
    exit_code: int = 0
    seconds: float = 0.0
    notify: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        # What reaches logs, on-failure commands and webhooks never holds key material.
        return redact_obj(dataclasses.asdict(self))


def run_job(job: Any, connect: Callable[[], Engine], open_repo: Callable[[Any], Repository],
            make_recipients: Callable[[Any], list[Any]], lock_wait: float = 0,
            progress: bool = False, on_event: Event | None = None,
            on_warning: Event | None = None) -> JobReport:
    """Run one job of a config file (``volbak.jobs.Job``): back up, then apply its
    retention to the volumes it backed up. Never raises a VolbakError: the report
    says what failed, and the failure command / webhook are called."""
    from . import notify
    from .retention import prune

    report = JobReport(job.name)
    t0 = time.monotonic()
    try:
        engine = connect()
        repo = open_repo(job)
        volumes = list(job.volumes) + volumes_by_label(engine, job.labels)
        if not volumes and not job.containers:
            raise NotFoundError(f"job '{job.name}' selects no volume (labels {job.labels})",
                                hint="check the job's volumes/containers/labels")
        opts = BackupOptions(job.compress, make_recipients(job), None, progress,
                             cache=job.cache, sha256=job.sha256)
        how = Consistency(job.stop, job.pre_backup, job.post_backup, lock_wait)
        infos = guarded_backup(engine, repo, volumes, list(job.containers), opts, how, on_event,
                               on_stored=lambda i: report.backups.append(i.summary()),
                               on_warning=on_warning)
        if job.keep:
            with lock.acquire([lock.repo_key(repo.url)], lock_wait):  # exclusive: prune
                for vol in dict.fromkeys(i.volume for i in infos):
                    report.pruned += [d.info.id for d in prune(repo, job.keep, vol) if not d.keep]
    except VolbakError as e:
        report.status, report.error, report.hint = "failed", redact(e.message), (
            redact(e.hint) if e.hint else None)
        report.exit_code = e.exit_code
    except KeyboardInterrupt:
        report.status, report.error, report.exit_code = "failed", "interrupted", 130
        raise
    finally:
        report.seconds = round(time.monotonic() - t0, 3)
        if report.status == "failed":
            summary = report.summary()
            if job.on_failure:
                res = notify.on_failure(job.on_failure, summary)
                report.notify.append(res.detail)
            if job.webhook:
                res = notify.post_webhook(job.webhook, summary)
                report.notify.append(res.detail)
    return report
