"""`volbak cleanup`."""

from __future__ import annotations

import datetime as dt

import click

from .context import Ctx, common


@click.command()
@click.option("--older-than", "hours", type=float, default=24.0, show_default=True,
              metavar="HOURS",
              help="Only what is older than this: a backup running elsewhere right now "
              "also has an unfinished upload and an archive without a manifest.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@common
def cleanup(ctx: Ctx, hours: float, dry_run: bool) -> None:
    """Remove what killed or crashed runs left: archives without a manifest, temp
    files, incomplete multipart uploads (S3). Helpers, staging volumes and half-made
    targets on the engine are removed by recovery, which every command runs first.

    \b
    Examples:
      volbak cleanup --dry-run
      volbak cleanup --older-than 48 --repo s3://bucket/backups
    """
    from ..ops.cleanup import collect

    garbage = collect(ctx.repo(), dt.timedelta(hours=hours), dry_run=dry_run)
    ctx.emit(garbage.summary())
    verb = "would remove" if dry_run else "removed"
    for name in garbage.orphans:
        ctx.say(f"{verb}  orphan archive {name}")
    for name in garbage.incomplete:
        ctx.say(f"{verb}  unfinished write {name}")
    for name in garbage.orphans_kept:
        ctx.say(f"kept          {name} (younger than {hours:g} h: maybe a live backup)")
    for name in garbage.orphans_unaged:
        ctx.say(f"kept          {name} (age unknown: not a stamped archive name, or the "
                "storage plugin reports no object times)")
    if not garbage.found and not garbage.orphans_kept and not garbage.orphans_unaged:
        ctx.say(f"no garbage in {ctx.repo().url}")
