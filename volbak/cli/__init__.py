"""The volbak command line: thin commands over the library API.

One top-level handler turns every VolbakError into one line on stderr, an optional
``hint:`` line, and the error's exit code; Ctrl-C exits 130, SIGTERM 143, after the
cleanup in ``finally`` blocks (helpers removed, containers restarted) has run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..errors import Interrupted, UsageError, VolbakError

EXIT_CODES = """\b
Exit codes:
  0   success
  1   unexpected error
  2   bad usage: unknown flag, bad value, missing argument
  3   not found: volume, container, backup ID
  4   Docker engine unreachable or refused a request
  5   repository error: unreachable, not writable, disk full, plugin missing
  6   integrity: corrupt or truncated archive, missing manifest
  7   encryption: wrong key or passphrase, bad key file, tampered data
  8   restore/migrate target already exists
  9   another volbak run holds the lock
  10  a pre/post-backup hook failed
  130 interrupted (Ctrl-C); 143 terminated (SIGTERM)
"""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so every finally block runs."""


_terminated = False


_held: int | None = None  # a signal that landed inside an import, raised a bit later


def _in_import(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _on_signal(signum: int, frame: Any) -> None:
    """SIGINT -> KeyboardInterrupt, SIGTERM -> Terminated, raised in the main thread.

    Not inside the import machinery: raised in a module lock's weakref callback, the
    exception is printed as "Exception ignored" and lost (the run went on and exited 0).
    There the signal is held and raised again 50 ms later (SIGALRM)."""
    global _terminated, _held
    if signum == signal.SIGALRM:
        if _held is None:
            return
        signum = _held
    if _in_import(frame):
        _held = signum
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        return
    _held = None
    if signum == signal.SIGTERM:
        _terminated = True
        raise Terminated()
    raise KeyboardInterrupt()


def default_repo() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return str(Path(base) / "volbak" / "repo")


class Ctx:
    """What every command gets from the common options."""

    def __init__(self, host: str | None, repo: str | None, repo_options: tuple[str, ...],
                 as_json: bool, quiet: bool) -> None:
        self.host = host
        self.repo_url = repo or os.environ.get("VOLBAK_REPO") or default_repo()
        self.repo_options = _parse_options(repo_options)
        self.json = as_json
        self.quiet = quiet or as_json
        self._engine: Any = None
        self._repo: Any = None
        self.recovered: list[str] = []
        self.recovery: Any = None

    @property
    def progress(self) -> bool:
        from ..util.progress import on_terminal

        return not self.quiet and on_terminal()

    def engine(self) -> Any:
        if self._engine is None:
            from ..engine.client import connect

            self._engine = connect(self.host)
        return self._engine

    def repo(self) -> Any:
        if self._repo is None:
            from ..backend import open_backend
            from ..repository import Repository

            self._repo = Repository(open_backend(self.repo_url, self.repo_options))
        return self._repo

    def event(self, text: str) -> None:
        """Progress notes (stops, restarts, hooks, waiting) on stderr."""
        if not self.quiet:
            click.echo(f"volbak: {text}", err=True)

    def recover(self, engines: tuple[str, ...] = ()) -> None:
        """Finish or undo what dead volbak processes left (see ops.recovery)."""
        from ..engine.client import connect
        from ..ops.recovery import recover_all

        self.recovery = recover_all(
            connect, on_event=self.event, engines=engines,
            on_error=lambda msg: click.echo(f"volbak: warning: {msg}", err=True))
        self.recovered = self.recovery.started

    def say(self, text: str) -> None:
        if not self.quiet:
            click.echo(text)

    def emit(self, obj: Any) -> None:
        if self.json:
            click.echo(json.dumps(obj, sort_keys=True, default=str))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        if self._repo is not None:
            self._repo.backend.close()


def _parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise UsageError(f"bad -o/--repo-option '{p}'", hint="use -o KEY=VALUE")
        out[key.strip()] = value
    return out


def common(f: Callable[..., Any]) -> Callable[..., Any]:
    """-H, --repo, -o, --json, -q on every command, placed after the command name."""

    @click.option("-H", "--host", metavar="URL|CONTEXT",
                  help="Docker engine: unix://, tcp://, ssh://user@host or a docker context "
                  "name. Default: DOCKER_HOST, then the current docker context.")
    @click.option("--repo", metavar="PATH|URL",
                  help=f"Repository (env VOLBAK_REPO). Default: {default_repo()}")
    @click.option("-o", "--repo-option", "repo_options", multiple=True, metavar="KEY=VALUE",
                  help="Backend option, e.g. -o endpoint_url=http://127.0.0.1:9000 for s3://.")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
    @click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
    @functools.wraps(f)
    def wrapper(host: str | None, repo: str | None, repo_options: tuple[str, ...],
                as_json: bool, quiet: bool, **kw: Any) -> Any:
        ctx = Ctx(host, repo, repo_options, as_json, quiet)
        try:
            ctx.recover()
            return f(ctx, **kw)
        finally:
            ctx.close()

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="volbak")
def cli() -> None:
    """Back up, restore and migrate Docker volumes.

    \b
    Examples:
      volbak backup pgdata                     # one volume -> default local repository
      volbak backup --container web            # every volume of container 'web'
      volbak list
      volbak restore pgdata --to-volume pgdata2
      volbak restore web@20261129T070001Z --to-container web2
    """


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


