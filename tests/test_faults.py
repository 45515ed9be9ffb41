"""Fault injection (issue 10): one bad participant never stops the others, nothing hangs.

Each test first builds the fault that an outside tester found (a symlink loop, a full
work disk, a worker killed while SyN runs, two runs at once, ...), runs ``synflow`` on a
small 4 mm dataset with cheap settings, and checks: the others finish, the failing one is
named with its cause, the exit code, no process of the run is left, and the input
dataset is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synflow.cli._testing import CHEAP_CLI, make_small_bids, make_small_reference
from synflow.cli.errors import ExitCode
from synflow.cli.run import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    return make_small_reference(tmp_path_factory.mktemp("faults") / "ref4mm.nii.gz")


def fast_args(ref: Path) -> list[str]:
    """Cheap SyN, the 4 mm reference, no reports, no validator: a run takes seconds."""
    return [*CHEAP_CLI, "--reference", str(ref), "--no-reports", "--skip-bids-validation",
            "--nprocs", "2"]


def tree_hash(root: Path) -> dict[str, str]:
    """Every file (and link target) under ``root`` -> its SHA-1 (links are not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            else:
                out[rel] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time used by ``pid`` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def assert_no_children(pid: int | None = None, wait: float = 10.0) -> None:
    """No process started by ``pid`` (default: this test process) is still running."""
    pid = pid or os.getpid()
    deadline = time.monotonic() + wait
    while descendants(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = descendants(pid)
    assert not left, f"processes left behind: {left}"


def run_cli(args: list, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    assert_no_children()
    return code, out.out + out.err


def cli_process(args: list, **kw) -> subprocess.Popen:
    """``synflow ARGS`` as a child process (stdout and stderr together, line-buffered)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "synflow.cli.run", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, **kw)


def outputs_of(out: Path, sub: str) -> list[Path]:
    return sorted((out / f"sub-{sub}" / "dwi").glob("*"))


# ------------------------------------------------------------------ item 2 (and 10, 11)
def test_stray_files_symlink_loop_and_bad_names(tmp_path, ref, capsys):
    """A symlink loop, a stray copy in a sub-folder, a file with HTML in an entity, folders
    with invalid labels: before, ``OSError: Duplicate node name "dwi_wf"`` and nobody was
    processed; now the strays are ignored and listed, the bad names are per-series data
    errors, and the good series are processed."""
    bids = make_small_bids(tmp_path / "bids", subjects=("01", "02", "03"))
    (bids / "sub-01" / "dwi" / "loop").symlink_to(".")
    old = bids / "sub-02" / "dwi" / "old"
    old.mkdir()
    for f in (bids / "sub-02" / "dwi").glob("sub-02_dwi.*"):
        (old / f.name).write_bytes(f.read_bytes())
    evil = "sub-03_acq-<img src=x onerror=alert(1)>_dwi"
    for f in (bids / "sub-03" / "dwi").glob("sub-03_dwi.*"):
        f.rename(f.with_name(evil + f.name[len("sub-03_dwi"):]))
    for bad in ("a b", "ü1"):
        src = bids / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
        folder = bids / f"sub-{bad}" / "dwi"
        folder.mkdir(parents=True)
        (folder / f"sub-{bad}_dwi.nii.gz").write_bytes(src.read_bytes())
    before = tree_hash(bids)
    code, text = run_cli([bids, tmp_path / "out", "participant", "-w", tmp_path / "work",
                          *fast_args(ref)], capsys)
    assert "Duplicate node name" not in text
    assert code == ExitCode.DATA_ERROR, text
    assert outputs_of(tmp_path / "out", "01") and outputs_of(tmp_path / "out", "02")
    assert "ignored" in text and "sub-02/dwi/old/" in text and "loop" in text
    assert "not an alphanumeric BIDS label" in text and "acq-'<img" in text
    assert "'a b' is not a valid BIDS label" in text and "'ü1' is not a valid BIDS label" in text
    written = [p.name for p in (tmp_path / "out").rglob("*")]
    assert not [n for n in written if "<" in n or "onerror" in n]
    assert tree_hash(bids) == before


# ------------------------------------------------------------------ item 4
@pytest.fixture
def tiny_fs(tmp_path) -> Path:
    """A 5 MB tmpfs (needs root and mount(8)); skipped where it cannot be mounted."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 5 MB tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_work_disk_stops_with_73(tmp_path, ref, tiny_fs, capsys):
    """``-w`` on a 5 MB tmpfs: before, ENOSPC then every process idled forever; now the run
    stops, names the full path and the space needed, exits 73."""
    bids = make_small_bids(tmp_path / "bids", subjects=("01", "02", "03"))
    before = tree_hash(bids)
    proc = cli_process([bids, tmp_path / "out", "participant", "-w", tiny_fs / "work",
                        *fast_args(ref)])
    text, _ = proc.communicate(timeout=180)  # the bug was an endless wait: fail, not hang
    assert proc.returncode == ExitCode.CANT_CREATE, text
    assert "the disk is full" in text and str(tiny_fs / "work") in text
    assert "this run needs about" in text and "No space left on device" in text
    assert f"warning: the work directory {tiny_fs / 'work'} has" in text  # said up front
    assert_no_children(proc.pid)
    assert tree_hash(bids) == before


# ------------------------------------------------------------------ item 5 (and 13: resume)
def _wait_for(proc: subprocess.Popen, needle: str, lines: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"{needle!r} never printed:\n{''.join(lines)}")


def test_worker_killed_then_run_killed_then_resumed(tmp_path, ref):
    """SIGKILL of the worker running SyN (what the OOM killer does): before,
    ``BrokenProcessPool`` then an idle wait of 10+ minutes; now that series is reported as
    killed (memory hint), the others finish or are reported, exit 1, no process left.
    Then SIGKILL of the whole run mid-SyN: no worker survives it, and the same command
    again takes over its stale lock, removes its partial files and finishes (exit 0)."""
    bids = make_small_bids(tmp_path / "bids", subjects=("01", "02"))
    before = tree_hash(bids)
    out = tmp_path / "out"
    # SyN long enough (several seconds) that the kill lands while it runs
    slow_syn = ["--level-iters", "60", "60", "30", "--opt-tol", "1e-12"]
    args = [bids, out, "participant", "-w", tmp_path / "work", *fast_args(ref), *slow_syn]
    proc = cli_process(args)
    lines: list[str] = []
    _wait_for(proc, "SyN ...", lines, timeout=120)
    time.sleep(0.5)
    workers = sorted(descendants(proc.pid), key=cpu_seconds)
    assert workers, "no worker process found"
    os.kill(workers[-1], signal.SIGKILL)  # the busiest worker: it runs SyN
    t_fault = time.monotonic()
    rest, _ = proc.communicate(timeout=180)
    text = "".join(lines) + rest
    print(f"worker SIGKILL -> exit: {time.monotonic() - t_fault:.1f} s")
    assert proc.returncode == ExitCode.FAILURE, text
    assert "WorkerKilledError" in text and "out-of-memory" in text and "--mem" in text, text
    assert_no_children(proc.pid)

    # fresh folders: what the first run finished would be reused and SyN never start
    out = tmp_path / "out2"
    args = [bids, out, "participant", "-w", tmp_path / "work2", *fast_args(ref), *slow_syn]
    proc = cli_process(args)
    _wait_for(proc, "SyN ...", [], timeout=120)
    kids = descendants(proc.pid)
    proc.kill()
    t_fault = time.monotonic()
    proc.communicate(timeout=30)
    for pid in kids:  # the workers die with the run (PR_SET_PDEATHSIG), not minutes later
        while Path(f"/proc/{pid}").exists() and time.monotonic() - t_fault < 30:
            time.sleep(0.1)
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    print(f"run SIGKILL -> workers gone: {time.monotonic() - t_fault:.1f} s")
    assert (out / ".synflow.lock").exists()  # left by the killed run
    stray = out / "sub-01" / "dwi" / ".sub-01_desc-b0_dwiref.nii.gz.k2j4h5g6.partial.nii.gz"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"half a file")  # what a run killed inside atomic_path leaves

    again = cli_process(args)
    text, _ = again.communicate(timeout=180)
    assert again.returncode == 0, text
    assert "took over the stale lock" in text and "removed 1 partial file" in text
    assert not list(out.rglob("*.partial*")) and not (out / ".synflow.lock").exists()
    assert tree_hash(bids) == before


# ------------------------------------------------------------------ item 6
def test_second_run_on_same_folders_refuses(tmp_path, ref, capsys):
    """Two runs into the same output and work directory: before, the second failed 3 of 4
    series with ``FileNotFoundError``; now it refuses at once, naming the lock, the host
    and the pid, and the first one finishes."""
    import socket

    bids = make_small_bids(tmp_path / "bids", subjects=("01",))
    before = tree_hash(bids)
    args = [bids, tmp_path / "out", "participant", "-w", tmp_path / "work", *fast_args(ref)]
    first = cli_process(args)
    _wait_for(first, "running", [], timeout=120)
    code, text = run_cli(args, capsys)
    assert code == ExitCode.CANT_CREATE, text
    assert str(tmp_path / "out" / ".synflow.lock") in text
    assert f"pid {first.pid} on host {socket.gethostname()}" in text
    rest, _ = first.communicate(timeout=180)
    assert first.returncode == 0, rest
    # a lock of another host is never taken over; one of a dead pid here is
    lock = tmp_path / "out" / ".synflow.lock"
    lock.write_text('{"host": "elsewhere.example", "pid": 1, "run": "r1"}')
    code, text = run_cli(args, capsys)
    assert code == ExitCode.CANT_CREATE and "host elsewhere.example" in text
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": first.pid, "run": "r2"}))
    code, text = run_cli(args, capsys)
    assert code == 0 and "took over the stale lock" in text, text
    assert tree_hash(bids) == before


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_memory_cap_reads_the_process_own_cgroup(tmp_path, version):
    """Before: the root cgroup was read (21 GB planned inside a 2 GB cgroup)."""
    from synflow.cli.plugins.probes import cgroup_memory_limit

    gb2, unlimited = str(2 * 1024 ** 3), "max" if version == "v2" else "9223372036854771712"
    if version == "v2":
        line, base, fname = "0::/batch/job42\n", tmp_path, "memory.max"
    else:
        line, base, fname = "4:memory:/batch/job42\n3:cpu:/\n", tmp_path / "memory", \
            "memory.limit_in_bytes"
    (base / "batch" / "job42").mkdir(parents=True)
    (base / fname).write_text(unlimited + "\n")
    (base / "batch" / "job42" / fname).write_text(gb2 + "\n")
    (tmp_path / "cgroup").write_text(line)
    assert cgroup_memory_limit(str(tmp_path / "cgroup"), str(tmp_path)) == int(gb2)
    (base / "batch" / fname).write_text(str(1024 ** 3))  # a tighter parent applies too
    assert cgroup_memory_limit(str(tmp_path / "cgroup"), str(tmp_path)) == 1024 ** 3


# ------------------------------------------------------------------ item 3 (and 10: mode 000)
def _unprivileged() -> list[str]:
    """A command prefix that runs without the right to ignore file permissions: nothing for
    a normal user; as root, ``setpriv`` dropping CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (the
    interpreter under /root stays reachable, unlike with a setuid to another user)."""
    if os.geteuid() != 0:
        return []
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions cannot be enforced")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_read_only_participant_folder_fails_alone(tmp_path, ref):
    """``out/sub-03`` mode 555 (and a DWI of mode 000): before, Nipype's crash writer raised
    PermissionError and every series said "not finished"; now sub-03 fails with a clear
    message, the unreadable DWI says permission denied, the others finish."""
    bids = make_small_bids(tmp_path / "bids", subjects=("01", "03", "04"))
    (bids / "sub-04" / "dwi" / "sub-04_dwi.nii.gz").chmod(0)
    before = tree_hash(bids)
    out = tmp_path / "out"
    (out / "sub-03").mkdir(parents=True)
    (out / "sub-03").chmod(0o555)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run([*_unprivileged(), sys.executable, "-m", "synflow.cli.run", bids,
                               out, "participant", "-w", tmp_path / "work", *fast_args(ref)],
                              capture_output=True, text=True, env=env, timeout=180)
    finally:
        (out / "sub-03").chmod(0o755)
        (bids / "sub-04" / "dwi" / "sub-04_dwi.nii.gz").chmod(0o644)
    text = proc.stdout + proc.stderr
    assert proc.returncode == ExitCode.CANT_CREATE, text
    assert "Traceback" not in text
    assert f"cannot write in {out / 'sub-03'}" in text and "Permission denied" in text
    assert "sub-04_dwi.nii.gz: permission denied" in text and "mode 000" in text
    assert outputs_of(out, "01")
    assert tree_hash(bids) == before


# ------------------------------------------------------------------ items 7, 8, 10, 13
@pytest.mark.parametrize("bad", [
    ["--b0-threshold", "nan"], ["--b0-threshold", "inf"], ["--b0-threshold", "-5"]])
def test_b0_threshold_must_be_finite_and_nonnegative(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path), str(tmp_path / "o"), "participant", *bad])
    assert err.value.code == ExitCode.USAGE
    assert "finite number >= 0" in capsys.readouterr().err


