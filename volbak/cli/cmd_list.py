"""`volbak list` and `volbak show`."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from ..errors import VolbakError
from .context import Ctx, common, fmt_size, plural

_ANON = re.compile(r"^[0-9a-f]{64}$")


def short_id(backup_id: str) -> str:
    """Anonymous volumes are named by 64 hex digits: show 12, as docker does (the short
    form is accepted everywhere an ID is)."""
    volume, _, stamp = backup_id.rpartition("@")
    return f"{volume[:12]}@{stamp}" if _ANON.match(volume) else backup_id


def _existing_volumes(ctx: Ctx, volumes: set[str]) -> dict[str, bool] | None:
    """Which volumes still exist, when the engine answers; None when it does not."""
    from ..engine import volume_exists

    try:
        engine = ctx.engine()
        return {v: volume_exists(engine, v) for v in sorted(volumes)}
    except VolbakError:
        return None


@click.command("list")
@click.argument("ref", required=False, metavar="[VOLUME|CONTAINER|ID]")
@common
def list_(ctx: Ctx, ref: str | None) -> None:
    """List complete backups, newest first.

    A VOLUME lists its backups, a CONTAINER the sets made with --container. When the
    engine answers, backups of volumes that no longer exist there are marked 'gone'.
    With -q only the IDs are printed, one per line (like 'docker volume ls -q').

    \b
    Examples:
      volbak list
      volbak list pgdata --json
      volbak list -q | head -1
      volbak -H ssh://admin@db2 list
    """
    repo = ctx.repo()
    infos = repo.find(ref) if ref else repo.list()
    if ctx.quiet_flag and not ctx.json:
        for i in infos:
            click.echo(i.id)
        return
    exists = _existing_volumes(ctx, {i.volume for i in infos}) if infos else None
    if ctx.json:
        click.echo(json.dumps([
            {**i.summary(), "volume_exists": None if exists is None else exists[i.volume]}
            for i in infos], indent=2))
        return
    ctx.say(f"repository {repo.url}")
    for name, msg in repo.damaged:
        click.echo(f"volbak: warning: damaged manifest {name}: {msg}", err=True)
    if not infos:
        ctx.say("no backups" + (f" of '{ref}'" if ref else ""))
        return
    rows = [("ID", "CREATED", "SIZE", "COMPRESSION", "CONTAINER", "VOLUME")]
    for i in infos:
        s = i.summary()
        state = "" if exists is None else ("" if exists[i.volume] else "gone")
        rows.append((short_id(i.id), s["created"], fmt_size(s["size"]),
                     s["compression"] + (" +age" if s["encrypted"] else "")
                     + (" dedup" if s["format"] == "dedup" else ""),
                     s["container"] or "", state))
    if exists is None:
        rows = [r[:-1] for r in rows]
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for r in rows:
        ctx.say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    gone = sorted({i.volume for i in infos if exists and not exists[i.volume]})
    if gone:
        ctx.say(f"{plural(len(gone), 'volume')} no longer on {ctx.engine().url}: "
                f"{', '.join(short_id(v + '@')[:-1] for v in gone)} "
                "(forget their backups with 'volbak forget VOLUME')")


@click.command()
@click.argument("backup_id", metavar="ID")
@common(engine=False)
def show(ctx: Ctx, backup_id: str) -> None:
    """Show one backup's manifest.

    ID is a backup ID, a set ID, 'latest', NAME@latest, a volume or container name
    (its newest backup) or a unique prefix of these.

    \b
    Examples:
      volbak show pgdata
      volbak show latest
      volbak show pgdata@20261129T070001Z --json
    """
    info = ctx.repo().get(backup_id)
    if ctx.json:
        click.echo(json.dumps({"id": info.id, **info.manifest.to_dict()}, indent=2,
                              sort_keys=True))
        return
    m = info.manifest
    say: Any = ctx.say
    say(f"id:          {info.id}")
    if m.set:
        say(f"set:         {m.set} (container {m.container})")
    say(f"repository:  {ctx.repo().url}")
    say(f"volume:      {m.volume_name} (driver {m.volume.get('driver')})")
    say(f"created:     {m.created}")
    say(f"format:      {m.repo_format}, read through {m.source}")
    if m.object:
        say(f"stored:      {m.object['name']}, {fmt_size(m.object['size'])}")
        for name in ("sha256", "blake3"):
            if name in m.object:
                say(f"             {name} {m.object[name]}")
    elif m.storage:
        st = m.storage
        say(f"stored:      {fmt_size(info.size)} new in this backup: "
            f"{st.get('new_chunks')} of {st.get('chunk_count')} chunks "
            f"({fmt_size(st.get('new_bytes'))} before compression), {st.get('packs')} packs")
    else:
        say(f"stored:      {fmt_size(info.size)}")
    say(f"tar:         {fmt_size(m.tar.get('size'))}, {plural(m.entries, 'entry', 'entries')}")
    say(f"compression: {m.compression}")
    enc = m.encryption
    if enc:
        who = ", ".join(enc["recipients"]) + (" + passphrase" if enc["passphrase"] else "")
        say(f"encryption:  age, to {who.strip(', ')}")
    if m.extra.get("exclude"):
        say(f"excluded:    {', '.join(m.extra['exclude'])}")
    say(f"mount path:  {m.mount_path}")
    for c in m.containers:
        say(f"used by:     {c['name']} (image {c['image']}, network {c['network_mode']})")
