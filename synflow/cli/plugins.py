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
(Nipype itself silently ignores unknown keys, so a typo such as ``sbatch_arg`` would
otherwise be dropped without a word); values have the right types; and for batch-scheduler
plugins the scheduler's commands are on ``PATH`` and the scheduler answers.  Every problem is
a :class:`PluginError` (a :class:`ValueError`) naming the plugin and what is missing; the CLI
maps it to exit code 64 (``EX_USAGE``).

Reproducibility note for callers: synflow's kernels cut volumes into fixed slabs whose number
does not depend on the thread count (:mod:`synflow._parallel`), so the same inputs give
bit-identical outputs whatever ``--nprocs``, ``--omp-nthreads`` or plugin is used.

:func:`container_mount_hint` explains a missing path when running inside the synflow image
(``SYNFLOW_IN_CONTAINER`` is set there).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CONTAINER_ENV",
    "DEFAULT_PLUGIN",
    "PLUGINS",
    "PluginError",
    "check_scheduler",
    "container_mount_hint",
    "in_container",
    "load_plugin_file",
    "parse_plugin_args",
    "plugin_blocks",
    "plugin_names",
    "resolve_plugin",
    "resolve_plugin_name",
    "validate_plugin_args",
]

#: Environment variable set in the synflow Docker/Apptainer image.
CONTAINER_ENV = "SYNFLOW_IN_CONTAINER"

#: Plugin used when neither ``--plugin`` nor ``--use-plugin`` is given.
DEFAULT_PLUGIN = "MultiProc"

#: Seconds to wait for a scheduler's status command (``sinfo``, ``qstat``...).
SCHEDULER_TIMEOUT = 20.0


class PluginError(ValueError):
    """Invalid ``--plugin`` / ``--plugin-args`` / ``--use-plugin``, or unreachable scheduler."""


# --------------------------------------------------------------------------------------------
# What each Nipype plugin accepts (read from nipype 1.11 ``nipype/pipeline/plugins/*.py``).

_Check = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_pos_int(v: Any) -> bool:
    return _is_int(v) and v >= 1


def _is_pos_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v > 0


def _is_nonneg_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v >= 0


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


# key -> (check, expected-type description)
_KeySpec = dict[str, tuple[_Check, str]]

_DISTRIBUTED: _KeySpec = {"max_jobs": (_is_pos_int, "a positive integer")}
_RETRY: _KeySpec = {
    "retry_timeout": (_is_nonneg_number, "a number of seconds >= 0"),
    "max_tries": (_is_int, "an integer"),
}
_BATCH: _KeySpec = {**_DISTRIBUTED, **_RETRY, "template": (_is_str, "a string (text or file)")}
_GRAPH: _KeySpec = {
    "template": (_is_str, "a string (text or file)"),
    "dont_resubmit_completed_jobs": (_is_bool, "true or false"),
}
_MULTIPROC: _KeySpec = {
    **_DISTRIBUTED,
    "n_procs": (_is_pos_int, "a positive integer"),
    "memory_gb": (_is_pos_number, "a positive number of GB"),
    "raise_insufficient": (_is_bool, "true or false"),
    "scheduler": (lambda v: v in ("tsort", "mem_thread"), "'tsort' or 'mem_thread'"),
}
_IPYTHON_KEYS = (
    "url_file",
    "profile",
    "cluster_id",
    "context",
    "debug",
    "timeout",
    "config",
    "username",
    "sshserver",
    "sshkey",
    "password",
    "paramiko",
)


@dataclass(frozen=True)
class PluginInfo:
    """What :func:`resolve_plugin` knows about one Nipype plugin.

    ``commands`` must be on ``PATH``; ``ping`` is a command that must exit 0 (the scheduler
    answers); ``module`` must be importable.  ``local`` plugins run on this machine and take
    ``--nprocs`` / ``--mem``.  ``blocking`` is False for the "graph" plugins that submit the
    whole graph as dependent jobs and return at once (see :func:`plugin_blocks`).
    """

    keys: _KeySpec
    commands: tuple[str, ...] = ()
    ping: tuple[str, ...] = ()
    module: str | None = None
    local: bool = False
    scheduler: str | None = None
    note: str = ""
    cli_usable: bool = True
    blocking: bool = True


