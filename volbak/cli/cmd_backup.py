"""`volbak backup`."""

from __future__ import annotations

from typing import Any

import click

from ..errors import UsageError, VolbakError
from .context import (
    Ctx,
    common,
    encryption_options,
    fmt_rate,
    fmt_size,
    plural,
    source_option,
)


@click.command()
@click.argument("volumes", nargs=-1, metavar="[VOLUME]...")
@click.option("--container", "-c", "containers", multiple=True, metavar="NAME",
              help="Back up every volume of this container, as one set (repeatable).")
@click.option("--compress", "compression", default=None,
              type=click.Choice(["zstd", "gzip", "none"]),
              help="Compression of the archive (default: the config's compress, else zstd).")
@click.option("--sha256", is_flag=True,
              help="Also record the stored archive's SHA-256 (shown by 'show' and --json), "
              "for checking it with sha256sum; volbak itself checks its BLAKE3. Archive "
              "repositories only; costs about 0.6 s of CPU per GiB stored.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Leave out paths inside the volume matching PATTERN (shell wildcards, "
              "relative to the volume root, e.g. 'cache' or '*.tmp'; a directory takes its "
              "contents with it). Repeatable.")
@click.option("--stop", is_flag=True,
              help="Stop the running containers that use the volumes, start them again "
              "afterwards (containers labelled volbak.stop=true are stopped anyway).")
@click.option("--stop-timeout", type=click.IntRange(min=0), metavar="SECONDS",
              help="With --stop: seconds before a container is killed (docker stop -t; "
              "default: the container's own, usually 10).")
@click.option("--pre-backup", metavar="CMD",
              help="Run 'sh -c CMD' in each running container using the volumes before "
              "the backup (default: their volbak.pre-backup label).")
@click.option("--post-backup", metavar="CMD",
              help="Run after the backup, also when it failed (default: volbak.post-backup).")
@click.option("--wait", "lock_wait", type=float, default=0, metavar="SECONDS",
              help="Wait this long for another volbak run backing up the same volume or "
              "pruning the repository (default: fail at once, exit 9).")
@click.option("--dry-run", is_flag=True,
              help="Check the names and show what would be backed up and stopped; "
              "back up nothing.")
@source_option
@click.option("--no-cache", is_flag=True,
              help="Read every file, even those the file cache knows unchanged (dedup "
              "repositories, direct source); the cache is written afresh.")
@click.option("--helper-image", metavar="IMAGE",
              help="Image for the helper container (default: an empty image volbak imports).")
