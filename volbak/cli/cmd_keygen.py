"""`volbak keygen`."""

from __future__ import annotations

import sys

import click


@click.command()
@click.option("-o", "--output", metavar="FILE",
              help="Identity file to create (mode 0600; never overwritten). Without it the "
              "identity goes to stdout, like age-keygen.")
def keygen(output: str | None) -> None:
    """Create an age identity and print its public key (the recipient).

    With -o the identity is written to FILE and the public key printed on stdout;
    without it the identity is printed on stdout and the public key on stderr
    ('Public key: age1...'), as age-keygen does.

    \b
    Examples:
      volbak keygen -o backup.key
      volbak keygen > backup.key         # same, through the shell (mind its umask)
      volbak backup pgdata --recipient "$(grep -o 'age1.*' backup.key)"
    """
    from ..crypto import age

    ident = age.X25519Identity.generate()
    if output is None:
        if sys.stdout.isatty():
            click.echo("volbak: warning: writing a secret key to the terminal; "
                       "use -o FILE to keep it in a file", err=True)
        click.echo(age.identity_file_text(ident), nl=False)
        click.echo(f"Public key: {ident.recipient()}", err=True)
        return
    age.write_identity_file(output, ident)
    click.echo(str(ident.recipient()))
