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
    volumes_with_label,
)
from ..errors import NotFoundError, VolbakError
from ..repository import BackupInfo, Repository
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


def volumes_of(engine: Engine, volumes: Sequence[str], containers: Sequence[str]) -> list[str]:
    """Every volume named or mounted by a named container, without duplicates."""
    out = list(volumes)
    for c in containers:
        out += [v for v, _ in container_volumes(inspect_container(engine, c))]
    return list(dict.fromkeys(out))


def volumes_by_label(engine: Engine, labels: Sequence[str]) -> list[str]:
    return [name for label in labels for name in volumes_with_label(engine, label)]


def guarded_backup(
    engine: Engine, repo: Repository, volumes: Sequence[str], containers: Sequence[str],
    opts: BackupOptions, how: Consistency, on_event: Event | None = None,
) -> list[BackupInfo]:
    all_volumes = volumes_of(engine, volumes, containers)
    keys = [lock.repo_key(repo.url), *(lock.volume_key(engine.url, v) for v in all_volumes)]

    def waiting(key: str, holder: dict[str, Any]) -> None:
        if on_event:
            on_event(f"waiting for the lock on {key} (held by pid {holder.get('pid', '?')})")

    client = engine.client
    note_engine(engine)  # helpers of this run are swept if it dies
    with lock.acquire(keys, how.lock_wait, on_wait=waiting):
        users = list({c.id: c for v in all_volumes for c in containers_using(client, v)}.values())
        victims = containers_to_stop(client, all_volumes, force=how.stop)
        with hooks(users, how.pre_backup, how.post_backup, on_event=on_event), \
                stopped(client, victims, engine_url=engine.url, on_event=on_event):
            infos = [backup_volume(engine, repo, v, opts) for v in volumes]
            for c in containers:
                infos += backup_container(engine, repo, c, opts)
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
        return dataclasses.asdict(self)


def run_job(job: Any, connect: Callable[[], Engine], open_repo: Callable[[Any], Repository],
            make_recipients: Callable[[Any], list[Any]], lock_wait: float = 0,
            progress: bool = False, on_event: Event | None = None) -> JobReport:
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
        opts = BackupOptions(job.compress, make_recipients(job), None, progress)
        how = Consistency(job.stop, job.pre_backup, job.post_backup, lock_wait)
        infos = guarded_backup(engine, repo, volumes, list(job.containers), opts, how, on_event)
        report.backups = [i.summary() for i in infos]
        if job.keep:
            with lock.acquire([lock.repo_key(repo.url)], lock_wait):
                for vol in dict.fromkeys(i.volume for i in infos):
                    report.pruned += [d.info.id for d in prune(repo, job.keep, vol) if not d.keep]
    except VolbakError as e:
        report.status, report.error, report.hint = "failed", e.message, e.hint
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