@encryption_options
@common
def backup(ctx: Ctx, volumes: tuple[str, ...], containers: tuple[str, ...],
           compression: str | None, sha256: bool, exclude: tuple[str, ...], stop: bool,
           stop_timeout: int | None, pre_backup: str | None, post_backup: str | None,
           lock_wait: float, dry_run: bool, no_cache: bool, helper_image: str | None,
           source: str, recipient: tuple[str, ...], recipients_file: tuple[str, ...],
           passphrase_file: str | None, ask_passphrase: bool) -> None:
    """Back up volumes into the repository.

    Every name is checked before anything starts. Each backup is reported as soon as
    it is stored, so a run that fails later still says what it stored.

    \b
    Examples:
      volbak backup pgdata
      volbak backup pgdata redis --repo /srv/backups
      volbak backup --container web --stop --stop-timeout 30
      volbak backup pgdata --pre-backup 'pg_dumpall -U postgres > /var/lib/postgresql/data/dump.sql'
      volbak backup pgdata --exclude cache --exclude '*.tmp'
      volbak backup pgdata -r age1... --json     # encrypted, one JSON line per backup
      volbak backup --container web --dry-run
    """
    from ..crypto.keys import recipients
    from ..ops.backup import BackupOptions
    from ..ops.orchestrate import Consistency, guarded_backup, plan_backup

    if not volumes and not containers:
        raise UsageError("nothing to back up", hint="name a VOLUME or pass --container NAME")
    if stop_timeout is not None and not stop:
        raise UsageError("--stop-timeout needs --stop",
                         hint="add --stop, or drop --stop-timeout")
    how = Consistency(stop, pre_backup, post_backup, lock_wait, stop_timeout)
    s = ctx.settings
    if not (recipient or recipients_file or passphrase_file or ask_passphrase):
        recipient = s.recipients
        recipients_file = (str(s.recipients_file),) if s.recipients_file else ()
        passphrase_file = str(s.passphrase_file) if s.passphrase_file else None
    if dry_run:
        plan, _, _ = plan_backup(ctx.engine(), volumes, containers, how)
        _report_plan(ctx, plan, ctx.repo_url)
        return
    opts = BackupOptions(compression or s.compress or "zstd",
                         recipients(recipient, recipients_file, passphrase_file, ask_passphrase),
                         helper_image, ctx.progress, source, exclude, cache=not no_cache,
                         sha256=sha256 or s.sha256)
    repo = ctx.repo(create=True)
    stored: list[Any] = []

    def on_stored(info: Any) -> None:
        stored.append(info)
        _report_backup(ctx, info)

    try:
        guarded_backup(ctx.engine(), repo, volumes, containers, opts, how, ctx.event,
                       on_stored=on_stored, on_warning=ctx.warn)
    except (VolbakError, KeyboardInterrupt):
        if stored:
            click.echo(f"volbak: stored before the failure: {', '.join(i.id for i in stored)} "
                       f"(in {repo.url})", err=True)
        raise
    if len(stored) > 1 or (stored and stored[0].manifest.set):
        sets = sorted({i.manifest.set for i in stored if i.manifest.set})
        ctx.say(f"{plural(len(stored), 'backup')} stored in {repo.url}"
                + (f"; set {', '.join(sets)}" if sets else ""))
    elif stored:
        ctx.say(f"stored in {repo.url}")


def plan_lines(plan: Any) -> list[str]:
    """What a --dry-run backup (or job) would do, one line each."""
    return [
        *(f"would back up volume {v}" for v in plan.volumes),
        *(f"would back up container {c} as one set: volumes {', '.join(vs)}"
          for c, vs in plan.sets.items()),
        *(f"would stop and restart container {c}" for c in plan.stop),
        *(f"container {c} uses the volumes and would keep running" for c in plan.in_use),
        *(f"would run pre/post-backup hooks in container {c}" for c in plan.hooks),
    ]


def _report_plan(ctx: Ctx, plan: Any, repo_url: str) -> None:
    ctx.emit({**plan.summary(), "repo": repo_url})
    for line in plan_lines(plan):
        ctx.say(line)
    ctx.say(f"into repository {repo_url} (dry run: nothing was done)")


def _report_backup(ctx: Ctx, info: Any) -> None:
    m = info.manifest
    secs = m.duration_seconds or 1e-9
    tar_size = m.tar.get("size", 0)
    obj = m.object or {}  # a dedup backup has no single object: both hashes null
    summary = {**info.summary(), "tar_size": tar_size, "seconds": secs,
               "sha256": obj.get("sha256"), "blake3": obj.get("blake3"),
               "repo": ctx.repo().url}
    cache = m.extra.get("file_cache")
    if cache:
        summary["file_cache"] = cache
    ctx.emit(summary)
    for warning in m.warnings:
        ctx.warn(f"{info.id}: {warning}")
    if cache and cache.get("save_error"):
        ctx.warn(f"{info.id}: the file cache was not saved ({cache['save_error']}); "
                 "the next backup reads every file")
    reused = ""
    if cache and cache.get("files_reused"):
        reused = (f" ({plural(cache['files_reused'], 'unchanged file')}, "
                  f"{fmt_size(cache.get('bytes_reused', 0))}, taken from the file cache)")
    ctx.say(f"{info.id}  {fmt_size(tar_size)} read{reused}, {fmt_size(info.size)} stored "
            f"({m.compression}{', encrypted' if m.encryption else ''}), "
            f"{plural(m.entries, 'entry', 'entries')}, {secs:.1f} s, "
            f"{fmt_rate(tar_size, secs)}")
