"""What synflow knows about each Nipype execution plugin, and the names it accepts.

:data:`PLUGINS` holds what cannot be read from Nipype itself: the scheduler commands that
must be on ``PATH``, the command that checks the scheduler answers, whether the plugin runs
on this machine (``--nprocs`` / ``--mem``) and whether ``Workflow.run`` waits for the jobs.
Which ``plugin_args`` keys a plugin reads comes from the installed Nipype
(:mod:`synflow.cli.plugins.keys`); :data:`VALUE_CHECKS` types the values of the keys
synflow knows.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_PLUGIN", "PLUGINS", "PluginError", "PluginInfo", "VALUE_CHECKS",
           "is_pos_int", "is_pos_number", "nipype_plugin_class", "plugin_blocks",
           "plugin_names", "resolve_plugin_name"]

#: Plugin used when neither ``--plugin`` nor ``--use-plugin`` is given.
DEFAULT_PLUGIN = "MultiProc"


class PluginError(ValueError):
    """Invalid ``--plugin`` / ``--plugin-args`` / ``--use-plugin``, or unreachable scheduler."""


Check = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_pos_int(v: Any) -> bool:
    """A positive ``int`` (``True`` is not one)."""
    return _is_int(v) and v >= 1


def is_pos_number(v: Any) -> bool:
    """A positive ``int`` or ``float`` (not a ``bool``)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and v > 0


def _is_nonneg_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v >= 0


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


_STR = (_is_str, "a string")
_OPTIONS = (_is_str, "a string of scheduler options")
_TEXT_OR_FILE = (_is_str, "a string (text or file)")
_BOOL = (_is_bool, "true or false")
_POS_INT = (is_pos_int, "a positive integer")

#: ``plugin_args`` key -> (check, what it must be).  Keys a plugin reads (per the installed
#: Nipype) that are not listed here are accepted with any value.
VALUE_CHECKS: dict[str, tuple[Check, str]] = {
    "max_jobs": _POS_INT,
    "retry_timeout": (_is_nonneg_number, "a number of seconds >= 0"),
    "max_tries": (_is_int, "an integer"),
    "template": _TEXT_OR_FILE,
    "dont_resubmit_completed_jobs": _BOOL,
    "n_procs": _POS_INT,
    "memory_gb": (is_pos_number, "a positive number of GB"),
    "raise_insufficient": _BOOL,
    "scheduler": (lambda v: v in ("tsort", "mem_thread"), "'tsort' or 'mem_thread'"),
    "n_gpu_procs": (_is_int, "an integer"),
    "mp_context": (lambda v: v in ("fork", "spawn", "forkserver"),
                   "'fork', 'spawn' or 'forkserver'"),
    "non_daemon": _BOOL,
    "maxtasksperchild": _POS_INT,
    "sbatch_args": (_is_str, "a string of sbatch options"),
    "jobid_re": (_is_str, "a regular expression with one group"),
    "qsub_args": _OPTIONS,
    "bsub_args": _OPTIONS,
    "oarsub_args": _OPTIONS,
    "qstatProgramPath": (_is_str, "a path"),
    "qstatCachedProgramPath": (_is_str, "a path"),
    "max_jobname_len": _POS_INT,
    "submit_template": _TEXT_OR_FILE,
    "initial_specs": _TEXT_OR_FILE,
    "submit_specs": _TEXT_OR_FILE,
    "override_specs": _TEXT_OR_FILE,
    "wrapper_cmd": (_is_str, "a path"),
    "wrapper_args": _STR,
    "block": _BOOL,
    "dagman_args": _STR,
}

#: Keys Nipype reads without a literal ``plugin_args["..."]`` in its source (a loop over
#: a tuple of names), so :mod:`~synflow.cli.plugins.keys` cannot find them.
EXTRA_KEYS: dict[str, tuple[str, ...]] = {
    "CondorDAGMan": ("submit_template", "initial_specs", "override_specs", "wrapper_cmd",
                     "wrapper_args", "block", "dagman_args"),
    "IPython": ("url_file", "profile", "cluster_id", "context", "debug", "timeout", "config",
                "username", "sshserver", "sshkey", "password", "paramiko"),
}


@dataclass(frozen=True)
class PluginInfo:
    """What :func:`~synflow.cli.plugins.resolve_plugin` knows about one Nipype plugin.

    ``commands`` must be on ``PATH``; ``ping`` is a command that must exit 0 (the scheduler
    answers); ``module`` must be importable.  ``local`` plugins run on this machine and take
    ``--nprocs`` / ``--mem``.  ``blocking`` is False for the "graph" plugins that submit the
    whole graph as dependent jobs and return at once (see :func:`plugin_blocks`).
    """

    commands: tuple[str, ...] = ()
    ping: tuple[str, ...] = ()
    module: str | None = None
    local: bool = False
    scheduler: str | None = None
    note: str = ""
    cli_usable: bool = True
    blocking: bool = True


