"""Fixtures shared by the cluster tests (tests/test_cluster_*.py).

* ``no_container``: not inside the synflow image (``$SYNFLOW_IN_CONTAINER`` unset);
* ``fake_commands``: fake scheduler commands (``sbatch``, ``sinfo``...), the only
  commands on ``PATH``;
* ``two_node_workflow``: a two-node Nipype workflow computing ``2 * value + 1``;
* ``slurm_cluster``: a throw-away single-node SLURM cluster on localhost
  (``docker/slurm/start-local-slurm.sh``), started once per test session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from synflow.cli.plugins import CONTAINER_ENV

SLURM_DIR = Path(__file__).resolve().parents[1] / "docker" / "slurm"


@pytest.fixture
def no_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONTAINER_ENV, raising=False)


@pytest.fixture
def fake_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., dict[str, str]]:
    """``fake_commands(sbatch="exit 0", ...)``: shell scripts NAME (body = the value).

    ``PATH`` becomes their folder alone (the scripts start with ``#!/bin/sh``, an absolute
    path), so real scheduler clients on the machine cannot leak into the test;
    ``$SLURM_CONF`` and ``$SYNFLOW_IN_CONTAINER`` are unset.  Returns the environment, for
    commands run in a subprocess.
    """

    def install(**scripts: str) -> dict[str, str]:
        bindir = tmp_path / "fakebin"
        bindir.mkdir(exist_ok=True)
        for name, body in scripts.items():
            exe = bindir / name
            exe.write_text(f"#!/bin/sh\n{body}\n")
            exe.chmod(0o755)
        monkeypatch.setenv("PATH", str(bindir))
        monkeypatch.delenv("SLURM_CONF", raising=False)
        monkeypatch.delenv(CONTAINER_ENV, raising=False)
        return dict(os.environ)

    return install


def _double(x: int) -> int:
    return 2 * x


def _plus_one(x: int) -> int:
    return x + 1


@pytest.fixture
def two_node_workflow() -> Callable:
    """``make(base_dir, value)``: ``(value * 2) + 1`` as two Nipype Function nodes
    (``double``, ``plus_one``; each may run in its own job); ``make.results(graph)`` gives
    ``{node name: output}`` of the graph ``Workflow.run`` returned."""
    from nipype import Function, Node, Workflow

    def make(base_dir: Path, value: int) -> Workflow:
        double = Node(Function(["x"], ["out"], _double), name="double")
        double.inputs.x = value
        plus_one = Node(Function(["x"], ["out"], _plus_one), name="plus_one")
        wf = Workflow(name=f"wf_{uuid.uuid4().hex[:8]}", base_dir=str(base_dir))
        wf.connect(double, "out", plus_one, "x")
        return wf

    make.results = lambda graph: {n.name: n.result.outputs.out for n in graph.nodes()}
    return make


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


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment (SLURM_CONF...) of a running single-node cluster, started once per session.

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
