"""`volbak run`: the jobs of a config file, as cron runs them."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from ..errors import JobFailed
from .cmd_backup import plan_lines
from .context import Ctx, plural


def _dry_run(ctx: Ctx, jobs: list[Any]) -> None:
    from ..ops.orchestrate import Consistency, plan_backup, volumes_by_label

    for job in jobs:
        engine = ctx.engine()
        volumes = list(job.volumes) + volumes_by_label(engine, job.labels)
        plan, _, _ = plan_backup(engine, volumes, list(job.containers),
                                 Consistency(job.stop, job.pre_backup, job.post_backup))
        ctx.emit({"job": job.name, "repo": job.repo, **plan.summary(),
                  "keep": str(job.keep) if job.keep else None})
        ctx.say(f"job {job.name}: into {job.repo}"
                f"{', encrypted' if job.encrypted else ''}, {job.compress}")
        for line in plan_lines(plan):
            ctx.say(f"  {line}")
        if job.keep:
            ctx.say(f"  then prune those volumes: {job.keep}")
    ctx.say("dry run: nothing was done")


@click.command()
@click.option("--config", "config_path", metavar="FILE",
              help="Job file (TOML); see the README for its keys. Default: $VOLBAK_CONFIG, "
              "/etc/volbak.toml as root, ~/.config/volbak.toml.")
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option("--wait", "lock_wait", type=float, default=0, metavar="SECONDS",
              help="Wait for another run holding the same volume or repository.")
@click.option("--dry-run", is_flag=True,
              help="Check the jobs and show what each would back up, stop and prune; "
              "do nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON summary per job on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-H", "--host", metavar="URL|CONTEXT", help="Docker engine (as for backup).")
@click.option("--on-failure", metavar="CMD",
              help="Run 'sh -c CMD' when a job fails, its JSON summary on stdin (overrides "
              "the jobs' on_failure).")
@click.option("--webhook", metavar="URL",
              help="POST a failed job's JSON summary to URL (overrides the jobs' webhook).")
def run(config_path: str | None, jobs: tuple[str, ...], lock_wait: float, dry_run: bool,
        as_json: bool, quiet: bool, host: str | None, on_failure: str | None,
        webhook: str | None) -> None:
    """Run the named jobs of a config file (all of them by default), as cron would.

    Each job backs up its volumes (with its encryption, compression, --stop and hooks),
    then applies its retention. A failing job runs its on_failure command and webhook,
    and the run goes on with the next job; the exit code is that of the first failure.

    \b
    Examples:
      volbak run --config /etc/volbak.toml
      volbak run --config volbak.toml nightly --json --wait 600
      volbak run --dry-run
    """
    from ..config import default_path, load
    from ..errors import UsageError
    from ..ops.orchestrate import run_job
    from ..repository import Repository
    from .context import merged

    o = merged({"host": host, "as_json": as_json, "quiet": quiet, "config": config_path})
    path = o["config"] or default_path()
    if not path:
        raise UsageError("no job file", hint="pass --config FILE, set VOLBAK_CONFIG, or "
                         "create /etc/volbak.toml (root) or ~/.config/volbak.toml")
    ctx = Ctx(o["host"], None, (), bool(o["as_json"]), bool(o["quiet"]), str(path))
    try:
        ctx.recover()
        config = load(path)
        if dry_run:
            _dry_run(ctx, config.select(jobs))
            return

        def open_repo(job: Any) -> Repository:
            from ..backend import open_backend

            repo = Repository(open_backend(job.repo, job.repo_options))
            try:
                repo.check_location(create=True)
            except BaseException:
                repo.close()
                raise
            return repo

        def make_recipients(job: Any) -> list[Any]:
            from ..crypto.keys import recipients

            return recipients(job.recipients,
                              [str(job.recipients_file)] if job.recipients_file else [],
                              str(job.passphrase_file) if job.passphrase_file else None)

        first_failure = None
        for job in config.select(jobs):
            if on_failure or webhook:
                job = dataclasses.replace(job, on_failure=on_failure or job.on_failure,
                                          webhook=webhook or job.webhook)
            report = run_job(job, ctx.engine, open_repo, make_recipients, lock_wait,
                             ctx.progress, ctx.event, on_warning=ctx.warn)
            ctx.emit(report.summary())
            if report.status == "ok":
                ctx.say(f"job {job.name}: {plural(len(report.backups), 'backup')} in {job.repo}"
                        f", {len(report.pruned)} pruned, {report.seconds:.1f} s")
            else:
                if report.backups:
                    click.echo(f"volbak: job {job.name} stored before failing: "
                               f"{', '.join(b['id'] for b in report.backups)}", err=True)
                click.echo(f"volbak: job {job.name} failed: {report.error}", err=True)
                if report.hint:
                    click.echo(f"hint: {report.hint}", err=True)
                for note in report.notify:
                    click.echo(f"volbak: job {job.name}: {note}", err=True)
                first_failure = first_failure or report
        if first_failure:
            err = JobFailed(f"job {first_failure.job} failed (see above)",
                            hint="fix the cause named above and run the job again")
            err.exit_code = first_failure.exit_code or 1
            raise err
    finally:
        ctx.close()
