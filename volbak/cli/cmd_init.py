"""`volbak init`."""

from __future__ import annotations

import click

from ..errors import UsageError
from .context import Ctx, common, encryption_options


@click.command()
@click.option("--format", "fmt", type=click.Choice(["dedup", "archive"]), default="dedup",
              show_default=True,
              help="dedup: chunks stored once across backups, packs the backup host cannot "
              "read. archive: one compressed (and age-encrypted) file per backup, "
              "restorable with plain tools.")
@click.option("--host-key", "host_key", is_flag=True,
              help="Do not create anything: write this host's key file for an existing "
              "encrypted dedup repository, unlocked with --identity or --passphrase-file.")
@click.option("--identity", "-i", multiple=True, metavar="FILE",
              help="With --host-key: the age identity file that unlocks the repository.")
@encryption_options
@common
def init(ctx: Ctx, fmt: str, host_key: bool, identity: tuple[str, ...],
         recipient: tuple[str, ...], recipients_file: tuple[str, ...],
         passphrase_file: str | None, ask_passphrase: bool) -> None:
    """Create a repository (in an empty location) and choose its format and encryption.

    For an encrypted dedup repository this writes the host key file (chunk-id key,
    metadata key and the public recipients: enough to back up and prune, never to
    read a backup) to $VOLBAK_HOST_KEY, or else to
    <state dir>/host-keys/<repository id>.json (state dir: $VOLBAK_STATE_DIR,
    /var/lib/volbak as root, ~/.local/state/volbak otherwise). The age identity or
    passphrase is needed only to restore, verify in full, or dump.

    \b
    Examples:
      volbak init -r age1...                       # dedup, encrypted to a public key
      volbak init --passphrase-file /root/pass
      volbak init --format archive --repo /srv/backups
      volbak init --host-key -i key.txt            # on a second backup host
    """
    from ..crypto.keys import identities, recipients

    repo = ctx.repo(create=not host_key)  # init makes the repository; --host-key needs one
    if host_key:
        from ..repository.dedup.keys import write_host_key

        store = repo.dedup()
        if not store.config.encrypted:
            raise UsageError(f"repository {repo.url} is not encrypted: it needs no host key")
        keys, _ = store.read_keys(identities(identity, passphrase_file,
                                             store.config.encryption))
        path = write_host_key(store.config, keys, repo.url)
        ctx.emit({"repo": repo.url, "id": store.config.id, "host_key": str(path)})
        ctx.say(f"wrote the host key file {path} for repository {repo.url}")
        return
    if identity:
        raise UsageError("--identity is only for --host-key",
                         hint="init encrypts to public keys: use -r/-R or --passphrase-file")
    recips = recipients(recipient, recipients_file, passphrase_file, ask_passphrase)
    if fmt == "archive" and recips:
        raise UsageError("an archive repository takes its encryption per backup",
                         hint="drop -r/-R/--passphrase-file here and pass them to "
                         "'volbak backup'")
    res = repo.init(fmt, recips)
    ctx.emit({"repo": repo.url, **res})
    enc = " (encrypted)" if res.get("encrypted") else ""
    ctx.say(f"created {res['format']} repository {res['id']}{enc} at {repo.url}")
    if res.get("host_key"):
        ctx.say(f"host key file: {res['host_key']} (keep it on backup hosts only; it "
                "cannot decrypt backups, but it lets its holder add to and prune the "
                "repository)")
