"""`volbak verify`."""

from __future__ import annotations

from typing import Any

import click

from ..errors import UsageError, VerifyFailed
from .context import Ctx, common, decryption_options


@click.command()
@click.argument("refs", nargs=-1, metavar="[ID|VOLUME|CONTAINER]...")
@click.option("--all", "all_", is_flag=True,
              help="Verify every backup in the repository (the default without arguments).")
@decryption_options
@common
def verify(ctx: Ctx, refs: tuple[str, ...], all_: bool, identity: tuple[str, ...],
           passphrase_file: str | None) -> None:
    """Read backups back and check them; exit non-zero if any fails.

    With the key (or for unencrypted backups) the stored hash, decryption,
    decompression and the whole tar stream are checked. Without the key of an
    encrypted backup only the stored hash is checked, and the report says so.
    A VOLUME or CONTAINER means all of its backups; no argument means every backup.

    \b
    Examples:
      volbak verify
      volbak verify pgdata -i backup.key --json
      volbak verify latest
    """
    from ..crypto.keys import identities
    from ..ops.verify import verify_backup
    from .context import key_files

    repo = ctx.repo()
    if all_ and refs:
        raise UsageError("--all and backup IDs exclude each other",
                         hint="pass backup IDs or names, or --all (or nothing) for every backup")
    infos = repo.list() if not refs else list({
        i.id: i for r in refs
        for i in ([repo.get(r)] if "@" in r or r == "latest" else repo.find(r))}.values())
    identity, passphrase_file = key_files(ctx, identity, passphrase_file)
    keys = identities(identity, passphrase_file)
    failed = None
    ctx.say(f"repository {repo.url}: verifying {len(infos)} backup(s)")
    for info in infos:
        res = verify_backup(repo, info, keys)
        ctx.emit(res.summary())
        if res.ok:
            what = {"hash": "hash only (no key given)",
                    "structure": "structure only: chunk list, index, packs (no key given)",
                    }.get(res.level, f"full, {res.entries} entries")
            ctx.say(f"ok      {res.id}  {what}")
        else:
            failed = failed or res
            click.echo(f"FAILED  {res.id}  {res.error}", err=True)
    if all_:
        _report_damage(ctx, repo)
    if failed:
        err = VerifyFailed(f"verification failed for {failed.id} (and possibly others above)",
                           hint="restore from a backup that verifies; see 'volbak list'")
        err.exit_code = failed.exit_code
        raise err


def _report_damage(ctx: Ctx, repo: Any) -> None:
    """Damaged manifests fail verify; garbage is reported (``volbak cleanup`` removes it)."""
    from ..ops.cleanup import collect

    for name, message in repo.damaged:
        click.echo(f"FAILED  {name}  {message}", err=True)
    if repo.damaged:
        raise VerifyFailed(f"{len(repo.damaged)} damaged manifest(s) in {repo.url}",
                           hint="the backups they describe cannot be restored by ID; "
                           "remove the damaged files or restore another backup")
    garbage = collect(repo, dry_run=True)
    young = len(garbage.orphans_kept)
    if garbage.found or young:
        ctx.emit({"garbage": garbage.summary()})
        ctx.say(f"note    {len(garbage.orphans)} orphan archive(s) and "
                f"{len(garbage.incomplete)} unfinished write(s) older than 24 h, {young} "
                "younger (maybe live runs); 'volbak cleanup' removes the old ones")
