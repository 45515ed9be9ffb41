"""Thread-level parallelism for whole-array kernels.

NumPy ufuncs, ``np.take`` and most of ``scipy.ndimage`` release the GIL on large
arrays, so splitting a volume into slabs along its first axis and running the
slabs on a small thread pool uses every core without any compiled code.

Determinism: work is always cut into the same slabs for a given array shape
(the slab count does not depend on the number of threads), and each slab is
computed by the same arithmetic, so results are bit-identical whatever the
thread count.  Reductions must combine per-slab partial results in slab order.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TypeVar

T = TypeVar("T")

#: Environment variable that caps synflow's own threads (falls back to OMP_NUM_THREADS).
THREADS_ENV = "SYNFLOW_NUM_THREADS"

_override: int | None = None
# Set inside pool workers: a kernel called from a task runs serially instead of
# submitting to the (already busy) pool, which could otherwise deadlock.
_in_worker = threading.local()


def available_cpus() -> int:
    """Number of CPUs this process may run on (honours affinity masks / cgroups cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def get_num_threads() -> int:
    """Threads synflow uses for its kernels.

    Order of precedence: :func:`set_num_threads`, ``$SYNFLOW_NUM_THREADS``,
    ``$OMP_NUM_THREADS``, then the CPUs available to the process.
    """
    if _override is not None:
        return _override
    for var in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                return max(1, int(value))
            except ValueError as exc:
                raise ValueError(f"${var} must be a positive integer, got {value!r}") from exc
    return available_cpus()


def set_num_threads(n: int | None) -> None:
    """Set the number of threads synflow uses (``None`` restores the default)."""
    global _override
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"number of threads must be a positive integer or None, got {n!r}")
    _override = n


def _mark_worker() -> None:
    _in_worker.active = True


@lru_cache(maxsize=8)
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="synflow",
                              initializer=_mark_worker)


# A process forked while a pool exists (Nipype's MultiProc forks its workers) inherits the
# executors but not their threads: a task submitted there would wait forever.  Forget them
# in the child; it builds its own on first use.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool.cache_clear)


def _effective_threads(threads: int | None) -> int:
    if getattr(_in_worker, "active", False):
        return 1
    return get_num_threads() if threads is None else threads


def slab_bounds(n: int, min_slab: int = 1, max_slabs: int = 8) -> list[tuple[int, int]]:
    """Cut ``range(n)`` into at most ``max_slabs`` contiguous ``(start, stop)`` slabs.

    The cut depends only on ``n`` (never on the thread count), which keeps
    threaded results bit-identical to serial ones.
    """
    count = max(1, min(max_slabs, n // max(1, min_slab)))
    edges = [round(i * n / count) for i in range(count + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def run_slabs(func: Callable[[int, int], T], n: int, min_slab: int = 1,
              max_slabs: int = 8, threads: int | None = None) -> list[T]:
    """Run ``func(start, stop)`` on the slabs of ``range(n)``; results in slab order."""
    bounds = slab_bounds(n, min_slab=min_slab, max_slabs=max_slabs)
    nthreads = _effective_threads(threads)
    if nthreads <= 1 or len(bounds) <= 1:
        return [func(a, b) for a, b in bounds]
    return list(_pool(min(nthreads, len(bounds))).map(lambda ab: func(*ab), bounds))


def run_tasks(funcs: Sequence[Callable[[], T]], threads: int | None = None) -> list[T]:
    """Run independent zero-argument callables, possibly concurrently; results in order."""
    nthreads = _effective_threads(threads)
    if nthreads <= 1 or len(funcs) <= 1:
        return [f() for f in funcs]
    return list(_pool(min(nthreads, len(funcs))).map(lambda f: f(), funcs))
