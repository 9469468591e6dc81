"""`volbak forget`."""

from __future__ import annotations

import click

from ..errors import UsageError
from .context import Ctx, common, plural


@click.command()
@click.argument("refs", nargs=-1, metavar="ID|VOLUME|CONTAINER...")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@click.option("--wait", "lock_wait", type=float, default=0, metavar="SECONDS",
              help="Wait for other runs using the repository (backups, prune).")
@common(engine=False)
def forget(ctx: Ctx, refs: tuple[str, ...], dry_run: bool, lock_wait: float) -> None:
    """Delete the given backups from the repository.

    An ID (or set ID, or unique prefix) deletes that backup; a backup made with
    --container is deleted with its whole set. A VOLUME or CONTAINER name deletes every
    backup of it: the way to drop the backups of a volume that no longer exists
    ('volbak list' marks those 'gone'). Use --dry-run first.

    \b
    Examples:
      volbak forget pgdata@20261129T070001Z
      volbak forget oldvolume --dry-run
      volbak forget web@20261129T070001Z      # a container set
    """
    from ..ops import lock
    from ..ops.forget import expand_sets
    from ..ops.forget import forget as do_forget

    if not refs:
        raise UsageError("say which backups to forget",
                         hint="pass backup IDs, volume or container names (see 'volbak list')")
    repo = ctx.repo()
    with lock.acquire([lock.repo_key(repo.url)], lock_wait, on_wait=lambda k, h: ctx.event(
            f"waiting for the lock on {k}")):
        chosen = expand_sets(repo, [
            i for r in refs
            for i in ([repo.get(r)] if "@" in r or r == "latest" else repo.find(r))])

        def deleted(info) -> None:
            ctx.emit({"id": info.id, "deleted": True, "dry_run": False})
            ctx.say(f"deleted       {info.id}")

        do_forget(repo, chosen, dry_run, on_delete=deleted)
    if dry_run:
        for info in chosen:
            ctx.emit({"id": info.id, "deleted": False, "dry_run": True})
            ctx.say(f"would delete  {info.id}")
    ctx.say(f"{plural(len(chosen), 'backup')} {'would be ' if dry_run else ''}"
            f"deleted from {repo.url}")
