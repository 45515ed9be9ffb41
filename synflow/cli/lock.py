"""One run at a time per output and work directory: ``.synflow.lock`` files.

Semantics (what the README's promises section states):

* A run creates ``<OUTPUT_DIR>/.synflow.lock`` and ``<work dir>/.synflow.lock`` before it
  writes anything else there, with ``O_CREAT | O_EXCL`` (atomic on local filesystems and
  on NFS v3 and later), holding the host name, pid, process start time, run id and
  command.  It removes them when it ends, whatever the exit code.
* A second run that finds a lock refuses at once (exit 73), naming the lock file, the
  other run's host, pid and start; it writes nothing.
* A lock left by a run that died (SIGKILL, a node crash) is taken over when it was written
  **on the same host** and its pid is no longer that process (gone, or reused by another
  process: the start time differs).  A lock written on **another host** is never taken
  over automatically (synflow cannot see that host's processes): if that run is really
  gone, delete the file by hand.
* Locks are advisory and only between synflow runs.  On filesystems where ``O_EXCL`` is
  not atomic (some NFS v2 / FUSE mounts, object stores) two runs started in the same
  instant may both get the lock.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from synflow.cli.errors import ExitCode, SynflowError

__all__ = ["LOCK_NAME", "RunLock", "clean_stale_partials"]

LOCK_NAME = ".synflow.lock"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if not running."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)  # no /proc (not Linux): alive or not, start unknown
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "?"


def _is_stale(info: dict) -> bool:
    """A lock of a dead process on this host (other hosts' locks are never stale)."""
    if info.get("host") != socket.gethostname():
        return False
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return True
    if pid <= 0:
        return True
    started = _start_time(pid)
    if started is None:
        return True
    return started != "?" and info.get("start_ticks") not in (None, started)


class RunLock:
    """The locks of one run on a set of folders (see the module docstring)."""

    def __init__(self, run_id: str, command: str) -> None:
        self.run_id, self.command = run_id, command
        self.held: list[Path] = []
        self.taken_over: list[tuple[Path, dict]] = []

    def acquire(self, folder: Path, what: str) -> None:
        """Lock ``folder`` or raise :class:`SynflowError` (exit 73) naming the holder."""
        path = Path(folder) / LOCK_NAME
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "start_ticks": _start_time(os.getpid()), "run": self.run_id,
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": self.command}
        for _ in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = self._read(path)
                if _is_stale(info):
                    self.taken_over.append((path, info))
                    path.unlink(missing_ok=True)
                    continue
                raise SynflowError(
                    f"another synflow run is using the {what} {folder}: lock {path} held by "
                    f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (run "
                    f"{info.get('run', '?')}, started {info.get('started', '?')}). Wait for "
                    "it to finish, or use another folder. If that run is gone (on another "
                    f"host synflow cannot check), delete {path}.",
                    ExitCode.CANT_CREATE) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh, indent=2)
            self.held.append(path)
            return
        raise SynflowError(f"could not take the lock {path} (it keeps reappearing)",
                           ExitCode.CANT_CREATE)

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            # being written this instant, or garbage: treat as held by an unknown run
            # unless it is older than a minute
            try:
                old = time.time() - path.stat().st_mtime > 60
            except OSError:
                old = True
            return {"host": socket.gethostname(), "pid": -1} if old else {}
        return data if isinstance(data, dict) else {}

    def release(self) -> None:
        """Remove the locks this run holds (only if still ours)."""
        for path in self.held:
            try:
                if json.loads(path.read_text()).get("run") == self.run_id:
                    path.unlink()
            except (OSError, ValueError):
                pass
        self.held.clear()


def clean_stale_partials(*folders: Path) -> list[Path]:
    """Remove the hidden ``.NAME.XXXXXXXX.partial...`` files of
    :func:`synflow._atomic.atomic_path` under ``folders`` (call with the lock held: no
    other synflow run writes there, so every such file was left by a run that died)."""
    import re

    pattern = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.partial(\..*)?$")
    removed = []
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for path in Path(folder).rglob(".*.partial*"):
            if pattern.match(path.name) and path.is_file():
                try:
                    path.unlink()
                    removed.append(path)
                except OSError:
                    pass
    return removed