# -- backup ---------------------------------------------------------------------------------

def encryption_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--passphrase", "ask_passphrase", is_flag=True,
                     help="Encrypt with a passphrase asked on the terminal.")(f)
    f = click.option("--passphrase-file", metavar="FILE",
                     help="Encrypt with the passphrase in FILE (env VOLBAK_PASSPHRASE_FILE).")(f)
    f = click.option("--recipients-file", "-R", multiple=True, metavar="FILE",
                     help="Encrypt to the age recipients listed in FILE.")(f)
    f = click.option("--recipient", "-r", multiple=True, metavar="age1...",
                     help="Encrypt to this age public key (repeatable). No secret needed.")(f)
    return f


@cli.command()
@click.argument("volumes", nargs=-1, metavar="[VOLUME]...")
@click.option("--container", "-c", "containers", multiple=True, metavar="NAME",
              help="Back up every volume of this container (repeatable).")
@click.option("--compress", "compression", default="zstd", show_default=True,
              type=click.Choice(["zstd", "gzip", "none"]), help="Compression of the archive.")
@click.option("--stop", is_flag=True,
              help="Stop the running containers that use the volumes, start them again "
              "afterwards (containers labelled volbak.stop=true are stopped anyway).")
@click.option("--pre-backup", metavar="CMD",
              help="Run 'sh -c CMD' in each running container using the volumes before "
              "the backup (default: their volbak.pre-backup label).")
@click.option("--post-backup", metavar="CMD",
              help="Run after the backup, also when it failed (default: volbak.post-backup).")
@click.option("--wait", "lock_wait", type=float, default=0, metavar="SECONDS",
              help="Wait this long for another volbak run holding the same volume or "
              "repository (default: fail at once, exit 9).")
@click.option("--helper-image", metavar="IMAGE",
              help="Image for the helper container (default: an empty image volbak imports).")
@encryption_options
@common
def backup(ctx: Ctx, volumes: tuple[str, ...], containers: tuple[str, ...], compression: str,
           stop: bool, pre_backup: str | None, post_backup: str | None, lock_wait: float,
           helper_image: str | None, recipient: tuple[str, ...],
           recipients_file: tuple[str, ...], passphrase_file: str | None,
           ask_passphrase: bool) -> None:
    """Back up volumes into the repository.

    \b
    Examples:
      volbak backup pgdata
      volbak backup pgdata redis --repo /srv/backups
      volbak backup --container web --stop
      volbak backup pgdata --pre-backup 'pg_dumpall -U postgres > /var/lib/postgresql/data/dump.sql'
      volbak backup pgdata -r age1... --json     # encrypted, one JSON line per backup
    """
    from ..crypto.keys import recipients
    from ..ops.backup import BackupOptions
    from ..ops.orchestrate import Consistency, guarded_backup

    if not volumes and not containers:
        raise UsageError("nothing to back up", hint="name a VOLUME or pass --container NAME")
    opts = BackupOptions(compression, recipients(recipient, recipients_file, passphrase_file,
                                                 ask_passphrase), helper_image, ctx.progress)
    how = Consistency(stop, pre_backup, post_backup, lock_wait)
    for info in guarded_backup(ctx.engine(), ctx.repo(), volumes, containers, opts, how,
                               ctx.event):
        _report_backup(ctx, info)


def _report_backup(ctx: Ctx, info: Any) -> None:
    m = info.manifest
    secs = m["duration_seconds"] or 1e-9
    summary = {**info.summary(), "tar_size": m["tar"]["size"], "seconds": secs,
               "sha256": m["object"]["sha256"], "repo": ctx.repo().url}
    ctx.emit(summary)
    ctx.say(f"{info.id}  {_fmt_size(m['tar']['size'])} read, {_fmt_size(info.size)} stored "
            f"({m['compression']}{', encrypted' if m.get('encryption') else ''}), "
            f"{m['tar']['entries']} entries, {secs:.1f} s, "
            f"{m['tar']['size'] / secs / 1e6:.0f} MB/s")


