"""Probes of this machine: is the scheduler there and answering, how much memory is ours.

:func:`check_scheduler` runs the scheduler's status command (and, for SLURM,
``sbatch --test-only``) so a bad partition or an unreachable controller is a usage error
before any work starts, not a bare ``IndexError`` from Nipype mid-run.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from synflow.cli.plugins.container import in_container
from synflow.cli.plugins.table import PLUGINS, PluginError

__all__ = ["SCHEDULER_TIMEOUT", "check_scheduler", "default_mem_gb", "user_name"]

#: Seconds to wait for a scheduler's status command (``sinfo``, ``qstat``...).
SCHEDULER_TIMEOUT = 20.0


def check_scheduler(
    plugin: str,
    plugin_args: Mapping[str, Any] | None = None,
    *,
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    timeout: float = SCHEDULER_TIMEOUT,
) -> None:
    """Raise :class:`PluginError` unless ``plugin`` can run here.

    Batch plugins: their submit/status commands are on ``PATH`` and the scheduler answers
    (``sinfo`` for SLURM, ``qstat`` for SGE/PBS, ``lsid`` for LSF, ``condor_q``, ``oarstat``).
    IPython/SomaFlow: their Python package is importable.  For SLURM, ``sbatch --test-only``
    with ``plugin_args["sbatch_args"]`` must succeed: a bad partition, an impossible
    ``--mem`` or an unknown option is reported now, not as a bare ``IndexError`` from Nipype
    when the first node is submitted.  ``which``/``run`` are injectable for tests.
    """
    info = PLUGINS.get(plugin)
    if info is None:
        return
    if info.module and importlib.util.find_spec(info.module) is None:
        note = f"; {info.note}" if info.note else ""
        raise PluginError(
            f"--plugin {plugin}: the Python package {info.module!r} is not "
            f"installed (pip install {info.module.replace('_', '-')}){note}"
        )
    missing = [cmd for cmd in info.commands if which(cmd) is None]
    if missing:
        where = (
            " This is the synflow container image, which has no scheduler client: run "
            "synflow from a host installation to submit jobs, or run the image itself as "
            "one batch job per subject with --plugin MultiProc."
            if in_container()
            else ""
        )
        raise PluginError(
            f"--plugin {plugin}: {info.scheduler} command(s) {', '.join(missing)} not found on "
            f"PATH. Run synflow on a {info.scheduler} submit/login node (or load its "
            f"module).{where}"
        )
    if info.ping:
        cmd = list(info.ping)
        exe = which(cmd[0])
        if exe is None:
            raise PluginError(
                f"--plugin {plugin}: {cmd[0]} (used to check that {info.scheduler} "
                "answers) not found on PATH"
            )
        _probe([exe, *cmd[1:]], " ".join(cmd), run, timeout, plugin=plugin,
               silent=f"{info.scheduler} does not answer: ",
               failed=f"{info.scheduler} is not reachable: ")
    if info.scheduler == "SLURM":
        _check_sbatch_args(
            plugin, (plugin_args or {}).get("sbatch_args") or "", which, run, timeout
        )


def _check_sbatch_args(
    plugin: str,
    sbatch_args: str,
    which: Callable[[str], str | None],
    run: Callable[..., subprocess.CompletedProcess[str]],
    timeout: float,
) -> None:
    """``sbatch --test-only ARGS --wrap=true``: SLURM validates, schedules nothing."""
    try:
        argv = shlex.split(sbatch_args)
    except ValueError as exc:
        raise PluginError(
            f"--plugin-args for {plugin}: sbatch_args {sbatch_args!r}: {exc}"
        ) from None
    cmd = [which("sbatch") or "sbatch", "--test-only", *argv, "--wrap=true"]
    shown = " ".join(["sbatch --test-only", *argv, "--wrap=true"])
    _probe(cmd, shown, run, timeout, plugin=plugin, silent="",
           failed=f"SLURM would reject the jobs (sbatch_args {sbatch_args!r}): ")


def _probe(
    cmd: list[str],
    shown: str,
    run: Callable[..., subprocess.CompletedProcess[str]],
    timeout: float,
    *,
    plugin: str,
    silent: str,
    failed: str,
) -> None:
    """Run ``cmd``; :class:`PluginError` (``silent``/``failed`` + what happened) unless exit 0."""
    try:
        proc = run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise PluginError(
            f"--plugin {plugin}: {silent}`{shown}` timed out after {timeout:g} s"
        ) from None
    except OSError as exc:
        raise PluginError(f"--plugin {plugin}: cannot run `{shown}`: {exc}") from None
    if proc.returncode != 0:
        detail = " ".join((proc.stderr or proc.stdout or "").split())[:300]
        raise PluginError(
            f"--plugin {plugin}: {failed}`{shown}` exited with {proc.returncode}"
            + (f": {detail}" if detail else "")
        )


def cgroup_memory_limit(proc_cgroup: str = "/proc/self/cgroup",
                        root: str = "/sys/fs/cgroup") -> int | None:
    """The memory limit (bytes) of this process's own cgroup, or None if unlimited/unknown.

    Reads ``/proc/self/cgroup`` (v2: ``0::/path`` -> ``<root>/path/memory.max``; v1:
    ``N:memory:/path`` -> ``<root>/memory/path/memory.limit_in_bytes``) and takes the
    smallest limit of that cgroup and its ancestors (they all apply).  Where the path is
    not visible (a container's cgroup namespace), the ancestors that are visible count.
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    candidates: list[tuple[Path, str, str]] = []  # (hierarchy root, cgroup path, file)
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            candidates.append((Path(root), parts[2], "memory.max"))
        elif "memory" in parts[1].split(","):
            candidates.append((Path(root) / "memory", parts[2], "memory.limit_in_bytes"))
    limits = []
    for base, rel, fname in candidates:
        folder = base / rel.lstrip("/")
        while True:  # the cgroup, then each ancestor up to the hierarchy's root
            try:
                raw = (folder / fname).read_text().strip()
            except OSError:
                raw = ""
            if raw.isdigit():
                limits.append(int(raw))
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(limits) if limits else None


def default_mem_gb() -> float:
    """90 % of the memory this process may use: its cgroup's limit if set, else system RAM."""
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        total = 4.0
    limit = cgroup_memory_limit()
    if limit is not None:
        total = min(total, limit / 1024**3)
    return round(0.9 * total, 2)


def user_name() -> str:
    """Login name of this process, or its uid when the uid has no passwd entry."""
    try:
        import getpass

        return getpass.getuser()
    except (KeyError, OSError, ImportError):
        return str(os.getuid())
