"""`volbak recover`."""

from __future__ import annotations

import contextlib

import click

from ..errors import VolbakError
from .context import Ctx, common


@click.command()
@common(engine=False, repo=False)
def recover(ctx: Ctx) -> None:
    """Finish what volbak processes that died (kill -9, reboot) left: start the
    containers they stopped, complete their volume replacements, remove their
    unfinished targets, helpers and staging volumes. Every volbak command does this
    first; this command also sweeps the engine given with -H (or the default one).

    \b
    Examples:
      volbak recover
    """
    from ..engine import resolve_host
    from ..ops.journal import entries
    from ..ops.recovery import pending_entries

    rep = ctx.recovery  # what the run before every command did; now also sweep -H
    with contextlib.suppress(VolbakError):
        ctx.recover((resolve_host(ctx.host)[0],))
        rep = rep.merge(ctx.recovery)
    ctx.emit({**rep.summary(), "live_runs": sum(1 for p in entries() if p["live"])})
    for name in rep.started:
        ctx.say(f"started {name}")
    for name in rep.replaced:
        ctx.say(f"completed the replacement of volume {name}")
    for name in rep.removed_targets:
        ctx.say(f"removed unfinished target {name}")
    for name in rep.removed_staging:
        ctx.say(f"removed staging volume {name}")
    if rep.removed_helpers:
        ctx.say(f"removed {rep.removed_helpers} helper container(s)")
    left = pending_entries()
    if left:
        raise VolbakError(f"{len(left)} journal entr{'y' if len(left) == 1 else 'ies'} could "
                          "not be recovered (see the warnings above)",
                          hint="check that their engines are reachable, then run "
                          "'volbak recover' again")
    if not rep.anything:
        ctx.say("nothing to recover")