# -- list / show ----------------------------------------------------------------------------

@cli.command("list")
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
        rows.append((i.id, s["created"], _fmt_size(s["size"]),
                     s["compression"] + (" +age" if s["encrypted"] else ""),
                     s["container"] or ""))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for r in rows:
        ctx.say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@cli.command()
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
        click.echo(json.dumps({"id": info.id, **info.manifest}, indent=2, sort_keys=True))
        return
    m = info.manifest
    ctx.say(f"id:          {info.id}")
    ctx.say(f"volume:      {m['volume']['name']} (driver {m['volume']['driver']})")
    ctx.say(f"created:     {m['created']}")
    ctx.say(f"stored:      {m['object']['name']}, {_fmt_size(m['object']['size'])}, "
            f"sha256 {m['object']['sha256']}")
    ctx.say(f"tar:         {_fmt_size(m['tar']['size'])}, {m['tar']['entries']} entries")
    ctx.say(f"compression: {m['compression']}")
    enc = m.get("encryption")
    if enc:
        who = ", ".join(enc["recipients"]) + (" + passphrase" if enc["passphrase"] else "")
        ctx.say(f"encryption:  age, to {who.strip(', ')}")
    ctx.say(f"mount path:  {m.get('mount_path')}")
    for c in m.get("containers") or []:
        ctx.say(f"used by:     {c['name']} (image {c['image']}, network {c['network_mode']})")


# -- restore --------------------------------------------------------------------------------

def decryption_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--passphrase-file", metavar="FILE",
                     help="Passphrase in FILE (env VOLBAK_PASSPHRASE_FILE); without it, "
                     "a passphrase backup asks on the terminal.")(f)
    f = click.option("--identity", "-i", multiple=True, metavar="FILE",
                     help="age identity file (from 'volbak keygen' or age-keygen).")(f)
    return f


@cli.command()
@click.argument("backup_id", metavar="ID")
@click.option("--to-volume", metavar="NAME", help="Restore into this (new) volume.")
@click.option("--to-container", metavar="NAME",
              help="Create this data-volume container with the backup's mount paths.")
@click.option("--force", is_flag=True,
              help="Replace an existing volume's contents, only after the whole backup "
              "was read and verified.")
@click.option("--helper-image", metavar="IMAGE", help="Image for helper containers.")
@decryption_options
@common
def restore(ctx: Ctx, backup_id: str, to_volume: str | None, to_container: str | None,
            force: bool, helper_image: str | None, identity: tuple[str, ...],
            passphrase_file: str | None) -> None:
    """Restore a backup into a new volume or a new data-volume container.

    ID is a backup ID from 'volbak list', or a volume name for its newest backup.

    \b
    Examples:
      volbak restore pgdata --to-volume pgdata2
      volbak restore pgdata@20261129T070001Z --to-volume pgdata --force
      volbak restore web@20261129T070001Z --to-container web2
      volbak restore pgdata --to-volume x -i backup.key
    """
    from ..crypto.keys import identities
    from ..ops.restore import RestoreOptions, restore_to_container, restore_to_volume

    if bool(to_volume) == bool(to_container):
        raise UsageError("say where to restore",
                         hint="pass exactly one of --to-volume NAME or --to-container NAME")
    info = ctx.repo().get(backup_id)
    opts = RestoreOptions(identities(identity, passphrase_file, info.manifest), force,
                          helper_image, ctx.progress)
    engine = ctx.engine()
    if to_volume:
        results = [restore_to_volume(engine, ctx.repo(), info, to_volume, opts)]
    else:
        results = restore_to_container(engine, ctx.repo(), info, to_container or "", opts)
    for r in results:
        ctx.emit(r.summary())
        ctx.say(f"restored {r.backup} -> volume {r.volume}"
                f"{' (replaced)' if r.replaced else ''}: {_fmt_size(r.tar_bytes)}, "
                f"{r.entries} entries, {r.seconds:.1f} s")
    if to_container:
        ctx.say(f"created data-volume container {to_container}")


# -- verify ---------------------------------------------------------------------------------

