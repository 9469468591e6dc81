"""`volbak backup`."""

from __future__ import annotations

from typing import Any

import click

from ..errors import UsageError
from .context import Ctx, common, encryption_options, fmt_size, source_option


@click.command()
@click.argument("volumes", nargs=-1, metavar="[VOLUME]...")
@click.option("--container", "-c", "containers", multiple=True, metavar="NAME",
              help="Back up every volume of this container (repeatable).")
@click.option("--compress", "compression", default="zstd", show_default=True,
              type=click.Choice(["zstd", "gzip", "none"]), help="Compression of the archive.")
@click.option("--stop", is_flag=True,
              help="Stop the running containers that use the volumes, start them again "
              "afterwards (containers labelled volbak.stop=true are stopped anyway).")
@click.option("--pre-backup", metavar="CMD",
              help="Run 'sh -c CMD' in each running container using the volumes before "
              "the backup (default: their volbak.pre-backup label).")
@click.option("--post-backup", metavar="CMD",
              help="Run after the backup, also when it failed (default: volbak.post-backup).")
@click.option("--wait", "lock_wait", type=float, default=0, metavar="SECONDS",
              help="Wait this long for another volbak run holding the same volume or "
              "repository (default: fail at once, exit 9).")
@source_option
@click.option("--helper-image", metavar="IMAGE",
              help="Image for the helper container (default: an empty image volbak imports).")
@encryption_options
@common
def backup(ctx: Ctx, volumes: tuple[str, ...], containers: tuple[str, ...], compression: str,
           stop: bool, pre_backup: str | None, post_backup: str | None, lock_wait: float,
           helper_image: str | None, source: str, recipient: tuple[str, ...],
           recipients_file: tuple[str, ...], passphrase_file: str | None,
           ask_passphrase: bool) -> None:
    """Back up volumes into the repository.

    \b
    Examples:
      volbak backup pgdata
      volbak backup pgdata redis --repo /srv/backups
      volbak backup --container web --stop
      volbak backup pgdata --pre-backup 'pg_dumpall -U postgres > /var/lib/postgresql/data/dump.sql'
      volbak backup pgdata -r age1... --json     # encrypted, one JSON line per backup
    """
    from ..crypto.keys import recipients
    from ..ops.backup import BackupOptions
    from ..ops.orchestrate import Consistency, guarded_backup

    if not volumes and not containers:
        raise UsageError("nothing to back up", hint="name a VOLUME or pass --container NAME")
    opts = BackupOptions(compression, recipients(recipient, recipients_file, passphrase_file,
                                                 ask_passphrase), helper_image, ctx.progress,
                         source)
    how = Consistency(stop, pre_backup, post_backup, lock_wait)
    for info in guarded_backup(ctx.engine(), ctx.repo(), volumes, containers, opts, how,
                               ctx.event):
        _report_backup(ctx, info)


def _report_backup(ctx: Ctx, info: Any) -> None:
    m = info.manifest
    secs = m.duration_seconds or 1e-9
    tar_size = m.tar.get("size", 0)
    summary = {**info.summary(), "tar_size": tar_size, "seconds": secs,
               "sha256": (m.object or {}).get("sha256"), "repo": ctx.repo().url}
    ctx.emit(summary)
    for warning in m.warnings:
        ctx.warn(f"{info.id}: {warning}")
    ctx.say(f"{info.id}  {fmt_size(tar_size)} read, {fmt_size(info.size)} stored "
            f"({m.compression}{', encrypted' if m.encryption else ''}), "
            f"{m.entries} entries, {secs:.1f} s, "
            f"{tar_size / secs / 1e6:.0f} MB/s")