PLUGINS: dict[str, PluginInfo] = {
    "Linear": PluginInfo(keys={}, local=True),
    "MultiProc": PluginInfo(
        keys={
            **_MULTIPROC,
            "n_gpu_procs": (_is_int, "an integer"),
            "mp_context": (
                lambda v: v in ("fork", "spawn", "forkserver"),
                "'fork', 'spawn' or 'forkserver'",
            ),
        },
        local=True,
    ),
    "LegacyMultiProc": PluginInfo(
        keys={
            **_MULTIPROC,
            "non_daemon": (_is_bool, "true or false"),
            "maxtasksperchild": (_is_pos_int, "a positive integer"),
        },
        local=True,
    ),
    "SLURM": PluginInfo(
        keys={
            **_BATCH,
            "sbatch_args": (_is_str, "a string of sbatch options"),
            "jobid_re": (_is_str, "a regular expression with one group"),
        },
        commands=("sbatch", "squeue"),
        ping=("sinfo", "--noheader", "--summarize"),
        scheduler="SLURM",
    ),
    "SLURMGraph": PluginInfo(
        keys={**_GRAPH, **_RETRY, "sbatch_args": (_is_str, "a string of sbatch options")},
        commands=("sbatch",),
        ping=("sinfo", "--noheader", "--summarize"),
        scheduler="SLURM",
        blocking=False,
    ),
    "SGE": PluginInfo(
        keys={
            **_BATCH,
            "qsub_args": (_is_str, "a string of qsub options"),
            "qstatProgramPath": (_is_str, "a path"),
            "qstatCachedProgramPath": (_is_str, "a path"),
        },
        commands=("qsub", "qstat"),
        ping=("qstat",),
        scheduler="SGE",
    ),
    "SGEGraph": PluginInfo(
        keys={**_GRAPH, "qsub_args": (_is_str, "a string of qsub options")},
        commands=("qsub",),
        ping=("qstat",),
        scheduler="SGE",
        blocking=False,
    ),
    "PBS": PluginInfo(
        keys={
            **_BATCH,
            "qsub_args": (_is_str, "a string of qsub options"),
            "max_jobname_len": (_is_pos_int, "a positive integer"),
        },
        commands=("qsub", "qstat"),
        ping=("qstat",),
        scheduler="PBS/Torque",
    ),
    "PBSGraph": PluginInfo(
        keys={**_GRAPH, "qsub_args": (_is_str, "a string of qsub options")},
        commands=("qsub",),
        ping=("qstat",),
        scheduler="PBS/Torque",
        blocking=False,
    ),
    "LSF": PluginInfo(
        keys={**_BATCH, "bsub_args": (_is_str, "a string of bsub options")},
        commands=("bsub", "bjobs"),
        ping=("lsid",),
        scheduler="LSF",
    ),
    "Condor": PluginInfo(
        keys={**_BATCH, "qsub_args": (_is_str, "a string of condor_qsub options")},
        commands=("condor_qsub", "condor_q"),
        ping=("condor_q",),
        scheduler="HTCondor",
    ),
    "CondorDAGMan": PluginInfo(
        keys={
            "submit_template": (_is_str, "a string (text or file)"),
            "template": (_is_str, "a string (deprecated: use initial_specs)"),
            "initial_specs": (_is_str, "a string (text or file)"),
            "submit_specs": (_is_str, "a string (deprecated: use override_specs)"),
            "override_specs": (_is_str, "a string (text or file)"),
            "wrapper_cmd": (_is_str, "a path"),
            "wrapper_args": (_is_str, "a string"),
            "block": (_is_bool, "true or false"),
            "dagman_args": (_is_str, "a string"),
        },
        commands=("condor_submit_dag",),
        ping=("condor_q",),
        scheduler="HTCondor",
        blocking=False,
    ),
    "OAR": PluginInfo(
        keys={
            **_BATCH,
            "oarsub_args": (_is_str, "a string of oarsub options"),
            "max_jobname_len": (_is_pos_int, "a positive integer"),
        },
        commands=("oarsub", "oarstat"),
        ping=("oarstat",),
        scheduler="OAR",
    ),
    "IPython": PluginInfo(
        keys={**_DISTRIBUTED, **{k: (lambda v: True, "any value") for k in _IPYTHON_KEYS}},
        module="ipyparallel",
        note="start a cluster first: `ipcluster start -n N`",
    ),
    "SomaFlow": PluginInfo(keys={}, module="soma_workflow"),
    "Debug": PluginInfo(
        keys={},
        cli_usable=False,
        note="it needs a Python callable in plugin_args, which a command line cannot carry",
    ),
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


def _nipype_plugin_class(name: str) -> type | None:
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
        # A plugin added to a newer Nipype that this table does not know yet: accept it,
        # without key validation, as long as Nipype has the class.
        if _nipype_plugin_class(key) is not None:
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
    if _nipype_plugin_class(canonical) is None:
        raise PluginError(
            f"--plugin {canonical}: the installed Nipype does not provide {canonical}Plugin."
        )
    return canonical


# --------------------------------------------------------------------------------------------
# Parsing


def _load_text(text: str, source: str) -> Any:
    """Parse JSON, falling back to YAML (a superset) when PyYAML is installed."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as json_exc:
        try:
            import yaml
        except ImportError:  # pragma: no cover - PyYAML comes with pybids/nipype
            raise PluginError(f"{source}: not valid JSON ({json_exc})") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PluginError(
                f"{source}: not valid JSON or YAML ({' '.join(str(exc).split())})"
            ) from None


def parse_plugin_args(
    text: str | Mapping[str, Any] | None, source: str = "--plugin-args"
) -> dict[str, Any]:
    """Parse ``--plugin-args``: a JSON (or YAML) mapping, or ``@FILE`` holding one.

    ``'{"sbatch_args": "-p short"}'``, ``'sbatch_args: -p short'`` and ``@args.json`` all
    give ``{"sbatch_args": "-p short"}``.  ``None`` or an empty string give ``{}``.
    """
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return _check_mapping(dict(text), source)
    if not isinstance(text, str):
        raise PluginError(f"{source}: expected a JSON mapping string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        return {}
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise PluginError(f"{source}: cannot read {str(path)!r}: {exc.strerror}") from None
        source = f"{source} {path}"
    value = _load_text(text, source)
    if value is None:
        return {}
    return _check_mapping(value, source)


def _check_mapping(value: Any, source: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise PluginError(
            f'{source}: expected a mapping such as \'{{"sbatch_args": "-p short"}}\', '
            f"got {type(value).__name__} {value!r}"
        )
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise PluginError(f"{source}: keys must be strings, got {bad!r}")
    return dict(value)


def load_plugin_file(path: str | os.PathLike[str]) -> tuple[str | None, dict[str, Any]]:
    """Read a ``--use-plugin`` YAML/JSON file: ``{plugin: NAME, plugin_args: {...}}``.

    Returns ``(plugin_name_or_None, plugin_args)``; names are not validated here.
    """
    p = Path(path).expanduser()
    source = f"--use-plugin {p}"
    try:
        text = p.read_text()
    except OSError as exc:
        raise PluginError(f"{source}: cannot read the file: {exc.strerror}") from None
    data = _load_text(text, source)
    if data is None:
        raise PluginError(
            f"{source}: the file is empty; expected {{plugin: NAME, plugin_args: {{...}}}}"
        )
    data = _check_mapping(data, source)
    unknown = sorted(set(data) - {"plugin", "plugin_args"})
    if unknown:
        raise PluginError(
            f"{source}: unknown top-level key(s) {', '.join(unknown)}; "
            "expected only 'plugin' and 'plugin_args'"
        )
    name = data.get("plugin")
    if name is not None and not isinstance(name, str):
        raise PluginError(f"{source}: 'plugin' must be a plugin name, got {name!r}")
    args = data.get("plugin_args")
    return name, ({} if args is None else _check_mapping(args, f"{source}: plugin_args"))


# --------------------------------------------------------------------------------------------
# Validation


def _looks_like_path(text: str) -> bool:
    return (
        "\n" not in text
        and not text.lstrip().startswith("#")
        and ("/" in text or text.endswith((".sh", ".tpl", ".template", ".txt", ".sub")))
    )


def validate_plugin_args(plugin: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``args`` against what Nipype's ``plugin`` reads; return a plain dict copy.

    Rejects keys the plugin ignores (with a "did you mean"), values of the wrong type,
    template files that do not exist and ``jobid_re`` patterns that do not compile.
    """
    args = dict(args)
    info = PLUGINS.get(plugin)
    if info is None:  # a plugin unknown to this table (newer Nipype): pass through
        return args
    if "status_callback" in args:
        raise PluginError(
            f"--plugin-args for {plugin}: 'status_callback' needs a Python "
            "callable and cannot be given on the command line"
        )
    for key, value in args.items():
        if key not in info.keys:
            close = difflib.get_close_matches(key, list(info.keys), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(info.keys)) or "none"
            raise PluginError(
                f"--plugin-args for {plugin}: unknown key {key!r} (Nipype would silently "
                f"ignore it).{hint} {plugin} reads: {known}."
            )
        check, expected = info.keys[key]
        if not check(value):
            raise PluginError(
                f"--plugin-args for {plugin}: {key!r} must be {expected}, got {value!r}"
            )
    for key in ("template", "submit_template", "initial_specs", "override_specs"):
        value = args.get(key)
        if isinstance(value, str) and _looks_like_path(value) and not Path(value).is_file():
            raise PluginError(
                f"--plugin-args for {plugin}: {key} file {value!r} does not exist "
                "(give an existing file or the template text itself)"
            )
    if "jobid_re" in args:
        try:
            groups = re.compile(args["jobid_re"]).groups
        except re.error as exc:
            raise PluginError(
                f"--plugin-args for {plugin}: jobid_re does not compile: {exc}"
            ) from None
        if groups < 1:
            raise PluginError(
                f"--plugin-args for {plugin}: jobid_re needs a group capturing "
                "the job id, e.g. 'Submitted batch job ([0-9]*)'"
            )
    return args


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
        try:
            proc = run(
                [exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise PluginError(
                f"--plugin {plugin}: {info.scheduler} does not answer: "
                f"`{' '.join(cmd)}` timed out after {timeout:g} s"
            ) from None
        except OSError as exc:
            raise PluginError(f"--plugin {plugin}: cannot run `{' '.join(cmd)}`: {exc}") from None
        if proc.returncode != 0:
            detail = " ".join((proc.stderr or proc.stdout or "").split())[:300]
            raise PluginError(
                f"--plugin {plugin}: {info.scheduler} is not reachable: `{' '.join(cmd)}` "
                f"exited with {proc.returncode}" + (f": {detail}" if detail else "")
            )
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
    try:
        proc = run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise PluginError(f"--plugin {plugin}: `{shown}` timed out after {timeout:g} s") from None
    except OSError as exc:
        raise PluginError(f"--plugin {plugin}: cannot run `{shown}`: {exc}") from None
    if proc.returncode != 0:
        detail = " ".join((proc.stderr or proc.stdout or "").split())[:300]
        raise PluginError(
            f"--plugin {plugin}: SLURM would reject the jobs (sbatch_args {sbatch_args!r}): "
            f"`{shown}` exited with {proc.returncode}" + (f": {detail}" if detail else "")
        )


# --------------------------------------------------------------------------------------------
# The one call the CLI makes


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

    if nprocs is not None and (not _is_pos_int(nprocs)):
        raise PluginError(f"--nprocs must be a positive integer, got {nprocs!r}")
    if mem_gb is not None and not _is_pos_number(mem_gb):
        raise PluginError(f"--mem must be a positive amount of memory, got {mem_gb!r}")

    info = PLUGINS.get(name)
    if info is not None and info.local and name != "Linear":
        if nprocs is not None:
            args["n_procs"] = nprocs
        args.setdefault("n_procs", _default_nprocs())
        if mem_gb is not None:
            args["memory_gb"] = float(mem_gb)
        args.setdefault("memory_gb", _default_mem_gb())
        args.setdefault("raise_insufficient", False)
    if name == "SLURMGraph":
        # nipype 1.11 SLURMGraphPlugin sets this attribute only when plugin_args is non-empty
        # and otherwise dies with AttributeError at submission.
        args.setdefault("dont_resubmit_completed_jobs", False)

    args = validate_plugin_args(name, args)
    if check:
        check_scheduler(name, args)
    if name == "SLURM" and not os.environ.get("LOGNAME"):
        # Nipype's SLURM plugin names jobs after os.environ["LOGNAME"] and dies with a bare
        # KeyError -- mid-run -- where it is unset (cron, some containers and batch shells).
        os.environ["LOGNAME"] = _user_name()
    return name, args


def _user_name() -> str:
    """Login name of this process, or its uid when the uid has no passwd entry."""
    try:
        import getpass

        return getpass.getuser()
    except (KeyError, OSError, ImportError):
        return str(os.getuid())


def _default_nprocs() -> int:
    """CPUs this process may use (affinity/cgroup cpuset aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _default_mem_gb() -> float:
    """90 % of the memory this process may use: the cgroup limit if set, else system RAM."""
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        total = 4.0
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            total = min(total, int(raw) / 1024**3)
        break
    return round(0.9 * total, 2)


# --------------------------------------------------------------------------------------------
# Containers


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
