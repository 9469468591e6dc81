"""`volbak run`: the jobs of a config file, as cron runs them."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from ..errors import JobFailed
from .context import Ctx


@click.command()
@click.option("--config", "config_path", required=True, metavar="FILE",
              help="Job file (TOML); see the README for its keys.")
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option("--wait", "lock_wait", type=float, default=0, metavar="SECONDS",
              help="Wait for another run holding the same volume or repository.")
@click.option("--json", "as_json", is_flag=True, help="One JSON summary per job on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-H", "--host", metavar="URL|CONTEXT", help="Docker engine (as for backup).")
@click.option("--on-failure", metavar="CMD",
              help="Run 'sh -c CMD' when a job fails, its JSON summary on stdin (overrides "
              "the jobs' on_failure).")
@click.option("--webhook", metavar="URL",
              help="POST a failed job's JSON summary to URL (overrides the jobs' webhook).")
def run(config_path: str, jobs: tuple[str, ...], lock_wait: float, as_json: bool, quiet: bool,
        host: str | None, on_failure: str | None, webhook: str | None) -> None:
    """Run the named jobs of a config file (all of them by default), as cron would.

    Each job backs up its volumes (with its encryption, compression, --stop and hooks),
    then applies its retention. A failing job runs its on_failure command and webhook,
    and the run goes on with the next job; the exit code is that of the first failure.

    \b
    Examples:
      volbak run --config /etc/volbak.toml
      volbak run --config volbak.toml nightly --json --wait 600
    """
    from ..config import load
    from ..ops.orchestrate import run_job
    from ..repository import Repository

    ctx = Ctx(host, None, (), as_json, quiet)
    try:
        ctx.recover()
        config = load(config_path)

        def open_repo(job: Any) -> Repository:
            from ..backend import open_backend

            return Repository(open_backend(job.repo, job.repo_options))

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
                             ctx.progress, ctx.event)
            ctx.emit(report.summary())
            if report.status == "ok":
                ctx.say(f"job {job.name}: {len(report.backups)} backup(s), "
                        f"{len(report.pruned)} pruned, {report.seconds:.1f} s")
            else:
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
