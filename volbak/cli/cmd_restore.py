"""`volbak restore`."""

from __future__ import annotations

import click

from ..errors import UsageError
from .context import Ctx, common, decryption_options, fmt_size, source_option


@click.command()
@click.argument("backup_id", metavar="ID")
@click.option("--to-volume", metavar="NAME", help="Restore into this (new) volume.")
@click.option("--to-container", metavar="NAME",
              help="Create this data-volume container with the backup's mount paths.")
@click.option("--force", is_flag=True,
              help="Replace an existing volume's contents, only after the whole backup "
              "was read and verified.")
@source_option
@click.option("--helper-image", metavar="IMAGE", help="Image for helper containers.")
@decryption_options
@common
def restore(ctx: Ctx, backup_id: str, to_volume: str | None, to_container: str | None,
            force: bool, helper_image: str | None, source: str, identity: tuple[str, ...],
            passphrase_file: str | None) -> None:
    """Restore a backup into a new volume or a new data-volume container.

    ID is a backup ID from 'volbak list', or a volume name for its newest backup.

    \b
    Examples:
      volbak restore pgdata --to-volume pgdata2
      volbak restore pgdata@20261129T070001Z --to-volume pgdata --force
      volbak restore web@20261129T070001Z --to-container web2
      volbak restore pgdata --to-volume x -i backup.key
    """
    from ..crypto.keys import identities
    from ..ops.restore import RestoreOptions, restore_to_container, restore_to_volume

    if bool(to_volume) == bool(to_container):
        raise UsageError("say where to restore",
                         hint="pass exactly one of --to-volume NAME or --to-container NAME")
    info = ctx.repo().get(backup_id)
    opts = RestoreOptions(identities(identity, passphrase_file, info.manifest.encryption), force,
                          helper_image, ctx.progress, source, ctx.warn)
    engine = ctx.engine()
    if to_volume:
        results = [restore_to_volume(engine, ctx.repo(), info, to_volume, opts)]
    else:
        results = restore_to_container(engine, ctx.repo(), info, to_container or "", opts)
    for r in results:
        ctx.emit(r.summary())
        ctx.say(f"restored {r.backup} -> volume {r.volume}"
                f"{' (replaced)' if r.replaced else ''}: {fmt_size(r.tar_bytes)}, "
                f"{r.entries} entries, {r.seconds:.1f} s")
    if to_container:
        ctx.say(f"created data-volume container {to_container}")
