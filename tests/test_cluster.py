"""Scale-out through Nipype execution plugins (``synflow.cli.plugins``) and a real SLURM run.

Fast unit tests check that ``--plugin`` / ``--plugin-args`` / ``--use-plugin`` are parsed and
validated before any work starts, with errors naming the plugin and what is wrong.

``@pytest.mark.slurm`` tests start a throw-away single-node SLURM cluster on localhost
(``docker/slurm/start-local-slurm.sh``: munged + slurmctld + slurmd) and run Nipype workflows
through ``plugin="SLURM"`` (one ``sbatch`` job per node).  They are skipped, with the reason,
when slurm-wlm/munge are not installed, when not root, or when the cluster does not come up.
``python -m pytest -m slurm tests/test_cluster.py`` runs them all (~75 s on 2 cores, the
synflow command on the demo participant included); the one that is also ``slow`` is that
synflow run (~45 s).  Deselect them with ``-m "not slurm"``.

The command-line tests run ``synflow`` in a fresh interpreter: bad ``--plugin`` /
``--plugin-args`` / unreachable or rejecting schedulers give exit code 64 before any output
or work folder exists, and outputs are bit-identical for ``--nprocs 1 --omp-nthreads 1`` and
``--nprocs 2 --omp-nthreads 2`` (two participants in parallel).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
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

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "docker" / "slurm"


# --------------------------------------------------------------------------------------------
# helpers


def _fake_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **scripts: str) -> Path:
    """Put executable shell scripts NAME (body = scripts[NAME]) first on PATH... and only them.

    PATH is replaced (plus /bin and /usr/bin for `sh` itself), so real scheduler clients on
    the machine cannot leak into the test.
    """
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        exe = bindir / name
        exe.write_text(f"#!/bin/sh\n{body}\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}")
    return bindir


@pytest.fixture
def no_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(plugins.CONTAINER_ENV, raising=False)


# --------------------------------------------------------------------------------------------
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


def test_scheduler_commands_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_container: None
) -> None:
    _fake_commands(tmp_path, monkeypatch)  # empty PATH: no sbatch anywhere
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


def test_scheduler_not_answering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_commands(
        tmp_path,
        monkeypatch,
        sbatch="exit 0",
        squeue="exit 0",
        sinfo="echo 'slurm_load_partitions: Unable to contact slurm controller' >&2; exit 1",
    )
    with pytest.raises(PluginError, match=r"SLURM is not reachable: `sinfo.*exited with 1.*Unable"):
        resolve_plugin("SLURM")


def test_scheduler_answering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_commands(
        tmp_path, monkeypatch, sbatch="exit 0", squeue="exit 0", sinfo="echo 'debug up 1 idle'"
    )
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


def test_sbatch_test_only_rejects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_commands(
        tmp_path,
        monkeypatch,
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


def test_local_plugins_need_no_scheduler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_commands(tmp_path, monkeypatch)
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_commands(tmp_path, monkeypatch)
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


# --------------------------------------------------------------------------------------------
# the resolved arguments really drive Nipype


def _double(x: int) -> int:
    return 2 * x


def _plus_one(x: int) -> int:
    return x + 1


def _two_node_workflow(base_dir: Path, value: int):
    """``(value * 2) + 1`` as two Nipype Function nodes (each may run in its own job)."""
    from nipype import Function, Node, Workflow

    double = Node(Function(["x"], ["out"], _double), name="double")
    double.inputs.x = value
    plus_one = Node(Function(["x"], ["out"], _plus_one), name="plus_one")
    wf = Workflow(name=f"wf_{uuid.uuid4().hex[:8]}", base_dir=str(base_dir))
    wf.connect(double, "out", plus_one, "x")
    return wf


def _results(graph) -> dict[str, int]:
    return {node.name: node.result.outputs.out for node in graph.nodes()}


@pytest.mark.parametrize("plugin", ["Linear", "MultiProc"])
def test_resolved_plugin_runs_a_workflow(tmp_path: Path, plugin: str, no_container: None) -> None:
    name, args = resolve_plugin(plugin, nprocs=2, mem_gb=1)
    graph = _two_node_workflow(tmp_path, 20).run(plugin=name, plugin_args=args)
    assert _results(graph) == {"double": 40, "plus_one": 41}


# --------------------------------------------------------------------------------------------
# real SLURM (single node on localhost)


def _slurm_skip_reason() -> str | None:
    missing = [
        c for c in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo") if not shutil.which(c)
    ]
    if missing:
        return (
            f"SLURM not installed ({', '.join(missing)} missing; apt-get install slurm-wlm munge)"
        )
    if os.geteuid() != 0:
        return "starting a local SLURM cluster needs root (slurmd runs jobs as the submitter)"
    return None


def _free_port_pair() -> int:
    """A TCP port P on 127.0.0.1 such that P and P + 1 are both free right now."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two consecutive free TCP ports")


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment (SLURM_CONF...) of a running single-node cluster; started for this module.

    Reuses an already running cluster when ``$SLURM_CONF`` is set and ``sinfo`` answers.
    """
    if os.environ.get("SLURM_CONF") and shutil.which("sinfo"):
        probe = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=20)
        if probe.returncode == 0:
            yield dict(os.environ)
            return
    reason = _slurm_skip_reason()
    if reason:
        pytest.skip(reason)
    # Short path: the munge socket path must fit in a sockaddr_un (108 bytes).
    state = Path(f"/tmp/synflow-slurm-{uuid.uuid4().hex[:8]}")
    # Free ports (slurmctld, slurmd = +1): another test run may have a cluster up.
    env = dict(os.environ, SLURM_PORT=str(_free_port_pair()), SLURM_WAIT="60")
    env.pop("SLURM_CONF", None)
    start = subprocess.run(
        ["bash", str(SLURM_DIR / "start-local-slurm.sh"), str(state)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    try:
        if start.returncode != 0:
            pytest.skip(
                "local SLURM cluster did not start: "
                + " ".join((start.stderr or start.stdout).split())[-800:]
            )
        env = dict(os.environ, SLURM_CONF=str(state / "etc" / "slurm.conf"))
        yield env
    finally:
        subprocess.run(
            ["bash", str(SLURM_DIR / "stop-local-slurm.sh"), str(state), "--purge"],
            capture_output=True,
            timeout=120,
            check=False,
        )


@pytest.mark.slurm
def test_slurm_plugin_runs_nodes_as_sbatch_jobs(
    slurm_cluster: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_container: None,
) -> None:
    monkeypatch.setenv("SLURM_CONF", slurm_cluster["SLURM_CONF"])
    # The batch jobs re-run this interpreter; they must import this test module's functions.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), *sys.path])))
    name, args = resolve_plugin(
        "slurm", '{"sbatch_args": "--mem=256M --time=5", "retry_timeout": 1, "max_tries": 5}'
    )
    assert name == "SLURM"

    with plugin_environment(name):
        graph = _two_node_workflow(tmp_path, 20).run(plugin=name, plugin_args=args)

    assert _results(graph) == {"double": 40, "plus_one": 41}
    # Every node ran as its own sbatch job: Nipype writes one slurm-<jobid>.out per job.
    job_logs = sorted((tmp_path).glob("wf_*/batch/slurm-*.out"))
    assert len(job_logs) == 2, job_logs
    scripts = sorted(tmp_path.glob("wf_*/batch/batchscript_*.sh"))
    assert len(scripts) == 2


@pytest.mark.slurm
def test_slurmgraph_submits_dependent_jobs(
    slurm_cluster: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_container: None,
) -> None:
    """SLURMGraph submits the graph with afterok dependencies and returns at once."""
    from nipype.utils.filemanip import loadpkl

    from synflow.cli.plugins import plugin_blocks

    monkeypatch.setenv("SLURM_CONF", slurm_cluster["SLURM_CONF"])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), *sys.path])))
    name, args = resolve_plugin("SLURMGraph", '{"sbatch_args": "--mem=256M --time=5"}')
    assert not plugin_blocks(name, args)
    wf = _two_node_workflow(tmp_path, 7)
    with plugin_environment(name):
        wf.run(plugin=name, plugin_args=args)

    result = tmp_path / wf.name / "plus_one" / "result_plus_one.pklz"
    deadline = time.monotonic() + 180
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert result.exists(), "SLURMGraph jobs did not finish within 180 s"
    time.sleep(0.5)  # let the job finish writing
    assert loadpkl(str(result)).outputs.out == 15


@pytest.mark.slurm
@pytest.mark.parametrize(
    ("sbatch_args", "message"),
    [
        ("-p no_such_partition", "invalid partition"),
        ("--mem=100000G", "node configuration is not available"),
        ("--no-such-option", "unrecognized option"),
    ],
)
def test_slurm_rejected_sbatch_args_fail_before_work(
    slurm_cluster: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    sbatch_args: str,
    message: str,
) -> None:
    """Nipype itself would die with a bare IndexError at the first submission."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster["SLURM_CONF"])
    with pytest.raises(PluginError, match=f"SLURM would reject the jobs.*{message}"):
        resolve_plugin("SLURM", json.dumps({"sbatch_args": sbatch_args}))


