"""Nipype execution plugins for the ``synflow`` command: parse, validate, fail fast.

The CLI exposes Nipype's execution plugins the way fMRIPrep does::

    synflow BIDS OUT participant --nprocs 8 --mem 16G                 # MultiProc (default)
    synflow BIDS OUT participant --plugin SLURM \\
        --plugin-args '{"sbatch_args": "-p short -t 01:00:00 --mem 8G"}'
    synflow BIDS OUT participant --use-plugin plugin.yml              # fMRIPrep-style file

where ``plugin.yml`` is ``{plugin: SLURM, plugin_args: {sbatch_args: "-p short"}}``.

:func:`resolve_plugin` turns these options into the ``plugin`` / ``plugin_args`` arguments of
``Workflow.run`` and checks them *before any work starts*: the plugin exists in
:mod:`nipype.pipeline.plugins`; the arguments are a mapping whose keys that plugin reads
(read from the installed Nipype's source: Nipype itself silently ignores unknown keys, so
a typo such as ``sbatch_arg`` would otherwise be dropped without a word); values have the
right types; and for batch-scheduler plugins the scheduler's commands are on ``PATH`` and the
scheduler answers.  Every problem is
a :class:`PluginError` (a :class:`ValueError`) naming the plugin and what is missing; the CLI
maps it to exit code 64 (``EX_USAGE``).

Reproducibility note for callers: synflow's kernels cut volumes into fixed slabs whose number
does not depend on the thread count (:mod:`synflow._parallel`), so the same inputs give
bit-identical outputs whatever ``--nprocs``, ``--omp-nthreads`` or plugin is used.

Batch plugins need ``$LOGNAME`` (Nipype names the jobs after it); :func:`plugin_environment`
sets it around ``Workflow.run`` only, and restores the environment afterwards.

Modules: :mod:`~synflow.cli.plugins.table` (what synflow knows about each plugin, names),
:mod:`~synflow.cli.plugins.keys` (the keys each plugin reads, from Nipype's source),
:mod:`~synflow.cli.plugins.args` (parsing and validation), :mod:`~synflow.cli.plugins.probes`
(scheduler checks, memory of this machine), :mod:`~synflow.cli.plugins.container`.

:func:`container_mount_hint` explains a missing path when running inside the synflow image
(``SYNFLOW_IN_CONTAINER`` is set there).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from synflow._parallel import available_cpus
from synflow.cli.plugins.args import load_plugin_file, parse_plugin_args, validate_plugin_args
from synflow.cli.plugins.container import CONTAINER_ENV, container_mount_hint, in_container
from synflow.cli.plugins.keys import plugin_keys
from synflow.cli.plugins.probes import check_scheduler, default_mem_gb, user_name
from synflow.cli.plugins.table import (
    DEFAULT_PLUGIN,
    PLUGINS,
    PluginError,
    PluginInfo,
    is_pos_int,
    is_pos_number,
    plugin_blocks,
    plugin_names,
    resolve_plugin_name,
)

__all__ = [
    "CONTAINER_ENV",
    "DEFAULT_PLUGIN",
    "PLUGINS",
    "PluginError",
    "PluginInfo",
    "check_scheduler",
    "container_mount_hint",
    "in_container",
    "load_plugin_file",
    "parse_plugin_args",
    "plugin_blocks",
    "plugin_environment",
    "plugin_keys",
    "plugin_names",
    "resolve_plugin",
    "resolve_plugin_name",
    "validate_plugin_args",
]


def resolve_plugin(
    plugin: str | None = None,
    plugin_args: str | Mapping[str, Any] | None = None,
    use_plugin_file: str | os.PathLike[str] | None = None,
    nprocs: int | None = None,
    mem_gb: float | None = None,
    *,
    check: bool = True,
) -> tuple[str, dict[str, Any]]:
    """Build ``Workflow.run(plugin=..., plugin_args=...)`` arguments from the CLI options.

    Parameters
    ----------
    plugin
        ``--plugin`` name (case-insensitive), or None.
    plugin_args
        ``--plugin-args``: JSON/YAML mapping text, ``@FILE``, a mapping, or None.
    use_plugin_file
        ``--use-plugin`` YAML file ``{plugin: NAME, plugin_args: {...}}`` (fMRIPrep format).
    nprocs
        ``--nprocs``: processes for local plugins (``n_procs``).  Ignored by schedulers.
    mem_gb
        ``--mem`` in GB for local plugins (``memory_gb``).  Ignored by schedulers.
    check
        Also check that the scheduler / optional package is reachable (default True).

    Returns
    -------
    (plugin_name, plugin_args)
        Precedence: ``--plugin-args`` keys override the file's; explicit ``--nprocs`` /
        ``--mem`` override both (as fMRIPrep).  For MultiProc-like plugins,
        ``raise_insufficient`` defaults to False (a node asking for more than ``--mem`` still
        runs, alone) and ``memory_gb`` / ``n_procs`` are always set, so the plan does not
        depend on what Nipype guesses about the machine.  Graph plugins return before the
        jobs finish: check :func:`plugin_blocks`.

    Raises
    ------
    PluginError
        Unknown plugin, conflicting names, malformed/unknown/ill-typed arguments, or an
        unreachable scheduler.  Nothing has been run when it is raised.
    """
    file_name: str | None = None
    args: dict[str, Any] = {}
    if use_plugin_file is not None:
        file_name, args = load_plugin_file(use_plugin_file)
    cli_args = parse_plugin_args(plugin_args)

    if plugin is not None and file_name is not None:
        if resolve_plugin_name(plugin) != resolve_plugin_name(file_name):
            raise PluginError(
                f"--plugin {plugin} conflicts with plugin {file_name!r} in --use-plugin "
                f"{use_plugin_file}; give one of them"
            )
    name = resolve_plugin_name(plugin or file_name or DEFAULT_PLUGIN)
    args.update(cli_args)

    if nprocs is not None and (not is_pos_int(nprocs)):
        raise PluginError(f"--nprocs must be a positive integer, got {nprocs!r}")
    if mem_gb is not None and not is_pos_number(mem_gb):
        raise PluginError(f"--mem must be a positive amount of memory, got {mem_gb!r}")

    info = PLUGINS.get(name)
    if info is not None and info.local and name != "Linear":
        if nprocs is not None:
            args["n_procs"] = nprocs
        args.setdefault("n_procs", available_cpus())
        if mem_gb is not None:
            args["memory_gb"] = float(mem_gb)
        args.setdefault("memory_gb", default_mem_gb())
        args.setdefault("raise_insufficient", False)
    if name == "SLURMGraph":
        # nipype 1.11 SLURMGraphPlugin sets this attribute only when plugin_args is non-empty
        # and otherwise dies with AttributeError at submission.
        args.setdefault("dont_resubmit_completed_jobs", False)

    args = validate_plugin_args(name, args)
    if check:
        check_scheduler(name, args)
    return name, args


@contextmanager
def plugin_environment(plugin: str) -> Iterator[None]:
    """Around ``Workflow.run`` only: ``$LOGNAME`` for the batch plugins, restored afterwards.

    Nipype's SLURM, SGE, PBS, LSF, Condor and OAR plugins name the jobs after
    ``os.environ["LOGNAME"]`` and die with a bare ``KeyError`` -- mid-run -- where it is unset
    (cron, some containers and batch shells).  Local plugins change nothing.
    """
    info = PLUGINS.get(plugin)
    if info is None or info.scheduler is None or os.environ.get("LOGNAME"):
        yield
        return
    before = os.environ.get("LOGNAME")
    os.environ["LOGNAME"] = user_name()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LOGNAME", None)
        else:
            os.environ["LOGNAME"] = before
