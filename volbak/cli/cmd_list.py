"""`volbak list` and `volbak show`."""

from __future__ import annotations

import json

import click

from .context import Ctx, common, fmt_size


@click.command("list")
@click.argument("volume", required=False)
@common
def list_(ctx: Ctx, volume: str | None) -> None:
    """List complete backups, newest first.

    \b
    Examples:
      volbak list
      volbak list pgdata --json
    """
    infos = ctx.repo().list(volume)
    if ctx.json:
        click.echo(json.dumps([i.summary() for i in infos], indent=2))
        return
    if not infos:
        ctx.say(f"no backups in {ctx.repo().url}")
        return
    rows = [("ID", "CREATED", "SIZE", "COMPRESSION", "CONTAINER")]
    for i in infos:
        s = i.summary()
        rows.append((i.id, s["created"], fmt_size(s["size"]),
                     s["compression"] + (" +age" if s["encrypted"] else "")
                     + (" dedup" if s["format"] == "dedup" else ""),
                     s["container"] or ""))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for r in rows:
        ctx.say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@click.command()
@click.argument("backup_id", metavar="ID")
@common
def show(ctx: Ctx, backup_id: str) -> None:
    """Show one backup's manifest (ID, or a volume name for its newest backup).

    \b
    Examples:
      volbak show pgdata
      volbak show pgdata@20261129T070001Z --json
    """
    info = ctx.repo().get(backup_id)
    if ctx.json:
        click.echo(json.dumps({"id": info.id, **info.manifest.to_dict()}, indent=2,
                              sort_keys=True))
        return
    m = info.manifest
    ctx.say(f"id:          {info.id}")
    ctx.say(f"volume:      {m.volume_name} (driver {m.volume.get('driver')})")
    ctx.say(f"created:     {m.created}")
    ctx.say(f"format:      {m.repo_format}, read through {m.source}")
    if m.object:
        ctx.say(f"stored:      {m.object['name']}, {fmt_size(m.object['size'])}, "
                f"sha256 {m.object['sha256']}")
    elif m.storage:
        st = m.storage
        ctx.say(f"stored:      {fmt_size(info.size)} new in this backup: "
                f"{st.get('new_chunks')} of {st.get('chunk_count')} chunks "
                f"({fmt_size(st.get('new_bytes'))} before compression), {st.get('packs')} packs")
    else:
        ctx.say(f"stored:      {fmt_size(info.size)}")
    ctx.say(f"tar:         {fmt_size(m.tar.get('size'))}, {m.entries} entries")
    ctx.say(f"compression: {m.compression}")
    enc = m.encryption
    if enc:
        who = ", ".join(enc["recipients"]) + (" + passphrase" if enc["passphrase"] else "")
        ctx.say(f"encryption:  age, to {who.strip(', ')}")
    ctx.say(f"mount path:  {m.mount_path}")
    for c in m.containers:
        ctx.say(f"used by:     {c['name']} (image {c['image']}, network {c['network_mode']})")