def test_forgotten_output_dir_is_named(tmp_path, capsys):
    """Issue 13: ``synflow BIDS participant`` said "missing analysis_level"."""
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path), "participant"])
    err_text = capsys.readouterr().err
    assert err.value.code == ExitCode.USAGE
    assert "missing the output directory OUTPUT_DIR" in err_text and "usage:" in err_text


def test_refusals_before_anything_is_written(tmp_path, ref, capsys):
    """``--bids-database-dir`` inside the input (it wrote layout_index.sqlite there), a
    filter that sets the subject (sub-01.html held sub-03's data), a filter's session
    against --session-label: all refused, exit 64, nothing written."""
    bids = make_small_bids(tmp_path / "bids", subjects=("01", "03"))
    before = tree_hash(bids)
    base = [bids, tmp_path / "out", "participant", "-w", tmp_path / "work", *fast_args(ref)]
    code, text = run_cli([*base, "--bids-database-dir", bids / "code" / "db"], capsys)
    assert code == ExitCode.USAGE and "inside the input dataset" in text
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"dwi": {"subject": "03"}}))
    code, text = run_cli([*base, "--participant-label", "01", "03", "--bids-filter-file",
                          filt], capsys)
    assert code == ExitCode.USAGE and "'subject' may not be set" in text
    assert "--participant-label" in text
    filt.write_text(json.dumps({"dwi": {"session": "1"}}))
    code, text = run_cli([*base, "--session-label", "2", "--bids-filter-file", filt], capsys)
    assert code == ExitCode.USAGE and "override the session selection" in text
    assert tree_hash(bids) == before and not (tmp_path / "out").exists()


def test_negative_b_value_is_named(tmp_path, ref, capsys):
    """It said "smallest b-value -1000 is above --b0-threshold"."""
    bids = make_small_bids(tmp_path / "bids", subjects=("01", "02"))
    (bids / "sub-02" / "dwi" / "sub-02_dwi.bval").write_text("0 -1000 1000 0 1000 1000\n")
    code, text = run_cli([bids, tmp_path / "out", "participant", "-w", tmp_path / "work",
                          "--participant-label", "02", *fast_args(ref)], capsys)
    assert code == ExitCode.DATA_ERROR
    assert "sub-02_dwi.bval: b-values must be finite numbers >= 0" in text
    assert "-1000 (volume 1)" in text and "above --b0-threshold" not in text