@cli.command()
@click.argument("refs", nargs=-1, metavar="[ID|VOLUME]...")
@click.option("--all", "all_", is_flag=True, help="Verify every backup in the repository.")
@decryption_options
@common
def verify(ctx: Ctx, refs: tuple[str, ...], all_: bool, identity: tuple[str, ...],
           passphrase_file: str | None) -> None:
    """Read backups back and check them; exit non-zero if any fails.

    With the key (or for unencrypted backups) the stored hash, decryption,
    decompression and the whole tar stream are checked. Without the key of an
    encrypted backup only the stored hash is checked, and the report says so.
    A VOLUME means all of its backups.

    \b
    Examples:
      volbak verify --all
      volbak verify pgdata -i backup.key --json
    """
    from ..crypto.keys import identities
    from ..ops.verify import verify_backup

    repo = ctx.repo()
    if all_ == bool(refs):
        raise UsageError("say what to verify", hint="pass backup IDs or volume names, or --all")
    infos = repo.list() if all_ else [
        i for r in refs for i in ([repo.get(r)] if "@" in r else repo.list(r) or [repo.get(r)])]
    keys = identities(identity, passphrase_file)
    failed = None
    for info in infos:
        res = verify_backup(repo, info, keys)
        ctx.emit(res.summary())
        if res.ok:
            what = "hash only (no key given)" if res.level == "hash" else (
                f"full, {res.entries} entries")
            ctx.say(f"ok      {res.id}  {what}")
        else:
            failed = failed or res
            click.echo(f"FAILED  {res.id}  {res.error}", err=True)
    if failed:
        raise _VerifyFailed(failed)


class _VerifyFailed(VolbakError):
    def __init__(self, res: Any) -> None:
        super().__init__(f"verification failed for {res.id} (and possibly others above)",
                         hint="restore from a backup that verifies; see 'volbak list'")
        self.exit_code = res.exit_code


# -- unattended: prune, run, recover ----------------------------------------------------------

@cli.command()
@click.option("--keep-last", type=int, default=0, metavar="N", help="Keep the N newest.")
@click.option("--keep-hourly", type=int, default=0, metavar="N", help="Newest of N hours.")
@click.option("--keep-daily", type=int, default=0, metavar="N", help="Newest of N days.")
@click.option("--keep-weekly", type=int, default=0, metavar="N", help="Newest of N ISO weeks.")
@click.option("--keep-monthly", type=int, default=0, metavar="N", help="Newest of N months.")
@click.option("--keep-yearly", type=int, default=0, metavar="N", help="Newest of N years.")
@click.option("--volume", metavar="NAME", help="Only this volume's backups.")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@click.option("--wait", "lock_wait", type=float, default=0, metavar="SECONDS",
              help="Wait for another run holding the repository.")
@common
def prune(ctx: Ctx, keep_last: int, keep_hourly: int, keep_daily: int, keep_weekly: int,
          keep_monthly: int, keep_yearly: int, volume: str | None, dry_run: bool,
          lock_wait: float) -> None:
    """Delete old backups, per volume, with restic's 'forget' rules.

    Buckets are UTC hours, days, ISO weeks, months and years; in each, the newest
    backup is kept. The newest backup of a volume is never deleted, and a prune
    that is interrupted never leaves a listed backup without its archive.

    \b
    Examples:
      volbak prune --keep-daily 7 --keep-weekly 4 --keep-monthly 12
      volbak prune --keep-last 3 --volume pgdata --dry-run
    """
    from ..ops import lock
    from ..ops.retention import Policy
    from ..ops.retention import prune as do_prune

    policy = Policy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)
    repo = ctx.repo()
    with lock.acquire([lock.repo_key(repo.url)], lock_wait, on_wait=lambda k, h: ctx.event(
            f"waiting for the lock on {k}")):
        decisions = do_prune(repo, policy, volume, dry_run)
    for d in decisions:
        ctx.emit({**d.summary(), "dry_run": dry_run})
        verb = "keep  " if d.keep else ("would delete" if dry_run else "delete")
        ctx.say(f"{verb}  {d.info.id}  {', '.join(d.reasons)}".rstrip())


@cli.command()
@click.option("--config", "config_path", required=True, metavar="FILE",
              help="Job file (TOML); see the README for its keys.")
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option("--wait", "lock_wait", type=float, default=0, metavar="SECONDS",
              help="Wait for another run holding the same volume or repository.")
@click.option("--json", "as_json", is_flag=True, help="One JSON summary per job on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-H", "--host", metavar="URL|CONTEXT", help="Docker engine (as for backup).")
@click.option("--on-failure", metavar="CMD",
              help="Run 'sh -c CMD' when a job fails, its JSON summary on stdin (overrides "
              "the jobs' on_failure).")
@click.option("--webhook", metavar="URL",
              help="POST a failed job's JSON summary to URL (overrides the jobs' webhook).")
