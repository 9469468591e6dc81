"""`volbak dump`."""

from __future__ import annotations

import sys

import click

from ..errors import UsageError
from .context import Ctx, common, decryption_options


@click.command()
@click.argument("backup_id", metavar="ID")
@click.option("--output", "-O", metavar="FILE", help="Write to FILE instead of stdout.")
@decryption_options
@common
def dump(ctx: Ctx, backup_id: str, output: str | None, identity: tuple[str, ...],
         passphrase_file: str | None) -> None:
    """Write a backup as a plain tar stream (both repository formats).

    Everything is checked as it is read; on damage the command fails (exit 6) after
    having written part of the stream, so check the exit code before using the output.

    \b
    Examples:
      volbak dump pgdata > pgdata.tar
      volbak dump pgdata@20261129T070001Z -i key.txt | tar -t
    """
    from ..crypto.keys import identities
    from ..util.host import WRITE_MAX

    info = ctx.repo().get(backup_id)
    if output is None and sys.stdout.isatty():
        raise UsageError("refusing to write a tar stream to a terminal",
                         hint="redirect stdout (volbak dump ID > x.tar) or pass -O FILE")
    keys = identities(identity, passphrase_file, info.manifest.encryption)
    with ctx.repo().open_backup(info, keys) as reader:  # a wrong key fails before output
        out = open(output, "wb") if output else click.get_binary_stream("stdout")  # noqa: SIM115
        try:
            total = 0
            while data := reader.read(WRITE_MAX):  # big writes are slow (util.host)
                out.write(data)
                total += len(data)
            out.flush()
        finally:
            if output:
                out.close()
    if output:
        ctx.say(f"wrote {info.id} to {output}: {total} bytes")
