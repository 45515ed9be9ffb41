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


def container_mount_hint(path: str | os.PathLike[str], role: str = "input") -> str:
    """Explain how to make ``path`` visible (``role="input"``) or writable (``"output"``,
    ``"work"``) when synflow runs in its container.

    Returns ``""`` outside the container (``$SYNFLOW_IN_CONTAINER`` unset), so the CLI can
    always append it to a "not found" / "cannot write" message::

        raise SystemExit(f"BIDS directory {p} does not exist.{container_mount_hint(p)}")
    """
    if not in_container():
        return ""
    if role not in ("input", "output", "work"):
        raise ValueError(f"role must be 'input', 'output' or 'work', got {role!r}")
    p = Path(os.fspath(path))
    # normpath: '/out/../work' is '/work' (the image's read-only folder), say so
    target = os.path.normpath(p if p.is_absolute() else Path.cwd() / p)
    if role == "input":
        existing = next((a for a in Path(target).parents if a.exists()), Path("/"))
        return (
            f"\n{target} does not exist inside the container (deepest existing parent: "
            f"{existing}). Directories of the host are only visible inside the container when "
            "bind-mounted; the paths given to synflow are paths *inside* the container. For "
            "example:\n"
            f"  docker run --rm -u $(id -u):$(id -g) -v /host/path/to/data:{target}:ro ... IMAGE "
            f"{target} /out participant\n"
            f"  apptainer run --cleanenv -B /host/path/to/data:{target}:ro synflow.sif "
            f"{target} /out participant\n"
            "(mount inputs read-only with ':ro'; the output and work directories must be "
            "mounted writable.)")
    state = "is not writable" if Path(target).exists() else "does not exist"
    out, work = ("/out", target) if role == "work" else (target, "/work")
    return (
        f"\n{target} {state} inside the container (the image itself is read-only). Bind a "
        f"writable host folder there, for example:\n"
        f"  docker run --rm -u $(id -u):$(id -g) -v /host/path/to/data:/data:ro "
        f"-v /host/path/to/out:{out} -v /host/path/to/work:{work} IMAGE /data {out} "
        f"participant -w {work}\n"
        f"  apptainer run --cleanenv -B /host/path/to/data:/data:ro -B /host/path/to/out:{out} "
        f"-B /host/path/to/work:{work} synflow.sif /data {out} participant -w {work}\n"
        "(the output and work directories must be mounted writable: no ':ro'.)")
