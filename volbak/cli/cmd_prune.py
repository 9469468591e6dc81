"""`volbak prune`."""

from __future__ import annotations

import click

from ..errors import UsageError
from .context import Ctx, common, plural


def _keep(kind: str, text: str):
    return click.option(f"--keep-{kind}", kind, type=click.IntRange(min=0), default=None,
                        metavar="N", help=text)


@click.command()
@click.argument("volumes", nargs=-1, metavar="[VOLUME]...")
@_keep("last", "Keep the N newest. '--keep-last 0' alone, with VOLUMEs named, keeps none "
       "of theirs (like 'volbak forget VOLUME').")
@_keep("hourly", "Newest of N hours.")
@_keep("daily", "Newest of N days.")
@_keep("weekly", "Newest of N ISO weeks.")
@_keep("monthly", "Newest of N months.")
@_keep("yearly", "Newest of N years.")
@click.option("--volume", "volume_opts", multiple=True, metavar="NAME", hidden=True,
              help="Same as the VOLUME argument (older form).")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@click.option("--wait", "lock_wait", type=float, default=0, metavar="SECONDS",
              help="Wait for other runs using the repository (backups, prune).")
@click.option("--rebuild-index", "rebuild", is_flag=True,
              help="Dedup repositories: first rebuild the index from the packs' own "
              "trailers (after index files were lost, truncated or damaged). Needs the "
              "host key file only. Alone, it rebuilds and collects garbage.")
@common(engine=False)
def prune(ctx: Ctx, volumes: tuple[str, ...], last: int | None, hourly: int | None,
          daily: int | None, weekly: int | None, monthly: int | None, yearly: int | None,
          volume_opts: tuple[str, ...], dry_run: bool, lock_wait: float,
          rebuild: bool) -> None:
    """Delete old backups, per volume, with restic's 'forget' rules.

    Buckets are UTC hours, days, ISO weeks, months and years; in each, the newest
    backup is kept. The newest backup of a volume is never deleted (except with an
    explicit '--keep-last 0' for named volumes), and a prune that is interrupted never
    leaves a listed backup without its archive. Without VOLUME, every volume.

    \b
    Examples:
      volbak prune --keep-daily 7 --keep-weekly 4 --keep-monthly 12
      volbak prune pgdata --keep-last 3 --dry-run
      volbak prune oldvolume --keep-last 0         # every backup of a deleted volume
      volbak prune --rebuild-index                 # the index was lost or damaged
    """
    from ..ops import lock
    from ..ops.forget import expand_sets, forget
    from ..ops.retention import Decision, Policy
    from ..ops.retention import prune as do_prune

    names = list(dict.fromkeys([*volumes, *volume_opts]))
    counts = {"last": last, "hourly": hourly, "daily": daily, "weekly": weekly,
              "monthly": monthly, "yearly": yearly}
    keep_none = last == 0 and not any(counts[k] for k in counts if k != "last")
    if keep_none and not names:
        raise UsageError("'--keep-last 0' without a VOLUME would delete every backup",
                         hint="name the volumes whose backups should all go "
                         "(volbak prune VOLUME --keep-last 0), or use 'volbak forget'")
    policy = Policy(**{k: v or 0 for k, v in counts.items()})
    only_rebuild = rebuild and not names and all(v is None for v in counts.values())
    if rebuild and dry_run:
        raise UsageError("--rebuild-index writes an index; it has no --dry-run")
    if not keep_none and not only_rebuild:
        policy.check()  # a usage error comes before any look at the repository
    repo = ctx.repo()
    from ..crypto.keys import _passphrase_file

    pfile = _passphrase_file(str(ctx.settings.passphrase_file or "")
                             ) if repo.format == "dedup" else None
    if pfile:
        # A passphrase repository's host keys can come from the passphrase instead of a
        # host key file (used only when this host has no key file).
        from ..crypto.age import ScryptIdentity, read_passphrase_file

        repo.derive_keys.append(ScryptIdentity(read_passphrase_file(pfile)))
    if rebuild and repo.format != "dedup":
        raise UsageError(f"{repo.url} is not a dedup repository: it has no index to rebuild")
    decisions: list[Decision] = []
    with lock.acquire([lock.repo_key(repo.url)], lock_wait, on_wait=lambda k, h: ctx.event(
            f"waiting for the lock on {k}")):
        if rebuild:
            from ..repository.dedup.gc import rebuild_index

            name, n, bad = rebuild_index(repo.dedup())
            ctx.emit({"rebuilt_index": name, "packs": n, "unreadable_packs": bad})
            ctx.say(f"rebuilt the index from {plural(n, 'pack')}: {name}")
            for b in bad:
                ctx.warn(f"pack {b} has no readable trailer; it was left out of the index "
                         "(backups using it are damaged; garbage collection plans it)")
        if keep_none:
            chosen = expand_sets(repo, [i for v in names for i in repo.find(v)])
            decisions = [Decision(i, False, []) for i in forget(repo, chosen, dry_run)]
        elif not only_rebuild:
            for v in names or [None]:
                decisions += do_prune(repo, policy, v, dry_run)
        from ..ops.cleanup import collect

        garbage = collect(repo, dry_run=dry_run)  # what killed runs left, older than 24 h
        gc = None if dry_run else repo.collect_garbage()  # dedup repositories only
    width = len("would delete")
    for d in decisions:
        ctx.emit({**d.summary(), "dry_run": dry_run})
        verb = "keep" if d.keep else ("would delete" if dry_run else "delete")
        ctx.say(f"{verb.ljust(width)}  {d.info.id}  {', '.join(d.reasons)}".rstrip())
    gone = sum(1 for d in decisions if not d.keep)
    ctx.say(f"{plural(gone, 'backup')} {'would be ' if dry_run else ''}deleted, "
            f"{len(decisions) - gone} kept, in {repo.url}")
    if garbage.found:
        ctx.emit({"garbage": garbage.summary()})
        ctx.say(f"{'would remove' if dry_run else 'removed'} {len(garbage.orphans)} orphan "
                f"archive(s) and {len(garbage.incomplete)} unfinished write(s) older than 24 h")
    if gc is not None:
        ctx.emit({"gc": gc.summary()})
        ctx.say(f"garbage collection: {gc.deleted_packs} packs deleted "
                f"({gc.deleted_bytes} bytes), {gc.planned} planned for deletion after the "
                f"grace period, {gc.repacked} repacked, {gc.deferred_plans} plan(s) waiting")
