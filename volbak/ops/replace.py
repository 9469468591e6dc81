"""Replacing an existing volume's contents, shared by restore and migrate.

Existing data is replaced only from a staging volume that already holds the complete,
verified new contents; until then the target is not touched.
"""

from __future__ import annotations

from collections.abc import Callable

from ..engine import (
    MANAGED_LABEL,
    Engine,
    clear_volume,
    copy_volume,
    create_volume,
    delete_volume,
    inspect_volume,
    remove_volume,
    staging_name,
)
from ..errors import EngineError


def fill_staging(engine: Engine, fill: Callable[[str], None], labels: dict[str, str]) -> str:
    """Create a staging volume and ``fill(name)`` it; on any failure it is removed again.
    Returns the staging volume's name (labelled volbak.managed=staging)."""
    staging = staging_name()
    create_volume(engine, staging, {MANAGED_LABEL: "staging", **labels})
    try:
        fill(staging)
    except BaseException:
        remove_volume(engine, staging)
        raise
    return staging


def replace_from_staging(engine: Engine, staging: str, target: str, empty: bool,
                         helper_image: str | None = None, flag: str = "--to-volume",
                         what: str = "restored", rerun: str = "rerun the restore",
                         in_use: bool = False) -> None:
    """Replace ``target``'s contents with the (complete, verified) staging volume's, then
    remove the staging volume. A non-empty target is removed and recreated with its
    labels, driver and options; one that containers mount (``in_use``: the engine
    refuses to remove it) is emptied in place instead. On failure the staging volume is
    kept and named."""
    try:
        if not empty and in_use:
            clear_volume(engine, target, helper_image)
        elif not empty:
            old = inspect_volume(engine, target, flag)
            delete_volume(engine, target, "to replace it (--force)")
            create_volume(engine, target, old.get("Labels") or {}, old.get("Driver") or "local",
                          old.get("Options") or {})
        copy_volume(engine, staging, target, helper_image)
    except BaseException as e:
        raise EngineError(
            f"replacing the contents of volume '{target}' failed ({e}); the verified "
            f"{what} data is kept in volume '{staging}'",
            hint=f"copy it from '{staging}' by hand or {rerun}",
        ) from None
    remove_volume(engine, staging)
