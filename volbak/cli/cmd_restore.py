"""`volbak restore`."""

from __future__ import annotations

import click

from ..errors import UsageError
from .context import Ctx, common, decryption_options, fmt_size, plural, source_option


@click.command()
@click.argument("backup_id", metavar="ID")
@click.option("--to-volume", metavar="NAME", help="Restore into this (new) volume.")
@click.option("--to-container", metavar="NAME",
              help="Create this data-volume container with the backup's mount paths.")
@click.option("--force", is_flag=True,
              help="Replace an existing volume's contents, only after the whole backup "
              "was read and verified (containers that mount it keep it).")
@click.option("--stop", is_flag=True,
              help="With --force: stop the running containers that use the volume while "
              "its contents are replaced, and start them again (as backup --stop).")
@click.option("--stop-timeout", type=click.IntRange(min=0), metavar="SECONDS",
              help="With --stop: seconds before a container is killed (docker stop -t).")
@source_option
@click.option("--helper-image", metavar="IMAGE", help="Image for helper containers.")
@decryption_options
@common
def restore(ctx: Ctx, backup_id: str, to_volume: str | None, to_container: str | None,
            force: bool, stop: bool, stop_timeout: int | None, helper_image: str | None,
            source: str, identity: tuple[str, ...], passphrase_file: str | None) -> None:
    """Restore a backup into a new volume or a new data-volume container.

    ID is a backup ID from 'volbak list', a container set ID, 'latest', NAME@latest,
    a volume or container name (its newest backup) or a unique prefix of these.

    \b
    Examples:
      volbak restore pgdata --to-volume pgdata2
      volbak restore pgdata@20261129T070001Z --to-volume pgdata --force --stop
      volbak restore web@20261129T070001Z --to-container web2
      volbak restore dbdata@latest --to-container dbdata2
      volbak restore pgdata --to-volume x -i backup.key
    """
    from ..crypto.keys import identities
    from ..ops.restore import RestoreOptions, restore_to_container, restore_to_volume
    from .context import key_files

    if bool(to_volume) == bool(to_container):
        raise UsageError("say where to restore",
                         hint="pass exactly one of --to-volume NAME or --to-container NAME")
    if stop and not force:
        raise UsageError("--stop is for replacing a volume in use, with --force",
                         hint="add --force, or restore to a new volume without --stop")
    if stop_timeout is not None and not stop:
        raise UsageError("--stop-timeout needs --stop",
                         hint="add --stop, or drop --stop-timeout")
    info = ctx.repo().get(backup_id, one_volume=bool(to_volume))
    identity, passphrase_file = key_files(ctx, identity, passphrase_file)
    opts = RestoreOptions(identities(identity, passphrase_file, info.manifest.encryption), force,
                          helper_image, ctx.progress, source, ctx.warn, stop=stop,
                          stop_timeout=stop_timeout, on_event=ctx.event)
    engine = ctx.engine()
    if to_volume:
        results = [restore_to_volume(engine, ctx.repo(), info, to_volume, opts)]
    else:
        results = restore_to_container(engine, ctx.repo(), info, to_container or "", opts)
    for r in results:
        ctx.emit({**r.summary(), "repo": ctx.repo().url})
        ctx.say(f"restored {r.backup} -> volume {r.volume}"
                f"{' (replaced)' if r.replaced else ''}: {fmt_size(r.tar_bytes)}, "
                f"{plural(r.entries, 'entry', 'entries')}, {r.seconds:.1f} s")
    ctx.say(f"from repository {ctx.repo().url}")
    if to_container:
        ctx.say(f"created data-volume container {to_container}")