def run(config_path: str, jobs: tuple[str, ...], lock_wait: float, as_json: bool, quiet: bool,
        host: str | None, on_failure: str | None, webhook: str | None) -> None:
    """Run the named jobs of a config file (all of them by default), as cron would.

    Each job backs up its volumes (with its encryption, compression, --stop and hooks),
    then applies its retention. A failing job runs its on_failure command and webhook,
    and the run goes on with the next job; the exit code is that of the first failure.

    \b
    Examples:
      volbak run --config /etc/volbak.toml
      volbak run --config volbak.toml nightly --json --wait 600
    """
    from ..config import load
    from ..ops.orchestrate import run_job
    from ..repository import Repository

    ctx = Ctx(host, None, (), as_json, quiet)
    try:
        ctx.recover()
        config = load(config_path)

        def open_repo(job: Any) -> Repository:
            from ..backend import open_backend

            return Repository(open_backend(job.repo, job.repo_options))

        def make_recipients(job: Any) -> list[Any]:
            from ..crypto.keys import recipients

            return recipients(job.recipients,
                              [str(job.recipients_file)] if job.recipients_file else [],
                              str(job.passphrase_file) if job.passphrase_file else None)

        first_failure = None
        for job in config.select(jobs):
            if on_failure or webhook:
                job = dataclasses.replace(job, on_failure=on_failure or job.on_failure,
                                          webhook=webhook or job.webhook)
            report = run_job(job, ctx.engine, open_repo, make_recipients, lock_wait,
                             ctx.progress, ctx.event)
            ctx.emit(report.summary())
            if report.status == "ok":
                ctx.say(f"job {job.name}: {len(report.backups)} backup(s), "
                        f"{len(report.pruned)} pruned, {report.seconds:.1f} s")
            else:
                click.echo(f"volbak: job {job.name} failed: {report.error}", err=True)
                if report.hint:
                    click.echo(f"hint: {report.hint}", err=True)
                for note in report.notify:
                    click.echo(f"volbak: job {job.name}: {note}", err=True)
                first_failure = first_failure or report
        if first_failure:
            raise _JobFailed(first_failure)
    finally:
        ctx.close()


class _JobFailed(VolbakError):
    def __init__(self, report: Any) -> None:
        super().__init__(f"job {report.job} failed (see above)",
                         hint="fix the cause named above and run the job again")
        self.exit_code = report.exit_code or 1


@cli.command()
@common
def recover(ctx: Ctx) -> None:
    """Finish what volbak processes that died (kill -9, reboot) left: start the
    containers they stopped, complete their volume replacements, remove their
    unfinished targets, helpers and staging volumes. Every volbak command does this
    first; this command also sweeps the engine given with -H (or the default one).

    \b
    Examples:
      volbak recover
    """
    from ..engine.client import resolve_host
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


# -- keys -----------------------------------------------------------------------------------

@cli.command()
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


def _register_commands() -> None:
    """Commands that live in their own modules."""
    from .cmd_migrate import migrate

    cli.add_command(migrate)


def main(argv: list[str] | None = None) -> int:
    global _held
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
        signal.signal(sig, _on_signal)
    try:
        rc = _main(argv)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if _held is not None and rc == 0:  # held in a last import: the user still asked to stop
        term, _held = _held == signal.SIGTERM, None
        click.echo(f"volbak: {'terminated' if term else 'interrupted'}; cleanup done", err=True)
        return 143 if term else Interrupted.exit_code
    return rc


def _main(argv: list[str] | None) -> int:
    try:
        # volbak.entry blocks them until here; one that arrived meanwhile raises now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        cli.main(args=argv, prog_name="volbak", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:  # click turns KeyboardInterrupt (and so our SIGTERM) into Abort
        if _terminated:
            click.echo("volbak: terminated; cleanup done", err=True)
            return 143
        click.echo("volbak: interrupted; cleanup done", err=True)
        return Interrupted.exit_code
    except VolbakError as e:
        click.echo(f"volbak: error: {e.message}", err=True)
        if e.hint:
            click.echo(f"hint: {e.hint}", err=True)
        return e.exit_code
    except Terminated:
        click.echo("volbak: terminated; cleanup done", err=True)
        return 143
    except KeyboardInterrupt:
        click.echo("volbak: interrupted; cleanup done", err=True)
        return Interrupted.exit_code
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    # `python -m volbak.cli`: run the package's copy of this module, where the
    # commands register; registering here too would import cli.py twice.
    from volbak.cli import main as package_main

    sys.exit(package_main())
else:
    _register_commands()