# --------------------------------------------------------------------------------------------
# the synflow command


def _synflow_cli_or_skip():
    try:
        from synflow.cli._testing import make_small_bids, make_small_reference
        from synflow.cli.run import main  # noqa: F401
        from synflow.data.demo import make_demo_dataset
    except ImportError as exc:
        pytest.skip(f"synflow CLI / demo dataset not available: {exc}")
    return make_demo_dataset, make_small_bids, make_small_reference


from synflow.cli._testing import CHEAP_CLI  # noqa: E402


@pytest.fixture(scope="module")
def demo_bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo BIDS dataset with one participant (2 mm, whole head), made once."""
    make_demo_dataset, _, _ = _synflow_cli_or_skip()
    bids = tmp_path_factory.mktemp("demo") / "bids"
    make_demo_dataset(bids, n_participants=1, seed=0)
    return bids


@pytest.fixture(scope="module")
def small_bids(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4 mm two-participant dataset and its 4 mm reference: a whole run in seconds."""
    _, make_small_bids, make_small_reference = _synflow_cli_or_skip()
    root = tmp_path_factory.mktemp("small")
    return {
        "bids": make_small_bids(root / "bids", subjects=("01", "02"), seed=3),
        "ref": make_small_reference(root / "ref4mm.nii.gz"),
    }


