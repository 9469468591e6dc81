"""`volbak prune`."""

from __future__ import annotations

import click

from .context import Ctx, common


@click.command()
@click.option("--keep-last", type=int, default=0, metavar="N", help="Keep the N newest.")
@click.option("--keep-hourly", type=int, default=0, metavar="N", help="Newest of N hours.")
@click.option("--keep-daily", type=int, default=0, metavar="N", help="Newest of N days.")
@click.option("--keep-weekly", type=int, default=0, metavar="N", help="Newest of N ISO weeks.")
@click.option("--keep-monthly", type=int, default=0, metavar="N", help="Newest of N months.")
@click.option("--keep-yearly", type=int, default=0, metavar="N", help="Newest of N years.")
@click.option("--volume", metavar="NAME", help="Only this volume's backups.")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@click.option("--wait", "lock_wait", type=float, default=0, metavar="SECONDS",
              help="Wait for another run holding the repository.")
@common
def prune(ctx: Ctx, keep_last: int, keep_hourly: int, keep_daily: int, keep_weekly: int,
          keep_monthly: int, keep_yearly: int, volume: str | None, dry_run: bool,
          lock_wait: float) -> None:
    """Delete old backups, per volume, with restic's 'forget' rules.

    Buckets are UTC hours, days, ISO weeks, months and years; in each, the newest
    backup is kept. The newest backup of a volume is never deleted, and a prune
    that is interrupted never leaves a listed backup without its archive.

    \b
    Examples:
      volbak prune --keep-daily 7 --keep-weekly 4 --keep-monthly 12
      volbak prune --keep-last 3 --volume pgdata --dry-run
    """
    from ..ops import lock
    from ..ops.retention import Policy
    from ..ops.retention import prune as do_prune

    policy = Policy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)
    repo = ctx.repo()
    with lock.acquire([lock.repo_key(repo.url)], lock_wait, on_wait=lambda k, h: ctx.event(
            f"waiting for the lock on {k}")):
        decisions = do_prune(repo, policy, volume, dry_run)
        from ..ops.cleanup import collect

        garbage = collect(repo, dry_run=dry_run)  # what killed runs left, older than 24 h
        gc = None if dry_run else repo.collect_garbage()  # dedup repositories only
    for d in decisions:
        ctx.emit({**d.summary(), "dry_run": dry_run})
        verb = "keep  " if d.keep else ("would delete" if dry_run else "delete")
        ctx.say(f"{verb}  {d.info.id}  {', '.join(d.reasons)}".rstrip())
    if garbage.found:
        ctx.emit({"garbage": garbage.summary()})
        ctx.say(f"{'would remove' if dry_run else 'removed'} {len(garbage.orphans)} orphan "
                f"archive(s) and {len(garbage.incomplete)} unfinished write(s) older than 24 h")
    if gc is not None:
        ctx.emit({"gc": gc.summary()})
        ctx.say(f"garbage collection: {gc.deleted_packs} packs deleted "
                f"({gc.deleted_bytes} bytes), {gc.planned} planned for deletion after the "
                f"grace period, {gc.repacked} repacked, {gc.deferred_plans} plan(s) waiting")
