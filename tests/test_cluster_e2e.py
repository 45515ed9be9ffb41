"""The ``synflow`` command with execution plugins, end to end (a fresh interpreter each).

Bad ``--plugin`` / ``--plugin-args`` / unreachable or rejecting schedulers (fake commands,
``fake_commands`` in conftest.py) give exit code 64 before any output or work folder
exists; outputs are bit-identical for ``--nprocs 1 --omp-nthreads 1`` and ``--nprocs 2
--omp-nthreads 2`` (two participants in parallel).  ``@pytest.mark.slurm`` tests run the
command on the local SLURM cluster (``slurm_cluster`` in conftest.py); the one that is also
``slow`` is the demo participant through SLURM, then with MultiProc (~65 s on 2 cores).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synflow.cli import plugins

REPO = Path(__file__).resolve().parents[1]


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
    fake_commands,
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
        env = fake_commands(**scheduler)
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