#: One participant and a very short SyN schedule: the whole pipeline, quickly.
FAST = ["--participant-label", "01", "--level-iters", "2", "2", "1"]


def _run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``synflow ARGS`` in a fresh interpreter (as the console script would run it)."""
    code = "import sys; from synflow.cli.run import main; sys.exit(main())"
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )


def _digest_file(f: Path) -> str:
    """sha256 of a file's *content*: gzip members decompressed, HDF5 walked.

    The containers carry their own metadata (gzip mtime, HDF5 object times and layout) that
    says nothing about the result, so the data itself is hashed.
    """
    h = hashlib.sha256()
    if f.name.endswith(".gz"):
        h.update(gzip.decompress(f.read_bytes()))
    elif f.suffix == ".h5":
        import h5py

        with h5py.File(f, "r") as h5:

            def visit(name: str, obj) -> None:
                h.update(name.encode())
                for key in sorted(obj.attrs):
                    h.update(key.encode() + repr(obj.attrs[key]).encode())
                if isinstance(obj, h5py.Dataset):
                    h.update(str(obj.dtype).encode() + repr(obj.shape).encode())
                    data = obj[()]
                    if getattr(data, "dtype", None) is not None and data.dtype.kind != "O":
                        h.update(data.tobytes())
                    else:  # strings (TransformType): the values, not object pointers
                        h.update(repr(data.tolist() if hasattr(data, "tolist") else data).encode())

            h5.visititems(visit)
    else:
        h.update(f.read_bytes())
    return h.hexdigest()


def _tree_digest(root: Path) -> dict[str, str]:
    """Content digests of the data files (images, transforms, tables) of a derivatives tree.

    JSON sidecars and SVG/HTML reports are left out: they record timings and run ids.
    """
    out = {}
    for f in sorted(root.rglob("*")):
        in_logs = any(part in ("log", "logs") for part in f.relative_to(root).parts)
        if f.is_file() and f.suffix in {".gz", ".h5", ".txt", ".tsv"} and not in_logs:
            out[str(f.relative_to(root))] = _digest_file(f)
    return out


def _fake_scheduler_env(tmp_path: Path, **scripts: str) -> dict[str, str]:
    """Environment whose PATH has only fake scheduler commands (and /usr/bin, /bin)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        exe = bindir / name
        exe.write_text(f"#!/bin/sh\n{body}\n")
        exe.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    env.pop("SLURM_CONF", None)
    env.pop(plugins.CONTAINER_ENV, None)
    return env