_SINFO = ("sinfo", "--noheader", "--summarize")

PLUGINS: dict[str, PluginInfo] = {
    "Linear": PluginInfo(local=True),
    "MultiProc": PluginInfo(local=True),
    "LegacyMultiProc": PluginInfo(local=True),
    "SLURM": PluginInfo(commands=("sbatch", "squeue"), ping=_SINFO, scheduler="SLURM"),
    "SLURMGraph": PluginInfo(commands=("sbatch",), ping=_SINFO, scheduler="SLURM",
                             blocking=False),
    "SGE": PluginInfo(commands=("qsub", "qstat"), ping=("qstat",), scheduler="SGE"),
    "SGEGraph": PluginInfo(commands=("qsub",), ping=("qstat",), scheduler="SGE",
                           blocking=False),
    "PBS": PluginInfo(commands=("qsub", "qstat"), ping=("qstat",), scheduler="PBS/Torque"),
    "PBSGraph": PluginInfo(commands=("qsub",), ping=("qstat",), scheduler="PBS/Torque",
                           blocking=False),
    "LSF": PluginInfo(commands=("bsub", "bjobs"), ping=("lsid",), scheduler="LSF"),
    "Condor": PluginInfo(commands=("condor_qsub", "condor_q"), ping=("condor_q",),
                         scheduler="HTCondor"),
    "CondorDAGMan": PluginInfo(commands=("condor_submit_dag",), ping=("condor_q",),
                               scheduler="HTCondor", blocking=False),
    "OAR": PluginInfo(commands=("oarsub", "oarstat"), ping=("oarstat",), scheduler="OAR"),
    "IPython": PluginInfo(module="ipyparallel",
                          note="start a cluster first: `ipcluster start -n N`"),
    "SomaFlow": PluginInfo(module="soma_workflow"),
    "Debug": PluginInfo(cli_usable=False, note="it needs a Python callable in plugin_args, "
                        "which a command line cannot carry"),
}

#: Other spellings accepted for ``--plugin`` (matched case-insensitively).
_ALIASES = {
    "dagman": "CondorDAGMan",
    "htcondor": "Condor",
    "multiprocessing": "MultiProc",
    "serial": "Linear",
    "torque": "PBS",
    "slurmgraph": "SLURMGraph",
}


def plugin_blocks(plugin: str, plugin_args: Mapping[str, Any] | None = None) -> bool:
    """Whether ``Workflow.run`` waits until every node has finished with this plugin.

    False for SLURMGraph, SGEGraph, PBSGraph and CondorDAGMan (unless ``block: true``): they
    submit the whole graph as dependent jobs and return at once, so outputs and reports exist
    only when the jobs are done.  A caller must then not summarise results or write reports
    right after ``run`` returns; it should say that the jobs were submitted.
    """
    info = PLUGINS.get(plugin)
    if info is None:
        return True
    if plugin == "CondorDAGMan":
        return bool((plugin_args or {}).get("block", False))
    return info.blocking


def plugin_names() -> list[str]:
    """Plugin names usable from the command line, in a stable order."""
    return [name for name, info in PLUGINS.items() if info.cli_usable]


def nipype_plugin_class(name: str) -> type | None:
    """The ``<name>Plugin`` class in the installed Nipype, or None if it has none."""
    try:
        import nipype.pipeline.plugins as nipype_plugins
    except ImportError:  # pragma: no cover - nipype is a hard dependency
        return None
    return getattr(nipype_plugins, f"{name}Plugin", None)


def resolve_plugin_name(name: str) -> str:
    """Canonical Nipype plugin name for ``name`` (case-insensitive; ``DAGMan`` etc. accepted).

    Raises :class:`PluginError` if Nipype has no such plugin or it cannot be used from a
    command line.
    """
    if not isinstance(name, str) or not name.strip():
        raise PluginError(f"--plugin: expected a Nipype plugin name, got {name!r}")
    raw = name.strip()
    key = raw.removesuffix("Plugin")
    lookup = {n.lower(): n for n in PLUGINS}
    canonical = lookup.get(key.lower()) or _ALIASES.get(key.lower())
    if canonical is None:
        # A plugin added to a newer Nipype that this table does not know yet: accept it
        # (its keys are still read from its source) as long as Nipype has the class.
        if nipype_plugin_class(key) is not None:
            return key
        close = difflib.get_close_matches(key, plugin_names(), n=2, cutoff=0.5)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise PluginError(
            f"--plugin {raw!r}: Nipype has no such execution plugin.{hint} "
            f"Available: {', '.join(plugin_names())}."
        )
    info = PLUGINS[canonical]
    if not info.cli_usable:
        raise PluginError(
            f"--plugin {canonical}: cannot be used from the command line: {info.note}."
        )
    if nipype_plugin_class(canonical) is None:
        raise PluginError(
            f"--plugin {canonical}: the installed Nipype does not provide {canonical}Plugin."
        )
    return canonical
