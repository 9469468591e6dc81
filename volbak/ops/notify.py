"""Alerts for unattended runs: a failure command and a webhook, both fed the JSON summary.

Usage::

    summary = {"job": "nightly", "status": "failed", "exit_code": 5, "error": "...", ...}
    if failed and job.on_failure:
        r = on_failure(job.on_failure, summary)
        if not r.ok:
            warn(r.detail)
    if job.webhook:
        r = post_webhook(job.webhook, summary)

Neither function raises for a failed alert: an alert that cannot be delivered must not
change the outcome (or exit code) of the backup it reports. Each returns a
NotifyResult saying whether delivery worked and, if not, why.

``on_failure(cmd, summary)`` runs ``sh -c cmd`` with the summary as JSON on stdin and
``VOLBAK_JOB``, ``VOLBAK_STATUS`` (and ``VOLBAK_EXIT_CODE`` when known) in its
environment; its stdout and stderr are captured (so they never mix with volbak's
``--json`` output) and their tail is in ``NotifyResult.output``.

``post_webhook(url, summary)`` POSTs the summary as ``application/json`` with a 10 s
timeout; any 2xx answer counts as delivered. Messages show the URL without its path
and query, which often carry a token.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .. import __version__ as _version

WEBHOOK_TIMEOUT = 10.0
COMMAND_TIMEOUT = 120.0
TAIL_CHARS = 4000


@dataclasses.dataclass
class NotifyResult:
    ok: bool
    detail: str  # a one-line description, for the log / JSON summary
    output: str = ""  # on_failure: the tail of the command's stdout+stderr


def _json(summary: dict[str, Any]) -> bytes:
    return json.dumps(summary, default=str, sort_keys=True).encode() + b"\n"


def on_failure(cmd: str, summary: dict[str, Any], *,
               timeout: float = COMMAND_TIMEOUT) -> NotifyResult:
    """Run the failure command; see the module doc."""
    env = dict(os.environ)
    env["VOLBAK_JOB"] = str(summary.get("job") or "")
    env["VOLBAK_STATUS"] = str(summary.get("status") or "failed")
    if summary.get("exit_code") is not None:
        env["VOLBAK_EXIT_CODE"] = str(summary["exit_code"])
    try:
        proc = subprocess.run(
            ["sh", "-c", cmd], input=_json(summary), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.output or b"").decode("utf-8", "replace")[-TAIL_CHARS:]
        return NotifyResult(False, f"on-failure command timed out after {timeout:g} s", out)
    except OSError as e:
        return NotifyResult(False, f"on-failure command could not run: {e}")
    out = proc.stdout.decode("utf-8", "replace")[-TAIL_CHARS:]
    if proc.returncode != 0:
        return NotifyResult(False, f"on-failure command exited with code {proc.returncode}", out)
    return NotifyResult(True, "on-failure command ran", out)


def redact_url(url: str) -> str:
    """scheme://host[:port]/… without user info, path or query (they may hold tokens)."""
    try:
        p = urllib.parse.urlsplit(url)
        host = p.hostname or "?"
        if p.port:
            host = f"{host}:{p.port}"
    except ValueError:
        return "<invalid URL>"
    return f"{p.scheme}://{host}/…" if p.path not in ("", "/") or p.query else f"{p.scheme}://{host}"


def post_webhook(url: str, summary: dict[str, Any], *,
                 timeout: float = WEBHOOK_TIMEOUT) -> NotifyResult:
    """POST the summary to ``url``; see the module doc."""
    shown = redact_url(url)
    if not url.lower().startswith(("http://", "https://")):
        return NotifyResult(False, f"webhook {shown}: only http:// and https:// URLs are supported")
    req = urllib.request.Request(
        url, data=_json(summary), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"volbak/{_version}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read(65536)
            status = resp.status
    except urllib.error.HTTPError as e:
        return NotifyResult(False, f"webhook {shown} answered HTTP {e.code} {e.reason}")
    except urllib.error.URLError as e:
        return NotifyResult(False, f"webhook {shown} unreachable: {e.reason}")
    except TimeoutError:
        return NotifyResult(False, f"webhook {shown} did not answer within {timeout:g} s")
    except (OSError, ValueError) as e:
        return NotifyResult(False, f"webhook {shown} failed: {e}")
    if not 200 <= status < 300:
        return NotifyResult(False, f"webhook {shown} answered HTTP {status}")
    return NotifyResult(True, f"webhook {shown} answered HTTP {status}")
