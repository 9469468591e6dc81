"""The volbak command line: thin commands over the library API, one module each
(``cmd_*.py``), sharing the context and common options of ``context.py``.

One top-level handler (``main``) turns every VolbakError into one line on stderr, an
optional ``hint:`` line, and the error's exit code; Ctrl-C exits 130, SIGTERM 143, after
the cleanup in ``finally`` blocks (helpers removed, containers restarted) has run.
"""

from __future__ import annotations

import signal
from typing import Any

import click

from .. import __version__
from ..errors import EXIT_CODES, Interrupted, Terminated, UsageError, VolbakError
from ..util import signals
from ..util.redact import redact
from .context import group_options

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
    if signals.hold(signum):  # cleanup is running (deferred): raised when it ends
        _held = None
        return
    if _in_import(frame):
        _held = signum
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        return
    _held = None
    if signum == signal.SIGTERM:
        _terminated = True
        raise Terminated()
    raise KeyboardInterrupt()


def _exit_codes_epilog() -> str:
    width = max(len(code) for code, _ in EXIT_CODES)
    return "\b\nExit codes:\n" + "\n".join(
        f"  {code.ljust(width)}  {text}" for code, text in EXIT_CODES)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=_exit_codes_epilog())
@click.version_option(__version__, prog_name="volbak")
@group_options
@click.pass_context
def cli(click_ctx: click.Context, **common: Any) -> None:
    """Back up, restore and migrate Docker volumes.

    The common options (-H, --repo, -o, --config, --job, --json, -q) go before or
    after the command name. A backup is named by its ID (VOLUME@STAMP), a container
    set ID (CONTAINER@STAMP), 'latest', NAME@latest, a volume or container name (its
    newest backup) or a unique prefix of these.

    \b
    Examples:
      volbak backup pgdata                     # one volume -> default local repository
      volbak backup --container web            # every volume of container 'web', one set
      volbak -H ssh://admin@db2 list
      volbak restore pgdata --to-volume pgdata2
      volbak restore web@20261129T070001Z --to-container web2
      volbak restore web@latest --to-container web2
    """
    click_ctx.obj = common


def _register() -> None:
    from . import (
        cmd_backup,
        cmd_cleanup,
        cmd_dump,
        cmd_forget,
        cmd_init,
        cmd_keygen,
        cmd_list,
        cmd_migrate,
        cmd_prune,
        cmd_recover,
        cmd_restore,
        cmd_run,
        cmd_verify,
    )

    for cmd in (cmd_backup.backup, cmd_list.list_, cmd_list.show, cmd_restore.restore,
                cmd_verify.verify, cmd_prune.prune, cmd_run.run, cmd_recover.recover,
                cmd_keygen.keygen, cmd_migrate.migrate, cmd_cleanup.cleanup, cmd_init.init,
                cmd_dump.dump, cmd_forget.forget):
        cli.add_command(cmd)


_register()


def main(argv: list[str] | None = None) -> int:
    global _held
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)
    old = {sig: signal.getsignal(sig) for sig in sigs}  # main() may run in-process (tests)
    for sig in sigs:
        signal.signal(sig, _on_signal)
    try:
        rc = _main(argv)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if _held is not None and rc == 0:  # held in a last import: the user still asked to stop
        term, _held = _held == signal.SIGTERM, None
        click.echo(f"volbak: {'terminated' if term else 'interrupted'}; cleanup done", err=True)
        return Terminated.exit_code if term else Interrupted.exit_code
    return rc


def _main(argv: list[str] | None) -> int:
    try:
        # volbak.entry blocks them until here; one that arrived meanwhile raises now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        cli.main(args=argv, prog_name="volbak", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        # click's own usage errors in volbak's one-line form, with the command's --help
        where = e.ctx.command_path if e.ctx else "volbak"
        click.echo(f"volbak: error: {redact(e.format_message())}", err=True)
        click.echo(f"hint: see '{where} --help'", err=True)
        return UsageError.exit_code
    except click.ClickException as e:
        click.echo(f"volbak: error: {redact(e.format_message())}", err=True)
        return e.exit_code
    except click.Abort:  # click turns KeyboardInterrupt (and so our SIGTERM) into Abort
        if _terminated:
            click.echo("volbak: terminated; cleanup done", err=True)
            return Terminated.exit_code
        click.echo("volbak: interrupted; cleanup done", err=True)
        return Interrupted.exit_code
    except VolbakError as e:
        click.echo(f"volbak: error: {redact(e.message)}", err=True)
        if e.hint:
            click.echo(f"hint: {redact(e.hint)}", err=True)
        return e.exit_code
    except Terminated:
        click.echo("volbak: terminated; cleanup done", err=True)
        return Terminated.exit_code
    except KeyboardInterrupt:
        click.echo("volbak: interrupted; cleanup done", err=True)
        return Interrupted.exit_code
    except BrokenPipeError:
        return 1
    return 0
