"""`volbak verify`."""

from __future__ import annotations

import click

from ..errors import UsageError, VerifyFailed
from .context import Ctx, common, decryption_options


@click.command()
@click.argument("refs", nargs=-1, metavar="[ID|VOLUME]...")
@click.option("--all", "all_", is_flag=True, help="Verify every backup in the repository.")
@decryption_options
@common
def verify(ctx: Ctx, refs: tuple[str, ...], all_: bool, identity: tuple[str, ...],
           passphrase_file: str | None) -> None:
    """Read backups back and check them; exit non-zero if any fails.

    With the key (or for unencrypted backups) the stored hash, decryption,
    decompression and the whole tar stream are checked. Without the key of an
    encrypted backup only the stored hash is checked, and the report says so.
    A VOLUME means all of its backups.

    \b
    Examples:
      volbak verify --all
      volbak verify pgdata -i backup.key --json
    """
    from ..crypto.keys import identities
    from ..ops.verify import verify_backup

    repo = ctx.repo()
    if all_ == bool(refs):
        raise UsageError("say what to verify", hint="pass backup IDs or volume names, or --all")
    infos = repo.list() if all_ else [
        i for r in refs for i in ([repo.get(r)] if "@" in r else repo.list(r) or [repo.get(r)])]
    keys = identities(identity, passphrase_file)
    failed = None
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
    if failed:
        err = VerifyFailed(f"verification failed for {failed.id} (and possibly others above)",
                           hint="restore from a backup that verifies; see 'volbak list'")
        err.exit_code = failed.exit_code
        raise err
