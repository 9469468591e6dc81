"""`volbak keygen`."""

from __future__ import annotations

import click


@click.command()
@click.option("-o", "--output", metavar="FILE", required=True,
              help="Identity file to create (mode 0600; never overwritten).")
def keygen(output: str) -> None:
    """Create an age identity file and print its public key (the recipient).

    \b
    Examples:
      volbak keygen -o backup.key
      volbak backup pgdata --recipient "$(grep -o 'age1.*' backup.key)"
    """
    from ..crypto import age

    ident = age.X25519Identity.generate()
    age.write_identity_file(output, ident)
    click.echo(str(ident.recipient()))