_UNREACHABLE_SLURM = {
    "sbatch": "exit 0",
    "squeue": "exit 0",
    "sinfo": "echo 'slurm_load_partitions: Unable to contact slurm controller "
    "(connect failure)' >&2; exit 1",
}
_REJECTING_SLURM = {
    "sbatch": 'echo "sbatch: error: invalid partition specified: gpu" >&2; exit 1',
    "squeue": "exit 0",
    "sinfo": "echo 'debug* up infinite 1 idle localhost'",
}


@pytest.mark.parametrize(
    ("flags", "scheduler", "message"),
    [
        (["--plugin", "SLRUM"], None, "'SLRUM': Nipype has no such execution plugin"),
        (["--plugin", "MultiProc", "--plugin-args", "[1, 2]"], None, "expected a mapping"),
        (["--plugin-args", '{"nprocs": 2}'], None, "unknown key 'nprocs'"),
        (["--plugin", "SLURM", "--plugin-args", "{sbatch_arg: -p short}"], None,
         "unknown key 'sbatch_arg'"),
        (["--plugin", "SLURM"], _UNREACHABLE_SLURM,
         "SLURM is not reachable: `sinfo --noheader --summarize` exited with 1: "
         "slurm_load_partitions: Unable to contact slurm controller"),
        (["--plugin", "SLURM", "--plugin-args", '{"sbatch_args": "-p gpu"}'],
         _REJECTING_SLURM, "SLURM would reject the jobs (sbatch_args '-p gpu')"),
        (["--plugin", "SGE"], {}, "SGE command(s) qsub, qstat not found on PATH"),
    ],
)  # fmt: skip
def test_cli_bad_plugin_fails_before_work(
    small_bids: dict[str, Path],
    tmp_path: Path,
    flags: list[str],
    scheduler: dict[str, str] | None,
    message: str,
) -> None:
    """Unknown plugin, rejected plugin args, unreachable scheduler: exit 64 before any work."""
    if scheduler is None:
        env = dict(os.environ)
        env.pop(plugins.CONTAINER_ENV, None)
    else:
        env = _fake_scheduler_env(tmp_path, **scheduler)
    work, out = tmp_path / "work", tmp_path / "out"
    args = [small_bids["bids"], out, "participant", "-w", work, "--reference", small_bids["ref"]]
    proc = _run_cli([*args, "--skip-bids-validation", *flags], env)
    assert proc.returncode == 64, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr
    assert not work.exists() and not out.exists(), "work started"


def test_outputs_identical_for_any_nprocs(
    small_bids: dict[str, Path], tmp_path: Path, no_container: None
) -> None:
    """One process and one thread vs two participants in parallel with two threads each:
    bit-identical images, transforms and tables (issue 6, item 5)."""
    runs = {
        "nprocs1_omp1": ["--nprocs", "1", "--omp-nthreads", "1"],
        "nprocs2_omp2": ["--nprocs", "2", "--omp-nthreads", "2"],
    }
    digests = {}
    for name, flags in runs.items():
        out = tmp_path / f"out_{name}"
        args = [small_bids["bids"], out, "participant", "-w", tmp_path / f"work_{name}"]
        proc = _run_cli([*args, "--reference", small_bids["ref"], *CHEAP_CLI, "--no-reports",
                         *flags])
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        digests[name] = _tree_digest(out)
        assert not list(out.glob("sub-*.html")), "--no-reports wrote an HTML report"
    first = digests["nprocs1_omp1"]
    for sub in ("01", "02"):
        assert any(n.startswith(f"sub-{sub}") and n.endswith("_xfm.h5") for n in first), first
        assert any(n.startswith(f"sub-{sub}") and "space-" in n for n in first), first
    for name, digest in digests.items():
        differ = sorted(k for k in first.keys() | digest.keys() if first.get(k) != digest.get(k))
        assert not differ, f"{name} differs from nprocs1_omp1 in {differ}"


