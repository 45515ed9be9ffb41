"""A real SLURM: Nipype workflows through ``plugin="SLURM"`` / ``"SLURMGraph"``.

``@pytest.mark.slurm`` tests use the ``slurm_cluster`` fixture (conftest.py): a throw-away
single-node cluster on localhost (``docker/slurm/start-local-slurm.sh``: munged + slurmctld +
slurmd), started once per session.  They are skipped, with the reason, when slurm-wlm/munge
are not installed, when not root, or when the cluster does not come up.
``python -m pytest -m slurm tests/test_cluster_slurm.py tests/test_cluster_e2e.py`` runs
them all.  Deselect them with ``-m "not slurm"``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from synflow.cli.plugins import PluginError, plugin_environment, resolve_plugin

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def on_slurm(
    slurm_cluster: dict[str, str], monkeypatch: pytest.MonkeyPatch, no_container: None
) -> None:
    """This process talks to the local cluster; its batch jobs import this checkout."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster["SLURM_CONF"])
    # The batch jobs re-run this interpreter; they must import synflow from this checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), *sys.path])))


@pytest.mark.slurm
def test_slurm_plugin_runs_nodes_as_sbatch_jobs(
    on_slurm: None, tmp_path: Path, two_node_workflow
) -> None:
    name, args = resolve_plugin(
        "slurm", '{"sbatch_args": "--mem=256M --time=5", "retry_timeout": 1, "max_tries": 5}'
    )
    assert name == "SLURM"

    with plugin_environment(name):
        graph = two_node_workflow(tmp_path, 20).run(plugin=name, plugin_args=args)

    assert two_node_workflow.results(graph) == {"double": 40, "plus_one": 41}
    # Every node ran as its own sbatch job: Nipype writes one slurm-<jobid>.out per job.
    job_logs = sorted((tmp_path).glob("wf_*/batch/slurm-*.out"))
    assert len(job_logs) == 2, job_logs
    scripts = sorted(tmp_path.glob("wf_*/batch/batchscript_*.sh"))
    assert len(scripts) == 2


@pytest.mark.slurm
def test_slurmgraph_submits_dependent_jobs(
    on_slurm: None, tmp_path: Path, two_node_workflow
) -> None:
    """SLURMGraph submits the graph with afterok dependencies and returns at once."""
    from nipype.utils.filemanip import loadpkl

    from synflow.cli.plugins import plugin_blocks

    name, args = resolve_plugin("SLURMGraph", '{"sbatch_args": "--mem=256M --time=5"}')
    assert not plugin_blocks(name, args)
    wf = two_node_workflow(tmp_path, 7)
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
    on_slurm: None, sbatch_args: str, message: str
) -> None:
    """Nipype itself would die with a bare IndexError at the first submission."""
    with pytest.raises(PluginError, match=f"SLURM would reject the jobs.*{message}"):
        resolve_plugin("SLURM", json.dumps({"sbatch_args": sbatch_args}))
