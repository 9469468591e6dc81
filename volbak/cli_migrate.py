"""`volbak migrate` (placeholder until the migration module lands)."""

from __future__ import annotations

import click


@click.command()
def migrate() -> None:
    """Migrate volumes between Docker hosts."""
    raise click.UsageError("not implemented yet")
