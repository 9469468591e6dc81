"""Last line of defence against leaking key material: whatever text volbak prints or
sends (errors, job summaries, webhook bodies) goes through ``redact`` first, so an age
secret key that slipped into a message is never shown, whatever code put it there."""

from __future__ import annotations

import re
from typing import Any

# Bech32 secret keys of age (and of its plugins), in either case.
_SECRET = re.compile(r"AGE-(?:PLUGIN-[A-Z0-9-]*-|SECRET-KEY-(?:PQ-)?)1[0-9A-Z]*", re.IGNORECASE)
REDACTED = "AGE-SECRET-KEY-[redacted]"


def redact(text: str) -> str:
    return _SECRET.sub(REDACTED, text)


def redact_obj(obj: Any) -> Any:
    """``redact`` applied to every string in a JSON-like structure."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v) for v in obj]
    return obj
