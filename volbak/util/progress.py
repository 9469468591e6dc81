"""Progress bars on a terminal, silence elsewhere (cron, --json, -q)."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """Decimal units (kB, MB), the same the summaries print (``96.6MB/s`` here,
    ``96.6 MB/s`` there)."""

    def __init__(self, desc: str, total: int | None, enabled: bool) -> None:
        self._bar = (
            tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1000,
                 file=sys.stderr, leave=False, dynamic_ncols=True)
            if enabled
            else None
        )

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def on_terminal() -> bool:
    return sys.stderr.isatty()
