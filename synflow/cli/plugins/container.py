"""Inside the synflow container image: say how to bind-mount a path that is not there."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CONTAINER_ENV", "container_mount_hint", "in_container"]

#: Environment variable set in the synflow Docker/Apptainer image.
CONTAINER_ENV = "SYNFLOW_IN_CONTAINER"


def in_container() -> bool:
    """True inside the synflow Docker/Apptainer image (``$SYNFLOW_IN_CONTAINER`` set, not 0)."""
    return os.environ.get(CONTAINER_ENV, "").strip().lower() not in ("", "0", "false", "no")


def container_mount_hint(path: str | os.PathLike[str]) -> str:
    """Explain how to make ``path`` visible when synflow runs in its container.

    Returns ``""`` outside the container (``$SYNFLOW_IN_CONTAINER`` unset), so the CLI can
    always append it to a "not found" message::

        raise SystemExit(f"BIDS directory {p} does not exist.{container_mount_hint(p)}")
    """
    if not in_container():
        return ""
    p = Path(os.fspath(path))
    absolute = p if p.is_absolute() else Path.cwd() / p
    # The deepest ancestor that exists inside the container shows where the mount stops.
    existing = next((a for a in absolute.parents if a.exists()), Path("/"))
    target = str(absolute)
    return (
        f"\n{target} does not exist inside the container (deepest existing parent: {existing})."
        " Directories of the host are only visible inside the container when bind-mounted;"
        " the paths given to synflow are paths *inside* the container. For example:\n"
        f"  docker run --rm -u $(id -u):$(id -g) -v /host/path/to/data:{target}:ro ... IMAGE "
        f"{target} /out participant\n"
        f"  apptainer run --cleanenv -B /host/path/to/data:{target}:ro synflow.sif "
        f"{target} /out participant\n"
        "(mount inputs read-only with ':ro'; the output and work directories must be mounted "
        "writable.)"
    )
