"""Nipype's MultiProc plugin, made to end when a worker dies or a disk fills up.

Nipype 1.11's ``MultiProcPlugin`` reads each task's result in a future's done-callback;
when a worker process is killed (the kernel's out-of-memory killer sends SIGKILL),
``concurrent.futures`` marks *every* running future ``BrokenProcessPool``, the callback
raises, no result is ever stored and the scheduler polls forever.  A full work disk gives
the same endless wait.  :class:`SafeMultiProcPlugin` changes three things:

* a task whose future raised gets a failure result: the task whose worker died of a
  signal is reported as *killed* (most likely out of memory, with the memory the step was
  planned with and how to give more); tasks the pool stopped as a consequence are
  reported as *interrupted* (a rerun finishes them, reusing every finished step); a new
  process pool takes the remaining steps, so series not yet started still run;
* a task that failed with ``ENOSPC`` (errno 28) stops the run at once
  (:attr:`disk_full` says where); nothing else could be written anyway;
* whatever ends :meth:`run` (an error, Ctrl-C), the worker processes are terminated, and
  on Linux they die with the parent (``PR_SET_PDEATHSIG``), so none is left behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from nipype.pipeline.plugins.multiproc import MultiProcPlugin, process_initializer, run_node

__all__ = ["SafeMultiProcPlugin", "is_disk_full"]

_ENOSPC = (f"[Errno {errno.ENOSPC}]", "No space left on device")


def is_disk_full(text: str) -> bool:
    """True if ``text`` (a traceback or message) is an out-of-space error."""
    return any(s in str(text) for s in _ENOSPC)


def _signal_name(code: int | None) -> str:
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"signal {-code}"


def _init_worker(cwd: str) -> None:
    """Nipype's worker set-up, and (Linux) die with the parent: a run killed with SIGKILL
    leaves no worker behind."""
    process_initializer(cwd)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers end when their queue closes
        pass


def _run_node_pid(node: Any, updatehash: bool, taskid: int, pid_dir: str) -> dict:
    """:func:`nipype...run_node` in the worker, first noting which worker runs the task
    (``<pid_dir>/<taskid>`` holds the pid: the parent reads it if the worker dies)."""
    try:
        with open(os.path.join(pid_dir, str(taskid)), "w") as fh:
            fh.write(str(os.getpid()))
    except OSError:  # a full disk: the task fails anyway, the pid is a nicety
        pass
    return run_node(node, updatehash, taskid)


class SafeMultiProcPlugin(MultiProcPlugin):
    """``MultiProc`` that reports killed workers and full disks instead of hanging."""

    def __init__(self, plugin_args: dict | None = None, pid_dir: str | None = None) -> None:
        """``pid_dir``: where workers note which task they run (default: a temporary
        folder removed after the run; the CLI uses ``<work>/<run>/tasks``, so a run killed
        with SIGKILL leaves nothing in /tmp)."""
        super().__init__(plugin_args=plugin_args)
        self._nodes: dict[int, Any] = {}
        self._futures: dict[int, Future] = {}
        self._pool_procs: dict[int, Any] = {}
        self._mp_context = self.pool._mp_context
        self.pool.shutdown(wait=False)  # no worker started yet: replace it with ours
        self._new_pool()
        self._own_pid_dir = pid_dir is None
        if pid_dir is None:
            self._pid_dir = tempfile.mkdtemp(prefix="synflow-tasks-")
        else:
            self._pid_dir = str(pid_dir)
            os.makedirs(self._pid_dir, exist_ok=True)
        #: ``(node output folder, message)`` of the first out-of-space failure, or None
        self.disk_full: tuple[str, str] | None = None
        #: fullnames of the nodes whose worker was killed, and of those interrupted
        self.killed: list[str] = []
        #: where crash files go when a node's own crash folder cannot be written
        self.crash_fallback: str | None = None
        self.interrupted: list[str] = []

    # -- submission: remember the node and the pool's processes (for their exit codes)
    def _submit_job(self, node: Any, updatehash: bool = False) -> int:
        if getattr(self.pool, "_broken", False):
            self._new_pool()
        self._taskid += 1
        if getattr(node.interface, "terminal_output", "") == "stream":
            node.interface.terminal_output = "allatonce"
        taskid = self._taskid
        self._nodes[taskid] = node
        future = self.pool.submit(_run_node_pid, node, updatehash, taskid, self._pid_dir)
        self._futures[taskid] = future
        self._task_obj[taskid] = future
        self._pool_procs.update(getattr(self.pool, "_processes", None) or {})
        future.add_done_callback(lambda fut, tid=taskid: self._done(tid, fut))
        return taskid

    def _new_pool(self) -> None:
        self.pool = ProcessPoolExecutor(max_workers=self.processors,
                                        initializer=_init_worker,
                                        initargs=(self._cwd,), mp_context=self._mp_context)

    def _async_callback(self, args: Future) -> None:  # replaced by _done
        raise NotImplementedError("SafeMultiProcPlugin stores results in _done")

    def _done(self, taskid: int, future: Future) -> None:
        try:
            result = future.result()
        except BaseException as exc:  # BrokenProcessPool, CancelledError, pickling errors
            result = {"result": None, "taskid": taskid, "broken": True,
                      "traceback": [f"{type(exc).__name__}: {exc}\n"]}
        self._taskresult[taskid] = result

    # -- results: name killed / interrupted tasks, stop on a full disk
    def _get_result(self, taskid: int) -> dict | None:
        result = self._taskresult.get(taskid)
        if result is None:
            return None
        if result.get("broken"):
            result["traceback"] = [self._broken_message(taskid) + "\n"]
        tb = "".join(result.get("traceback") or [])
        if tb and is_disk_full(tb) and self.disk_full is None:
            node = self._nodes.get(taskid)
            where = node.output_dir() if node is not None else self._cwd
            self.disk_full = (str(where), tb.strip().splitlines()[-1].strip())
            self._config["execution"]["stop_on_first_crash"] = "true"
        return result

    def _broken_message(self, taskid: int) -> str:
        """Why a task's future broke: its own worker was killed, or another one was."""
        node = self._nodes.get(taskid)
        name = node.fullname if node is not None else f"task {taskid}"
        dead = {pid: p.exitcode for pid, p in self._pool_procs.items()
                if p.exitcode is not None and p.exitcode < 0
                and p.exitcode != -signal.SIGTERM}
        pid = self._task_pid(taskid)
        culprits = [n.fullname for t, n in self._nodes.items()
                    if (self._taskresult.get(t) or {}).get("broken")
                    and self._task_pid(t) in dead]
        if pid in dead or not culprits:  # its worker died, or we cannot tell whose did
            self.killed.append(name)
            mem = getattr(node, "mem_gb", None)
            given = f"{mem:.2f} GB" if isinstance(mem, (int, float)) else "an unknown amount"
            how = _signal_name(dead.get(pid, next(iter(dead.values()), None)))
            return (f"WorkerKilledError: the process running this step was killed ({how}), "
                    f"most likely by the out-of-memory killer. The step was planned with {given} "
                    f"of the run's {self.memory_gb:.2f} GB (--mem). Give the job more memory "
                    "(a larger cgroup or batch-job memory request), set --mem to what it "
                    "really has, or lower --nprocs so fewer steps share it; then run the "
                    "same command again (finished steps are reused).")
        self.interrupted.append(name)
        return ("StepInterruptedError: stopped because another worker process of this run "
                f"was killed ({', '.join(culprits)}); run the same command again to finish "
                "it (finished steps are reused).")

    def _task_pid(self, taskid: int) -> int | None:
        try:
            with open(os.path.join(self._pid_dir, str(taskid))) as fh:
                return int(fh.read().strip())
        except (OSError, ValueError):
            return None

    def _report_crash(self, node: Any, result: dict | None = None) -> str | None:
        """Nipype's crash file; where its folder cannot be written (a participant's output
        folder read-only), in :attr:`crash_fallback` instead -- never stop the scheduler."""
        try:
            return super()._report_crash(node, result=result)
        except OSError as exc:
            first = exc
        try:
            node.config["execution"]["crashdump_dir"] = self.crash_fallback or self._cwd
            return super()._report_crash(node, result=result)
        except OSError:
            result = result or {"traceback": []}
            node._traceback = list(result.get("traceback") or []) + [
                f"\n(the crash file could not be written: {first})\n"]
            return None

    def run(self, graph: Any, config: Any, updatehash: bool = False) -> None:
        try:
            super().run(graph, config, updatehash=updatehash)
        finally:
            self.terminate()
            if self._own_pid_dir:
                shutil.rmtree(self._pid_dir, ignore_errors=True)

    def terminate(self) -> None:
        """Stop every worker process of this plugin (idempotent)."""
        procs = dict(self._pool_procs)
        procs.update(getattr(self.pool, "_processes", None) or {})
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs.values():
            if proc.exitcode is None:
                proc.terminate()
        for proc in procs.values():
            proc.join(timeout=5)
            if proc.exitcode is None:
                proc.kill()
                proc.join(timeout=5)
