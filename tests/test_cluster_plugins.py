"""Nipype execution plugins (``synflow.cli.plugins``), fast: no scheduler, no synflow run.

``--plugin`` / ``--plugin-args`` / ``--use-plugin`` are parsed and validated before any work
starts, with errors naming the plugin and what is wrong; scheduler probes run against fake
commands (``fake_commands`` in conftest.py); the resolved arguments drive a real Nipype run
with the local plugins.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
from pathlib import Path

import pytest

from synflow.cli import plugins
from synflow.cli.plugins import (
    PLUGINS,
    PluginError,
    check_scheduler,
    container_mount_hint,
    load_plugin_file,
    parse_plugin_args,
    plugin_environment,
    plugin_keys,
    resolve_plugin,
    resolve_plugin_name,
    validate_plugin_args,
)

# the plugin table agrees with the installed Nipype


def test_plugin_table_matches_nipype() -> None:
    """Every plugin we list exists in Nipype, and every Nipype plugin is listed."""
    import nipype.pipeline.plugins as nipype_plugins

    nipype_names = {
        name[: -len("Plugin")]
        for name, obj in vars(nipype_plugins).items()
        if name.endswith("Plugin") and inspect.isclass(obj)
    }
    assert set(PLUGINS) <= nipype_names, set(PLUGINS) - nipype_names
    assert nipype_names <= set(PLUGINS), f"new Nipype plugin(s): {nipype_names - set(PLUGINS)}"


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_known_keys_are_read_by_nipype(name: str) -> None:
    """Each accepted plugin_args key appears in the plugin's (or a base class's) source."""
    import nipype.pipeline.plugins as nipype_plugins

    cls = getattr(nipype_plugins, f"{name}Plugin")
    source = "".join(
        inspect.getsource(klass) for klass in cls.__mro__ if klass.__module__.startswith("nipype")
    )
    for key in plugin_keys(name):
        assert f'"{key}"' in source or f"'{key}'" in source, f"{name} never reads {key!r}"


# --------------------------------------------------------------------------------------------
# plugin names


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("MultiProc", "MultiProc"),
        ("multiproc", "MultiProc"),
        ("slurm", "SLURM"),
        ("SLURMPlugin", "SLURM"),
        ("slurmgraph", "SLURMGraph"),
        ("DAGMan", "CondorDAGMan"),
        ("sgegraph", "SGEGraph"),
        (" Linear ", "Linear"),
    ],
)
def test_plugin_names_are_case_insensitive(given: str, expected: str) -> None:
    assert resolve_plugin_name(given) == expected


def test_unknown_plugin_is_rejected_with_suggestion() -> None:
    with pytest.raises(PluginError, match=r"'SLRUM'.*no such execution plugin.*Did you mean SLURM"):
        resolve_plugin_name("SLRUM")
    with pytest.raises(PluginError, match="Available: .*MultiProc"):
        resolve_plugin("Kubernetes", check=False)


def test_plugin_error_is_a_value_error() -> None:
    assert issubclass(PluginError, ValueError)


def test_debug_plugin_needs_a_callable() -> None:
    with pytest.raises(PluginError, match="Debug.*callable"):
        resolve_plugin("Debug", check=False)


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_empty_plugin_name(bad: object) -> None:
    with pytest.raises(PluginError, match="--plugin"):
        resolve_plugin_name(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# --plugin-args


def test_plugin_args_json_yaml_and_file(tmp_path: Path) -> None:
    expected = {"sbatch_args": "-p short"}
    assert parse_plugin_args('{"sbatch_args": "-p short"}') == expected
    assert parse_plugin_args("sbatch_args: -p short") == expected
    assert parse_plugin_args("{sbatch_args: -p short}") == expected
    f = tmp_path / "args.json"
    f.write_text(json.dumps(expected))
    assert parse_plugin_args(f"@{f}") == expected
    assert parse_plugin_args(None) == {}
    assert parse_plugin_args("  ") == {}
    assert parse_plugin_args("null") == {}
    assert parse_plugin_args({"n_procs": 2}) == {"n_procs": 2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('["-p", "short"]', "expected a mapping"),
        ('"-p short"', "expected a mapping"),
        ("42", "expected a mapping"),
        ('{"sbatch_args": ', "not valid JSON or YAML"),
        ("{1: 2}", "keys must be strings"),
        ("@/nonexistent/args.json", "cannot read"),
    ],
)
def test_plugin_args_must_be_a_mapping(text: str, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        parse_plugin_args(text)


def test_unknown_key_is_rejected_with_suggestion() -> None:
    # Nipype would silently ignore this typo and submit without the partition.
    with pytest.raises(PluginError, match=r"SLURM: unknown key 'sbatch_arg'.*'sbatch_args'"):
        validate_plugin_args("SLURM", {"sbatch_arg": "-p short"})
    with pytest.raises(PluginError, match="MultiProc: unknown key 'nprocs'.*'n_procs'"):
        resolve_plugin("MultiProc", '{"nprocs": 2}', check=False)
    # keys valid for one plugin are not silently accepted by another
    with pytest.raises(PluginError, match="SGE: unknown key 'sbatch_args'"):
        validate_plugin_args("SGE", {"sbatch_args": "-p short"})


@pytest.mark.parametrize(
    ("plugin", "args", "message"),
    [
        ("MultiProc", {"n_procs": 0}, "'n_procs' must be a positive integer"),
        ("MultiProc", {"n_procs": "4"}, "'n_procs' must be a positive integer"),
        ("MultiProc", {"n_procs": True}, "'n_procs' must be a positive integer"),
        ("MultiProc", {"memory_gb": -1}, "'memory_gb' must be a positive number"),
        ("MultiProc", {"raise_insufficient": "no"}, "'raise_insufficient' must be true or false"),
        ("MultiProc", {"mp_context": "threads"}, "'mp_context' must be"),
        ("MultiProc", {"scheduler": "fifo"}, "'scheduler' must be"),
        ("SLURM", {"sbatch_args": ["-p", "short"]}, "'sbatch_args' must be a string"),
        ("SLURM", {"max_jobs": 0}, "'max_jobs' must be a positive integer"),
        ("SLURM", {"retry_timeout": -2}, "'retry_timeout' must be"),
        ("SLURM", {"template": "/no/such/template.sh"}, "template file '/no/such/"),
        ("SLURM", {"jobid_re": "Submitted batch job [0-9]*"}, "jobid_re needs a group"),
        ("SLURM", {"jobid_re": "([0-9]"}, "jobid_re does not compile"),
        ("SLURM", {"status_callback": "x"}, "status_callback"),
        ("SGEGraph", {"dont_resubmit_completed_jobs": 1}, "must be true or false"),
    ],
)
def test_bad_plugin_arg_values(plugin: str, args: dict, message: str) -> None:
    with pytest.raises(PluginError, match=message) as info:
        validate_plugin_args(plugin, args)
    assert plugin in str(info.value)


def test_template_text_and_file_are_accepted(tmp_path: Path) -> None:
    tpl = tmp_path / "job.sh"
    tpl.write_text("#!/bin/bash\nmodule load python\n")
    assert validate_plugin_args("SLURM", {"template": str(tpl)})["template"] == str(tpl)
    text = "#!/bin/bash\n#SBATCH --qos=normal\n"
    assert validate_plugin_args("SLURM", {"template": text})["template"] == text


# --------------------------------------------------------------------------------------------
# --use-plugin FILE (fMRIPrep format)


def test_use_plugin_file_fmriprep_format(tmp_path: Path, no_container: None) -> None:
    f = tmp_path / "plugin.yml"
    f.write_text("plugin: MultiProc\nplugin_args:\n  n_procs: 3\n  memory_gb: 5\n")
    assert load_plugin_file(f) == ("MultiProc", {"n_procs": 3, "memory_gb": 5})
    name, args = resolve_plugin(use_plugin_file=f)
    assert name == "MultiProc"
    assert args == {"n_procs": 3, "memory_gb": 5, "raise_insufficient": False}
    # explicit --nprocs / --mem and --plugin-args override the file (fMRIPrep precedence)
    name, args = resolve_plugin(None, '{"raise_insufficient": true}', f, nprocs=2, mem_gb=1.5)
    assert args == {"n_procs": 2, "memory_gb": 1.5, "raise_insufficient": True}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ("- MultiProc\n", "expected a mapping"),
        ("plugin: MultiProc\nargs: {}\n", "unknown top-level key.*args"),
        ("plugin: [a]\n", "'plugin' must be a plugin name"),
        ("plugin: SLURM\nplugin_args: -p short\n", "plugin_args: expected a mapping"),
        ("plugin: SLURM\nplugin_args: {sbatch_args: 1\n", "not valid JSON or YAML"),
        ("plugin: Torque9\n", "Torque9.*no such execution plugin"),
    ],
)
def test_bad_use_plugin_file(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "plugin.yml"
    f.write_text(content)
    with pytest.raises(PluginError, match=message) as info:
        resolve_plugin(use_plugin_file=f, check=False)
    if "no such" not in message:
        assert str(f) in str(info.value)


def test_missing_use_plugin_file(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match=r"--use-plugin .*missing\.yml: cannot read"):
        resolve_plugin(use_plugin_file=tmp_path / "missing.yml")


def test_plugin_conflicts_with_file(tmp_path: Path) -> None:
    f = tmp_path / "plugin.yml"
    f.write_text("plugin: SLURM\n")
    with pytest.raises(PluginError, match="--plugin MultiProc conflicts with plugin 'SLURM'"):
        resolve_plugin("MultiProc", use_plugin_file=f, check=False)
    # the same plugin spelled differently is not a conflict
    assert resolve_plugin("slurm", use_plugin_file=f, check=False) == ("SLURM", {})


# --------------------------------------------------------------------------------------------
# local plugins: --nprocs / --mem


def test_default_is_multiproc_with_explicit_resources(no_container: None) -> None:
    name, args = resolve_plugin()
    assert name == "MultiProc"
    assert args["n_procs"] == len(os.sched_getaffinity(0))
    assert 0 < args["memory_gb"]
    assert args["raise_insufficient"] is False
    assert resolve_plugin(nprocs=1, mem_gb=2)[1] == {
        "n_procs": 1,
        "memory_gb": 2.0,
        "raise_insufficient": False,
    }


@pytest.mark.parametrize(("nprocs", "mem_gb"), [(0, None), (-1, None), (None, 0), (None, -3.0)])
def test_bad_resources(nprocs: int | None, mem_gb: float | None) -> None:
    with pytest.raises(PluginError, match="--nprocs|--mem"):
        resolve_plugin(nprocs=nprocs, mem_gb=mem_gb)


def test_linear_and_schedulers_take_no_local_resources() -> None:
    assert resolve_plugin("Linear", nprocs=4, mem_gb=8) == ("Linear", {})
    assert resolve_plugin("SLURM", nprocs=4, mem_gb=8, check=False) == ("SLURM", {})


def test_graph_plugins_do_not_block() -> None:
    from synflow.cli.plugins import plugin_blocks

    for name in ("Linear", "MultiProc", "SLURM", "SGE", "PBS", "LSF", "Condor", "OAR"):
        assert plugin_blocks(name), name
    for name in ("SLURMGraph", "SGEGraph", "PBSGraph", "CondorDAGMan"):
        assert not plugin_blocks(name), name
    assert plugin_blocks("CondorDAGMan", {"block": True})


def test_slurmgraph_gets_nipype_workaround() -> None:
    # nipype 1.11 SLURMGraphPlugin() raises AttributeError at submission without this key
    assert resolve_plugin("SLURMGraph", check=False) == (
        "SLURMGraph",
        {"dont_resubmit_completed_jobs": False},
    )


def test_legacy_multiproc_keys() -> None:
    name, args = resolve_plugin("LegacyMultiProc", '{"maxtasksperchild": 1}', nprocs=2, mem_gb=1)
    assert name == "LegacyMultiProc"
    assert args["maxtasksperchild"] == 1 and args["n_procs"] == 2


# --------------------------------------------------------------------------------------------
# schedulers must be reachable before any work starts


def test_scheduler_commands_missing(fake_commands, no_container: None) -> None:
    fake_commands()  # empty PATH: no sbatch anywhere
    with pytest.raises(PluginError, match=r"--plugin SLURM: SLURM command\(s\) sbatch, squeue"):
        resolve_plugin("SLURM", '{"sbatch_args": "-p short"}')
    with pytest.raises(PluginError, match=r"--plugin SGE: SGE command\(s\) qsub, qstat"):
        resolve_plugin("SGE")
    with pytest.raises(PluginError, match=r"--plugin PBS: PBS/Torque command\(s\) qsub"):
        resolve_plugin("PBS")
    with pytest.raises(PluginError, match=r"--plugin LSF: LSF command\(s\) bsub, bjobs"):
        resolve_plugin("LSF")
    with pytest.raises(PluginError, match="condor_submit_dag"):
        resolve_plugin("DAGMan")
    with pytest.raises(PluginError, match="oarsub, oarstat"):
        resolve_plugin("OAR")


def test_scheduler_not_answering(fake_commands) -> None:
    fake_commands(
        sbatch="exit 0",
        squeue="exit 0",
        sinfo="echo 'slurm_load_partitions: Unable to contact slurm controller' >&2; exit 1",
    )
    with pytest.raises(PluginError, match=r"SLURM is not reachable: `sinfo.*exited with 1.*Unable"):
        resolve_plugin("SLURM")


def test_scheduler_answering(fake_commands, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_commands(sbatch="exit 0", squeue="exit 0", sinfo="echo 'debug up 1 idle'")
    monkeypatch.delenv("LOGNAME", raising=False)
    args = '{"sbatch_args": "-p short --mem 4G", "max_jobs": 10}'
    assert resolve_plugin("SLURM", args) == (
        "SLURM",
        {"sbatch_args": "-p short --mem 4G", "max_jobs": 10},
    )
    assert "LOGNAME" not in os.environ  # checking the plugin changes no environment
    with plugin_environment("SLURM"):
        assert os.environ["LOGNAME"]  # Nipype's SLURM plugin needs it, around run() only
    assert "LOGNAME" not in os.environ


def test_sbatch_test_only_rejects(fake_commands) -> None:
    fake_commands(
        sbatch='echo "sbatch: error: invalid partition specified: $2" >&2; exit 1',
        squeue="exit 0",
        sinfo="exit 0",
    )
    with pytest.raises(
        PluginError,
        match=r"SLURM would reject the jobs \(sbatch_args '-p gpu'\): `sbatch --test-only -p gpu"
        r" --wrap=true` exited with 1: sbatch: error: invalid partition specified: -p",
    ):
        resolve_plugin("SLURM", '{"sbatch_args": "-p gpu"}')
    with pytest.raises(PluginError, match="sbatch_args '-p \"short': No closing quotation"):
        resolve_plugin("SLURMGraph", '{"sbatch_args": "-p \\"short"}')


def test_scheduler_timeout() -> None:
    def which(cmd: str) -> str:
        return f"/fake/{cmd}"

    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])  # type: ignore[arg-type]

    with pytest.raises(PluginError, match=r"SGE does not answer: `qstat` timed out after 3 s"):
        check_scheduler("SGE", which=which, run=run, timeout=3)


def test_local_plugins_need_no_scheduler(fake_commands) -> None:
    fake_commands()
    for name in ("Linear", "MultiProc", "LegacyMultiProc"):
        check_scheduler(name)


def test_optional_python_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ipyparallel" else real_find_spec(name, *a),
    )
    with pytest.raises(PluginError, match="IPython: the Python package 'ipyparallel'.*ipcluster"):
        resolve_plugin("IPython", '{"profile": "default"}')


def test_scheduler_missing_inside_container(
    fake_commands, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_commands()
    monkeypatch.setenv(plugins.CONTAINER_ENV, "1")
    with pytest.raises(PluginError, match="container image, which has no scheduler client"):
        resolve_plugin("SLURM")


# --------------------------------------------------------------------------------------------
# container mount hint


def test_container_mount_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(plugins.CONTAINER_ENV, raising=False)
    assert container_mount_hint("/data/bids") == ""
    monkeypatch.setenv(plugins.CONTAINER_ENV, "0")
    assert container_mount_hint("/data/bids") == ""
    monkeypatch.setenv(plugins.CONTAINER_ENV, "1")
    missing = tmp_path / "data" / "bids"
    hint = container_mount_hint(missing)
    assert f"{missing} does not exist inside the container" in hint
    assert f"deepest existing parent: {tmp_path}" in hint
    assert f"-v /host/path/to/data:{missing}:ro" in hint
    assert f"-B /host/path/to/data:{missing}:ro" in hint
    monkeypatch.chdir(tmp_path)
    assert str(tmp_path / "rel") in container_mount_hint("rel")
    # the work and output directories: writable binds, no ':ro', '..' resolved
    hint = container_mount_hint("/out/../work", "work")
    assert hint.startswith("\n/work ")
    assert ":ro" not in hint.replace("/data:ro", "").replace("no ':ro'", "")
    assert "-v /host/path/to/work:/work" in hint and "participant -w /work" in hint
    assert "-B /host/path/to/out:/out" in container_mount_hint("/out", "output")
    with pytest.raises(ValueError, match="role"):
        container_mount_hint("/x", "scratch")


# --------------------------------------------------------------------------------------------
# the resolved arguments really drive Nipype

@pytest.mark.parametrize("plugin", ["Linear", "MultiProc"])
def test_resolved_plugin_runs_a_workflow(
    tmp_path: Path, plugin: str, no_container: None, two_node_workflow
) -> None:
    name, args = resolve_plugin(plugin, nprocs=2, mem_gb=1)
    graph = two_node_workflow(tmp_path, 20).run(plugin=name, plugin_args=args)
    assert two_node_workflow.results(graph) == {"double": 40, "plus_one": 41}


# --------------------------------------------------------------------------------------------
# real SLURM (single node on localhost)


class _FuturePlugin:
    """Stands for a plugin of a newer Nipype, reading a key no table lists."""

    def __init__(self, plugin_args=None):
        self.plugin_args = plugin_args or {}
        self.burst = self.plugin_args.get("burst_limit", 1)


def test_keys_of_a_newer_nipype_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys come from the installed Nipype's source, not from a copy of one version's."""
    import nipype.pipeline.plugins as nipype_plugins

    monkeypatch.setattr(nipype_plugins, "FuturePlugin", _FuturePlugin, raising=False)
    plugin_keys.cache_clear()
    try:
        assert plugin_keys("Future") == {"burst_limit"}
        assert validate_plugin_args("Future", {"burst_limit": 4}) == {"burst_limit": 4}
        with pytest.raises(PluginError, match="Future: unknown key 'burst_limt'.*'burst_limit'"):
            validate_plugin_args("Future", {"burst_limt": 4})
    finally:
        plugin_keys.cache_clear()
