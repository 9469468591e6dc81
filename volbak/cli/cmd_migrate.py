"""`volbak migrate`: a thin command over volbak.migrate."""

from __future__ import annotations

import click

from ..errors import UsageError
from .context import Ctx, common, fmt_size


def _one_host(what: str, flags: dict[str, str | None]) -> str | None:
    given = {k: v for k, v in flags.items() if v}
    if len(set(given.values())) > 1:
        raise UsageError(f"the {what} engine is given twice: {', '.join(given)}",
                         hint=f"pass the {what} engine once")
    return next(iter(given.values()), None)


def _context(name: str | None, flag: str) -> str | None:
    if name and "://" in name:
        raise UsageError(f"{flag} takes a docker context name, not a URL ('{name}')",
                         hint=f"pass URLs with {flag.replace('-context', '')}")
    return name


@click.command()
@click.argument("volume", required=False)
@click.option("--container", "-c", metavar="NAME",
              help="Migrate every volume of this container and create a data-volume "
              "container with the same mount paths on the target.")
@click.option("--from", "from_host", metavar="URL|CONTEXT",
              help="Source engine (default like -H: DOCKER_HOST, then the current context).")
@click.option("--from-context", metavar="NAME", help="Source engine as a docker context name.")
@click.option("--to", "to_host", metavar="URL|CONTEXT",
              help="Target engine: unix://, tcp://, ssh://user@host[:port] or a context name.")
@click.option("--to-context", metavar="NAME", help="Target engine as a docker context name.")
@click.option("--as", "as_name", metavar="NAME",
              help="Name on the target: the volume, or with --container the new container "
              "(its volumes become NAME_<mount path>). Needed on the same engine.")
@click.option("--force", is_flag=True,
              help="Replace an existing target volume's contents, only once the whole copy "
              "has arrived on the target and been verified.")
@click.option("--stop", is_flag=True,
              help="Stop the running containers that use the source volume(s) during the "
              "transfer, and always start them again.")
@click.option("--stop-timeout", type=int, metavar="SECONDS",
              help="With --stop: seconds before a container is killed (docker stop -t).")
@click.option("--compress", "compression", default="none", show_default=True,
              type=click.Choice(["none", "gzip"]),
              help="Compression on the wire: gzip makes the source engine compress and the "
              "target engine decompress; helps on slow links with compressible data only.")
@click.option("--helper-image", metavar="IMAGE",
              help="Image for helper containers on both engines (default: an empty image "
              "volbak imports).")
@common(repo=False)
def migrate(ctx: Ctx, volume: str | None, container: str | None, from_host: str | None,
            from_context: str | None, to_host: str | None, to_context: str | None,
            as_name: str | None, force: bool, stop: bool, stop_timeout: int | None,
            compression: str, helper_image: str | None) -> None:
    """Copy a volume, or a container's volumes, straight from one engine to another.

    The data streams from the source engine through volbak into the target engine:
    no repository and no temporary file. The copy is verified against what was read
    from the source; an existing target is only replaced (--force) after that.

    \b
    Examples:
      volbak migrate pgdata --to ssh://admin@db2
      volbak migrate pgdata --from unix:///var/run/docker.sock --to tcp://10.0.0.5:2376
      volbak migrate pgdata --to ssh://admin@db2 --as pgdata-v2 --stop
      volbak migrate --container web --to-context prod
      volbak migrate pgdata --to unix:///var/run/docker.sock --as pgdata-clone   # clone
    """
    from ..ops.migrate import MigrateOptions, connect_engines, migrate_container, migrate_volume

    if bool(volume) == bool(container):
        raise UsageError("say what to migrate",
                         hint="name a VOLUME or pass --container NAME (not both)")
    source = _one_host("source", {"--from": from_host, "--from-context":
                                  _context(from_context, "--from-context"), "-H": ctx.host})
    target = _one_host("target", {"--to": to_host,
                                  "--to-context": _context(to_context, "--to-context")})
    if not target:
        raise UsageError("say where to migrate to",
                         hint="pass --to URL|CONTEXT or --to-context NAME")

    opts = MigrateOptions(force=force, stop=stop, compression=compression,
                          helper_image=helper_image, progress=ctx.progress,
                          stop_timeout=stop_timeout, on_event=ctx.event)
    src, dst = connect_engines(source, target)
    try:
        if volume:
            result = migrate_volume(src, dst, volume, opts, as_name)
        else:
            result = migrate_container(src, dst, container or "", opts, as_name)
    finally:
        src.close()
        dst.close()
    summary = result.summary()
    ctx.emit(summary)
    for v in result.volumes:
        ctx.say(f"migrated volume {v.volume} -> {v.target}{' (replaced)' if v.replaced else ''}"
                f": {fmt_size(v.tar_bytes)}, {v.entries} entries, {v.seconds:.1f} s, "
                f"{v.mb_per_s:.0f} MB/s; verified in {v.verify_seconds:.1f} s")
    if result.target_container:
        ctx.say(f"created data-volume container {result.target_container} on {result.target}")
    if len(result.volumes) > 1:
        ctx.say(f"total {fmt_size(summary['bytes'])}, {summary['entries']} entries, "
                f"{summary['seconds']:.1f} s")
