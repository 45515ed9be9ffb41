"""Disk space: what a run needs in the work and output directories, and what a full disk
message says (where, how much is free, how much the run needs)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from synflow.cli.context import RunContext

__all__ = ["disk_full_message", "needed_bytes", "space_warning"]

#: float32 copies of the reference grid one series leaves in the work directory (b0 and
#: mask in the reference space, two 3-vector displacement fields and their inverses, the
#: SyN node's copies; measured ~14 on the 4 mm test data), with some margin.
_REF_COPIES = 16


def needed_bytes(ref_voxels: int, todo: Mapping[str, Sequence[Any]]) -> tuple[int, int]:
    """``(work, output)`` bytes a run of ``todo`` needs (an estimate, from the grids)."""
    series = [item for items in todo.values() for item in items]
    per_ref = _REF_COPIES * 4 * int(ref_voxels)
    work = sum(per_ref + int(getattr(item, "nbytes", 0)) // 2 for item in series) + per_ref
    return work, len(series) * per_ref // 2


def _mb(n: float) -> str:
    return f"{n / 1024 ** 2:.1f} MB" if n < 1024 ** 3 else f"{n / 1024 ** 3:.2f} GB"


def _mount_point(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    path = path.resolve()
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def disk_full_message(ctx: RunContext, todo: Mapping[str, Sequence[Any]], where: str,
                      error: str) -> str:
    """The message of a run stopped by a full disk (exit 73)."""
    work, out = needed_bytes(ctx.ref_voxels, todo)
    lines = [f"the disk is full: a step could not write in {where} ({error}). The run "
             "stopped."]
    for what, folder, need in (("work directory", ctx.work_dir, work),
                               ("output directory", ctx.output_dir, out)):
        try:
            usage = shutil.disk_usage(folder)
        except OSError:
            continue
        lines.append(f"  {what} {folder} (filesystem {_mount_point(Path(folder))}, "
                     f"{_mb(usage.total)}, {_mb(usage.free)} free): this run needs about "
                     f"{_mb(need)} there.")
    lines.append("Free space or give -w / OUTPUT_DIR a larger disk, then run the same "
                 "command again (finished steps are reused).")
    return "\n".join(lines)


def space_warning(ctx: RunContext, todo: Mapping[str, Sequence[Any]]) -> str | None:
    """A warning when the work or output filesystem has less free space than the run's
    estimate (:func:`needed_bytes`); a rerun that reuses finished steps needs less, so
    this only warns -- a full disk during the run stops it (exit 73)."""
    work, out = needed_bytes(ctx.ref_voxels, todo)
    short = []
    for what, folder, need in (("work directory", ctx.work_dir, work),
                               ("output directory", ctx.output_dir, out)):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        if free < need:
            short.append(f"the {what} {folder} has {_mb(free)} free, this run needs about "
                         f"{_mb(need)}")
    if not short:
        return None
    return "warning: " + "; ".join(short) + " (finished steps of an earlier run need none)."
