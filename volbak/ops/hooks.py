"""Hooks: commands run inside containers (``docker exec``) before and after a backup.

A container asks for hooks with labels, each a shell command run as ``sh -c CMD``::

    volbak.pre-backup=pg_dumpall -U postgres > /var/lib/postgresql/data/dump.sql
    volbak.post-backup=rm -f /var/lib/postgresql/data/dump.sql

or the caller gives commands explicitly (``--pre-backup`` / ``--post-backup``), which
replace the labels' commands for every container passed in.

Usage, with ``--stop`` (hooks outside, so the pre-hook runs while the service is up and
the post-hook after it was started again)::

    with hooks(containers, pre=args.pre, post=args.post) as results:
        with stopped(client, victims):
            run_backup()
    # results: one HookResult per hook that ran, for the JSON summary

Rules of ``hooks()``:

- pre-hooks run in the order of ``containers``; post-hooks in reverse order, for every
  container that was reached (like a stack unwinding);
- a failing pre-hook (non-zero exit, container not running, timeout) aborts: the body
  does not run, the post-hooks of the containers reached so far run, *including the
  container whose pre-hook failed* (a post-hook is cleanup: "unlock tables", "rm dump"),
  and the pre-hook's HookError (exit 10) is raised;
- post-hooks run whether the body succeeded or raised (Ctrl-C included); all of them
  run even if one fails. A post-hook failure after a successful body raises HookError
  (the backup itself is stored); after a failed body it is added as a note to the
  body's exception, which propagates unchanged.

Output: only the last ``tail_lines`` lines (at most 64 KiB) are kept, so a hook may
write a lot. Docker cannot kill an exec'd process: on ``timeout`` volbak stops waiting
and reports, but the command may still be running in the container.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..engine import containers as ctrs
from ..errors import EngineError, HookError, NotFoundError

PRE = "pre-backup"
POST = "post-backup"
LABELS = {PRE: "volbak.pre-backup", POST: "volbak.post-backup"}
TAIL_BYTES = 64 * 1024


@dataclasses.dataclass
class HookResult:
    container: str
    phase: str
    command: str
    exit_code: int
    output: str  # the last lines of stdout+stderr
    seconds: float

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tail(data: bytes, lines: int) -> str:
    text = data.decode("utf-8", "replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:]) if text else ""


def hook_commands(container: Any, pre: str | None = None,
                  post: str | None = None) -> tuple[str | None, str | None]:
    """The (pre, post) commands for a container: explicit ones win over its labels."""
    labels = getattr(container, "labels", None) or {}
    pre = pre if pre is not None else labels.get(LABELS[PRE])
    post = post if post is not None else labels.get(LABELS[POST])
    return (pre or None), (post or None)


def run_hook(container: Any, cmd: str, phase: str, *, timeout: float | None = None,
             tail_lines: int = 20) -> HookResult:
    """Run ``sh -c cmd`` in the running ``container``; HookError unless it exits 0."""
    name = ctrs.name(container)
    started = time.monotonic()

    def fail(what: str, output: str = "", exit_code: int | None = None) -> HookError:
        msg = f"{phase} hook in container '{name}' {what}"
        if output:
            msg += "; last output:\n" + "\n".join(f"  {line}" for line in output.splitlines())
        err = HookError(msg, hint=f"the command was: sh -c {cmd!r}")
        # for the JSON summary: which hook, and how it ended (None: it never exited)
        err.container = name  # type: ignore[attr-defined]
        err.phase = phase  # type: ignore[attr-defined]
        err.hook_exit_code = exit_code  # type: ignore[attr-defined]
        err.output = output  # type: ignore[attr-defined]
        return err

    try:
        exec_id = ctrs.exec_create(container, ["sh", "-c", cmd])
    except NotFoundError:
        raise fail("could not run: the container does not exist") from None
    except ctrs.NotRunning:
        raise fail("could not run: the container is not running") from None
    except EngineError as e:
        raise fail(f"could not run: {e}") from None

    buf = bytearray()
    problem: list[BaseException] = []

    def pump() -> None:
        try:
            for chunk in ctrs.exec_output(container, exec_id):
                buf.extend(chunk)
                if len(buf) > 2 * TAIL_BYTES:
                    del buf[:-TAIL_BYTES]
        except BaseException as e:  # reported by the waiting thread
            problem.append(e)

    if timeout is None:
        pump()
    else:
        t = threading.Thread(target=pump, name=f"hook-{name}", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise fail(f"did not finish within {timeout:g} s (it may still be running)",
                       _tail(bytes(buf[-TAIL_BYTES:]), tail_lines))
    if problem:
        if isinstance(problem[0], EngineError):
            raise fail(f"failed: {problem[0]}")
        raise problem[0]
    output = _tail(bytes(buf[-TAIL_BYTES:]), tail_lines)
    exit_code = None
    for _ in range(50):  # the stream can end a moment before the engine records the exit
        try:
            exit_code = ctrs.exec_exit_code(container, exec_id)
        except EngineError as e:
            raise fail(f"state unknown: {e}", output) from None
        if exit_code is not None:
            break
        time.sleep(0.1)
    if exit_code is None:
        raise fail("state unknown: the engine does not report an exit code", output)
    if exit_code != 0:
        raise fail(f"exited with code {exit_code}", output, exit_code)
    return HookResult(name, phase, cmd, exit_code, output, round(time.monotonic() - started, 3))


@contextlib.contextmanager
def hooks(
    containers: Iterable[Any],
    pre: str | None = None,
    post: str | None = None,
    *,
    timeout: float | None = None,
    on_event: Callable[[str], None] | None = None,
) -> Iterator[list[HookResult]]:
    """Run pre-hooks on entry and post-hooks on exit; see the module doc for the rules.

    Yields a list that collects a HookResult for every hook that succeeded.
    """
    plan = []
    seen: set[str] = set()
    for c in containers:
        if c.id in seen:
            continue
        seen.add(c.id)
        p, q = hook_commands(c, pre, post)
        if p or q:
            plan.append((c, p, q))
    results: list[HookResult] = []
    reached: list[tuple[Any, str | None]] = []

    def run(c: Any, cmd: str, phase: str) -> None:
        if on_event:
            on_event(f"running {phase} hook in {ctrs.name(c)}")
        results.append(run_hook(c, cmd, phase, timeout=timeout))

    def run_posts() -> list[BaseException]:
        errors: list[BaseException] = []
        for c, cmd in reversed(reached):
            if not cmd:
                continue
            try:
                run(c, cmd, POST)
            except HookError as e:
                errors.append(e)
        return errors

    try:
        for c, p, q in plan:
            reached.append((c, q))
            if p:
                run(c, p, PRE)
    except BaseException as pre_error:
        for e in run_posts():
            pre_error.add_note(f"also: {e}")
        raise

    try:
        yield results
    except BaseException as body_error:
        for e in run_posts():
            body_error.add_note(f"also: {e}")
        raise
    errors = run_posts()
    if errors:
        first = errors[0]
        for e in errors[1:]:
            first.add_note(f"also: {e}")
        if len(errors) > 1 and isinstance(first, HookError):
            first.message += f" (and {len(errors) - 1} more post-backup hook(s) failed)"
        raise first