@pytest.mark.slurm
@pytest.mark.slow
def test_synflow_on_slurm(
    slurm_cluster: dict[str, str], demo_bids: Path, tmp_path: Path, no_container: None
) -> None:
    """The synflow command on the demo participant, one sbatch job per Nipype node; then the
    same run with MultiProc gives bit-identical outputs.

    ~65 s on 2 cores (8 jobs in a chain, each a fresh interpreter plus Nipype's 2 s
    polling, then the local run), hence also ``slow``: ``-m slurm`` runs it,
    ``-m "not slow"`` does not.
    """
    env = dict(os.environ, SLURM_CONF=slurm_cluster["SLURM_CONF"])
    env.pop(plugins.CONTAINER_ENV, None)
    out, work = tmp_path / "out", tmp_path / "work"
    plugin_args = '{"sbatch_args": "--mem=1G --time=30"}'
    proc = _run_cli(
        [demo_bids, out, "participant", "-w", work, *FAST,
         "--plugin", "SLURM", "--plugin-args", plugin_args],
        env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "plugin SLURM" in proc.stdout + proc.stderr
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "synflow"
    assert (out / "sub-01.html").is_file()
    dwi = out / "sub-01" / "dwi"
    for pattern in (
        "*_from-dwiref_to-*_mode-image_xfm.h5",
        "*_from-*_to-dwiref_mode-image_xfm.h5",
        "*_space-*_desc-b0_dwiref.nii.gz",
        "*_desc-brain_mask.nii.gz",
    ):
        assert list(dwi.glob(pattern)), f"no {pattern} in {sorted(p.name for p in dwi.iterdir())}"
    # Every node went through sbatch: Nipype leaves one batch script and one
    # slurm-<jobid>.out per submitted job under <work>/<workflow>/batch.
    jobs = list(work.rglob("batch/slurm-*.out"))
    scripts = list(work.rglob("batch/batchscript_*.sh"))
    assert jobs and len(jobs) == len(scripts), (len(jobs), len(scripts))

    # The same run on this machine with MultiProc: bit-identical data files.
    local_out = tmp_path / "out_local"
    proc = _run_cli(
        [demo_bids, local_out, "participant", "-w", tmp_path / "work_local", *FAST,
         "--nprocs", "2"],
        env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    slurm_digest, local_digest = _tree_digest(out), _tree_digest(local_out)
    assert any(name.endswith("_xfm.h5") for name in slurm_digest), slurm_digest
    differ = sorted(
        k for k in slurm_digest.keys() | local_digest.keys()
        if slurm_digest.get(k) != local_digest.get(k)
    )  # fmt: skip
    assert not differ, f"SLURM and MultiProc outputs differ in {differ}"


@pytest.mark.slurm
def test_synflow_rejected_sbatch_args_exit_64(
    slurm_cluster: dict[str, str], small_bids: dict[str, Path], tmp_path: Path, no_container: None
) -> None:
    """The real sbatch refuses the partition: usage error, nothing submitted or written."""
    env = dict(os.environ, SLURM_CONF=slurm_cluster["SLURM_CONF"])
    env.pop(plugins.CONTAINER_ENV, None)
    out, work = tmp_path / "out", tmp_path / "work"
    proc = _run_cli(
        [small_bids["bids"], out, "participant", "-w", work, "--reference", small_bids["ref"],
         "--plugin", "SLURM", "--plugin-args", '{"sbatch_args": "-p no_such_partition"}'],
        env,
    )  # fmt: skip
    assert proc.returncode == 64, proc.stderr
    assert "SLURM would reject the jobs" in proc.stderr
    assert "invalid partition" in proc.stderr.lower()
    assert not work.exists() and not out.exists()


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
