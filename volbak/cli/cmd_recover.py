"""`volbak recover`."""

from __future__ import annotations

import click

from ..errors import VolbakError
from .context import Ctx, common


@click.command()
@common(engine=False, repo=False)
def recover(ctx: Ctx) -> None:
    """Start the containers that a volbak process which died (kill -9, reboot) had
    stopped for a backup. Every volbak command does this first; this command only
    does that. The engines are the ones recorded in the journal.

    \b
    Examples:
      volbak recover
    """
    from ..ops.stopper import pending

    ctx.emit({"started": ctx.recovered, "live_runs": sum(1 for p in pending() if p["live"])})
    for name in ctx.recovered:
        ctx.say(f"started {name}")
    left = [p for p in pending() if not p["live"]]
    if left:
        raise VolbakError(f"{len(left)} journal entr{'y' if len(left) == 1 else 'ies'} could "
                          "not be recovered (see the warnings above)",
                          hint="check that their engines are reachable, then run "
                          "'volbak recover' again")
    if not ctx.recovered:
        ctx.say("nothing to recover")
