"""The ``synflow`` command: options, exit codes, bad input, outputs, reruns, the demo.

Runs use a 4 mm synthetic dataset (``synflow.cli._testing``) and cheap SyN settings so
each command takes seconds; the demo test uses the real demo data with cheap settings.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synflow.cli._testing import CHEAP_CLI, make_small_bids, make_small_reference
from synflow.cli.errors import ExitCode
from synflow.cli.parser import parse_args, parse_mem_gb
from synflow.cli.run import main


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    return {"root": root, "ref": make_small_reference(root / "ref4mm.nii.gz")}


def _dwi(bids: Path, sub: str) -> Path:
    return bids / f"sub-{sub}" / "dwi" / f"sub-{sub}_dwi.nii.gz"


@pytest.fixture(scope="module")
def bad_bids(small) -> Path:
    """sub-01 good; 02-07 one problem each; 08 no DWI."""
    bids = make_small_bids(small["root"] / "bad_bids",
                           subjects=("01", "02", "03", "04", "05", "06", "07", "08"), seed=1)
    # 02: 5 b-values for 6 volumes
    _dwi(bids, "02").with_name("sub-02_dwi.bval").write_text("0 1000 1000 0 1000\n")
    # 03: no b0 under the threshold
    _dwi(bids, "03").with_name("sub-03_dwi.bval").write_text("1000 " * 5 + "1000\n")
    # 04: a 3-D "DWI"
    img = nib.load(_dwi(bids, "04"))
    nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine).to_filename(_dwi(bids, "04"))
    # 05: NaN voxels in the b0s
    img = nib.load(_dwi(bids, "05"))
    data = np.asanyarray(img.dataobj).copy()
    data[10:14, 10:14, 10:14, :] = np.nan
    nib.Nifti1Image(data, img.affine).to_filename(_dwi(bids, "05"))
    # 06: truncated file (a copy interrupted half-way): header fine, data cut
    raw = gzip.decompress(_dwi(bids, "06").read_bytes())
    _dwi(bids, "06").write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    # 07: not a NIfTI at all
    _dwi(bids, "07").write_bytes(b"this is not an image" * 10)
    # 08: anatomy only
    shutil.rmtree(bids / "sub-08" / "dwi")
    (bids / "sub-08" / "anat").mkdir()
    return bids


# ----------------------------------------------------------------------------- parser
def test_parser_basics(tmp_path):
    opts = parse_args([str(tmp_path), str(tmp_path / "o"), "participant",
                       "--participant-label", "sub-01", "02", "--session-label", "ses-A",
                       "--mem", "8G", "--level-iters", "4", "2", "0"])
    assert opts.participant_label == ["01", "02"] and opts.session_label == ["A"]
    assert opts.mem_gb == 8.0 and opts.level_iters == [4, 2, 0] and opts.b0_threshold == 50.0
    assert parse_mem_gb("8000") == pytest.approx(8000 / 1024)
    assert parse_mem_gb("1.5T") == 1536.0


@pytest.mark.parametrize("argv", [
    [],                                                          # missing positionals
    ["a", "b", "group"],                                         # no group level yet
    ["a", "b", "participant", "--participant-label", "0-1"],     # not a BIDS label
    ["a", "b", "participant", "--level-iters", "0", "0"],        # nothing to do
    ["a", "b", "participant", "--reference", "r.nii", "--reference-participant", "01"],
])
def test_usage_errors_exit_64(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == ExitCode.USAGE


def test_version(capsys):
    import synflow

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert synflow.__version__ in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad input
def test_not_a_bids_dataset(tmp_path, capsys):
    (tmp_path / "notbids" / "sub-01").mkdir(parents=True)
    code, out = run_cli([tmp_path / "notbids", tmp_path / "out", "participant"], capsys)
    assert code == ExitCode.BIDS_INVALID
    assert "dataset_description.json is missing" in out and "notbids" in out


def test_missing_bids_dir(tmp_path, capsys):
    code, out = run_cli([tmp_path / "nope", tmp_path / "out", "participant"], capsys)
    assert code == ExitCode.NO_INPUT and "does not exist" in out


def test_output_inside_input(bad_bids, tmp_path, capsys):
    for out_dir in (bad_bids, bad_bids / "sub-01" / "out", bad_bids / "derivatives"):
        code, out = run_cli([bad_bids, out_dir, "participant", "-w", tmp_path / "w"], capsys)
        assert code == ExitCode.USAGE, out
        assert "derivatives/synflow" in out
    code, out = run_cli([bad_bids, tmp_path / "o", "participant", "-w", bad_bids / "work"],
                        capsys)
    assert code == ExitCode.USAGE and "work directory" in out


def test_output_cannot_be_created(bad_bids, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out = run_cli([bad_bids, blocker / "out", "participant", "-w", tmp_path / "w",
                         "--participant-label", "01"], capsys)
    assert code == ExitCode.CANT_CREATE and str(blocker / "out") in out


def test_reference_does_not_exist(bad_bids, tmp_path, capsys):
    code, out = run_cli([bad_bids, tmp_path / "o", "participant", "-w", tmp_path / "w",
                         "--reference", tmp_path / "missing.nii.gz"], capsys)
    assert code == ExitCode.NO_INPUT and "missing.nii.gz does not exist" in out


def test_unreadable_reference(bad_bids, tmp_path, capsys):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    code, out = run_cli([bad_bids, tmp_path / "o", "participant", "-w", tmp_path / "w",
                         "--reference", bad], capsys)
    assert code == ExitCode.DATA_ERROR and "bad.nii.gz" in out


def test_bad_plugin_is_a_usage_error(bad_bids, tmp_path, capsys):
    code, out = run_cli([bad_bids, tmp_path / "o", "participant", "-w", tmp_path / "w",
                         "--plugin", "NoSuchPlugin"], capsys)
    assert code == ExitCode.USAGE and "NoSuchPlugin" in out


@pytest.mark.parametrize("labels, code, text", [
    (["99"], ExitCode.NO_INPUT, "sub-99 does not exist"),
    (["08"], ExitCode.NO_INPUT, "sub-08 has no DWI series"),
    (["02"], ExitCode.DATA_ERROR, "5 b-values but"),
    (["03"], ExitCode.DATA_ERROR, "no b0 volume"),
    (["04"], ExitCode.DATA_ERROR, "must be 4-D"),
    (["07"], ExitCode.DATA_ERROR, "cannot read the NIfTI header"),
])
def test_early_input_errors(bad_bids, tmp_path, capsys, labels, code, text):
    """Problems found before the workflow runs: message, file name, exit code (synflow's
    own checks, which also guard runs with --skip-bids-validation)."""
    got, out = run_cli([bad_bids, tmp_path / "o", "participant", "-w", tmp_path / "w",
                        "--skip-bids-validation", "--participant-label", *labels], capsys)
    assert got == code, out
    assert text in out


def test_bad_input_does_not_stop_the_others(bad_bids, small, capsys):
    """One run over every problem: sub-01 is processed, each failure reported once (synflow's
    own checks: the validator would reject most of these participants before they run)."""
    out_dir = bad_bids / "derivatives" / "synflow"  # allowed inside the input, as fMRIPrep
    work = small["root"] / "work_bad"
    args = [bad_bids, out_dir, "participant", "-w", work, "--reference", small["ref"],
            "--nprocs", "2", "--skip-bids-validation", "--participant-label", "01", "02", "03",
            "04", "05", "06", "07", "08", "99", *CHEAP_CLI]
    code, out = run_cli(args, capsys)
    # data errors (65) outrank missing inputs (66); nothing crashed for another reason
    assert code == ExitCode.DATA_ERROR, out
    for text in ("sub-99 does not exist", "sub-08 has no DWI series", "5 b-values but",
                 "no b0 volume", "must be 4-D", "cannot read the NIfTI header", "sub-05_dwi",
                 "sub-06_dwi"):
        assert text in out, text
    assert "NaN" in out or "nan" in out
    summary = out.split("Summary")[1]
    rows = {ln.split()[0]: ln for ln in summary.splitlines()[3:] if ln.startswith("sub-")}
    assert " ok " in rows["sub-01"]
    for sub in ("02", "03", "04", "05", "06", "07", "08", "99"):
        assert "failed" in rows[f"sub-{sub}"], sub
    # sub-01 outputs are complete
    d = out_dir / "sub-01" / "dwi"
    space = "custom"
    expected = ["sub-01_desc-b0_dwiref.nii.gz", "sub-01_desc-brain_mask.nii.gz",
                f"sub-01_space-{space}_desc-b0_dwiref.nii.gz",
                f"sub-01_from-dwiref_to-{space}_mode-image_xfm.h5",
                f"sub-01_from-{space}_to-dwiref_mode-image_xfm.h5",
                f"sub-01_from-dwiref_to-{space}_mode-image_desc-affine_xfm.txt",
                f"sub-01_from-dwiref_to-{space}_mode-image_desc-dipy_xfm.nii.gz"]
    for name in expected:
        assert (d / name).exists(), name
        side = json.loads((d / (name.split(".")[0] + ".json")).read_text())
        assert side["Sources"] and side["Parameters"]["SyN"]["level_iters"] == [2, 2, 0]
        assert "synflow" in side["SoftwareVersions"]
    dipy_side = json.loads(
        (d / f"sub-01_from-dwiref_to-{space}_mode-image_desc-dipy_xfm.json").read_text())
    assert len(dipy_side["DIPYReadMapping"]["Prealign"]) == 4
    meta = json.loads((d / f"sub-01_from-dwiref_to-{space}_mode-image_xfm.json").read_text())
    assert meta["QC"]["cc_syn"] > meta["QC"]["cc_before"]
    assert meta["SpatialReference"].startswith("file://")
    assert not list(out_dir.rglob(".*partial*"))
    # reports: every existing participant, failed series with their error
    for sub in ("01", "02", "03", "04", "05", "06", "07", "08"):
        assert (out_dir / f"sub-{sub}.html").exists(), sub
    assert not (out_dir / "sub-99.html").exists()
    assert "NaN" in (out_dir / "sub-05.html").read_text() or \
        "nan" in (out_dir / "sub-05.html").read_text()
    assert list((out_dir / "sub-05" / "log").rglob("crash-*.txt"))
    desc = json.loads((out_dir / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "synflow"
    assert "*_xfm.*" in (out_dir / ".bidsignore").read_text()


def test_rerun_reuses_finished_steps(bad_bids, small, capsys):
    """Same work dir, only performance options changed: no step is recomputed."""
    out_dir = small["root"] / "rerun_out"
    work = small["root"] / "work_rerun"
    base = [bad_bids, out_dir, "participant", "-w", work, "--reference", small["ref"],
            "--participant-label", "01", *CHEAP_CLI]
    code, _ = run_cli(base + ["--nprocs", "2"], capsys)
    assert code == 0
    result = next(work.rglob("sub_01_wf/dwi_wf/syn/result_syn.pklz"))
    stamp = result.stat().st_mtime_ns
    mapping = next(out_dir.rglob("*desc-dipy_xfm.nii.gz"))
    mapping.unlink()  # a deleted output comes back without recomputation
    code, out = run_cli(base + ["--nprocs", "1", "--omp-nthreads", "1"], capsys)
    assert code == 0, out
    assert result.stat().st_mtime_ns == stamp
    assert mapping.exists()
    assert len(list(work.glob("*/config.json"))) == 2  # one folder per run
    code, out = run_cli(base + ["--nprocs", "1"], capsys)  # nothing to do at all
    assert code == 0, out
    row = next(ln for ln in out.split("Summary")[1].splitlines() if ln.startswith("sub-01"))
    assert " ok " in row and " cached " in row


def test_reference_participant(small, capsys):
    bids = make_small_bids(small["root"] / "refpart_bids", subjects=("01", "02"), seed=5)
    out_dir = small["root"] / "refpart_out"
    code, out = run_cli([bids, out_dir, "participant", "-w", small["root"] / "work_rp",
                         "--reference-participant", "sub-01", *CHEAP_CLI], capsys)
    assert code == 0, out
    assert (out_dir / "sub-02" / "dwi" / "sub-02_space-sub01_desc-b0_dwiref.nii.gz").exists()
    assert not (out_dir / "sub-01").exists()
    assert "reference" in out.split("Summary")[1]
    ref_b0 = nib.load(out_dir / "sub-02" / "dwi" / "sub-02_space-sub01_desc-b0_dwiref.nii.gz")
    assert ref_b0.shape == nib.load(_dwi(bids, "01")).shape[:3]


def test_select_series_sessions_and_filters(small, tmp_path):
    from synflow.cli.bids import load_filters, make_layout, select_series

    bids = make_small_bids(tmp_path / "ses", subjects=("01",), sessions=("A", "B"))
    layout = make_layout(bids, tmp_path / "db", True, None)
    sel = select_series(layout, bids, None, ["B"], {}, 50.0)
    assert [s.name for s in sel.participants["01"]] == ["sub-01_ses-B_dwi"]
    fil = tmp_path / "f.json"
    fil.write_text(json.dumps({"dwi": {"session": "A"}}))
    sel = select_series(layout, bids, ["01"], None, load_filters(fil), 50.0)
    assert [s.name for s in sel.participants["01"]] == ["sub-01_ses-A_dwi"]
    sel = select_series(layout, bids, ["01"], ["C"], {}, 50.0)
    assert not sel.participants.get("01")
    assert [p.code for p in sel.problems] == [ExitCode.FILTER_EMPTY]
    assert "none matches --session-label C" in sel.problems[0].message
    fil.write_text(json.dumps({"anat": {}}))
    with pytest.raises(Exception, match="unknown query"):
        load_filters(fil)


def test_demo(tmp_path, capsys):
    """``synflow --demo``: dataset, full pipeline, error against the truth, reports."""
    code, out = run_cli(["--demo", tmp_path / "demo", "--level-iters", "4", "2", "0",
                         "--nprocs", "2"], capsys)
    assert code == 0, out
    assert "Registration error against the known truth" in out
    errors = [float(ln.split("mean")[1].split()[0]) for ln in out.splitlines()
              if ln.strip().startswith("sub-") and " mean " in ln]
    assert len(errors) == 4 and max(errors) < 4.0
    assert len(list((tmp_path / "demo" / "derivatives").glob("sub-*.html"))) == 3


def test_error_message_innermost_and_oom_hint():
    from synflow.cli.progress import OOM_HINT, error_message

    tb = ("Traceback (most recent call last):\n  File 'x.py', line 1\n"
          "nipype.pipeline.engine.nodes.NodeExecutionError: Exception raised\n"
          "ValueError: DWI file sub-01_dwi.nii.gz has 5 b-values but 6 volumes\n")
    expected = "ValueError: DWI file sub-01_dwi.nii.gz has 5 b-values but 6 volumes"
    assert error_message(tb) == expected
    killed = ("Traceback (most recent call last):\n"
              "concurrent.futures.process.BrokenProcessPool: A process in the process pool was "
              "terminated abruptly while the future was running or pending.\n")
    msg = error_message(killed)
    assert msg.startswith("BrokenProcessPool: A process in the process pool")
    assert msg.endswith(f"({OOM_HINT})")


def test_non_blocking_plugin_says_submitted(bad_bids, small, tmp_path, capsys, monkeypatch):
    """SLURMGraph & co. return once the jobs are queued: no summary of unfinished work."""
    import synflow.cli.plugins as plugins
    import synflow.cli.run as run_mod

    calls = []
    monkeypatch.setattr(plugins, "plugin_blocks", lambda plugin, args=None: False)
    monkeypatch.setattr(run_mod, "_run_workflow", lambda *a, **k: calls.append(a) or None)
    out_dir = tmp_path / "out"
    code, out = run_cli([bad_bids, out_dir, "participant", "-w", tmp_path / "w",
                         "--reference", small["ref"], "--participant-label", "01", *CHEAP_CLI],
                        capsys)
    assert code == 0, out
    assert len(calls) == 1
    assert "submitted to the scheduler" in out and "Summary" not in out
    assert (out_dir / "dataset_description.json").exists()
    assert not list(out_dir.glob("sub-*.html"))


def test_check_series_uses_the_engine_b0_rule(tmp_path):
    """b == threshold is a b0 (DIPY's rule, as the engine); a 2-row .bval fails early."""
    import nibabel as nib
    import numpy as np

    from synflow.cli.bids import check_series
    from synflow.interfaces.dwi import read_bval_count

    dwi = tmp_path / "sub-01_dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 4), np.float32), np.eye(4)), dwi)
    bval = tmp_path / "sub-01_dwi.bval"
    bval.write_text("50 50 1000 1000\n")
    _, problem = check_series(None, str(dwi), 50.0)
    assert problem is None
    assert read_bval_count(str(bval), 50.0) == (4, 2)
    _, problem = check_series(None, str(dwi), 49.0)
    assert problem[1] == ExitCode.DATA_ERROR and "no b0 volume" in problem[0]
    bval.write_text("0 50\n1000 1000\n")
    _, problem = check_series(None, str(dwi), 50.0)
    assert problem[1] == ExitCode.DATA_ERROR and "cannot read b-values" in problem[0]


def test_outputs_of_an_earlier_run_are_not_this_runs_success(tmp_path):
    """A series none of whose nodes ran in this run is 'not run', even if old files exist."""
    from types import SimpleNamespace

    from synflow.cli.collect import collect
    from synflow.cli.context import RunContext
    from synflow.interfaces.bids import build_derivative_name
    from synflow.workflows import DWISeries, Reference

    dwi = tmp_path / "bids" / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    out = tmp_path / "out"
    old = out / "sub-01" / "dwi" / build_derivative_name(
        dwi, "xfm", ".h5", from_="dwiref", to="MNI152NLin2009aSym", mode="image")
    old.parent.mkdir(parents=True)
    old.write_bytes(b"from an earlier run")
    progress = SimpleNamespace(nodes={}, locate=lambda name: None)
    todo = {"01": [DWISeries(dwi_file=str(dwi), bval_file=str(dwi).replace(".nii.gz", ".bval"))]}
    ctx = RunContext(opts=SimpleNamespace(), bids_dir=tmp_path / "bids", output_dir=out,
                     work_dir=tmp_path / "work", run_uuid="run1", reference=Reference())
    (outcome,) = collect(ctx, todo, progress)
    assert outcome.status == "not run" and outcome.code == ExitCode.FAILURE


def test_same_series_as_nii_and_nii_gz_is_a_data_error(tmp_path):
    from synflow.cli.bids import make_layout, select_series

    bids = make_small_bids(tmp_path / "twins", subjects=("01",))
    gz = _dwi(bids, "01")
    import nibabel as nib

    nib.save(nib.load(gz), str(gz).replace(".nii.gz", ".nii"))
    layout = make_layout(bids, tmp_path / "db", True, None)
    sel = select_series(layout, bids, ["01"], None, {}, 50.0)
    assert not sel.participants["01"]
    assert {p.code for p in sel.problems} == {ExitCode.DATA_ERROR}
    assert len(sel.problems) == 2 and "the same series exists as" in sel.problems[0].message


def test_finished_nodes_without_this_runs_manifest_are_not_ok(tmp_path):
    """Every node ended, but the workflow's manifest is missing or an earlier run's."""
    from types import SimpleNamespace

    from synflow.cli.collect import collect
    from synflow.cli.context import RunContext
    from synflow.cli.progress import NodeRecord
    from synflow.workflows import DWISeries, Reference
    from synflow.workflows.manifest import manifest_path

    dwi = tmp_path / "bids" / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    item = DWISeries(dwi_file=str(dwi), bval_file=str(dwi).replace(".nii.gz", ".bval"))
    rec = NodeRecord("wf.sub_01_wf.dwi_wf.syn", "syn", start=1.0, end=2.0)
    progress = SimpleNamespace(nodes={rec.fullname: rec}, locate=lambda name: ("01", item.name))
    ctx = RunContext(opts=SimpleNamespace(), bids_dir=tmp_path / "bids",
                     output_dir=tmp_path / "out", work_dir=tmp_path / "work", run_uuid="run2",
                     reference=Reference())
    (outcome,) = collect(ctx, {"01": [item]}, progress)
    assert outcome.status == "not run"
    out_file = tmp_path / "out" / "x.nii.gz"
    out_file.parent.mkdir()
    out_file.write_bytes(b"x")
    path = manifest_path(ctx.manifest_dir, "01", item.name)
    path.parent.mkdir(parents=True)
    for run, status in (("run1", "not run"), ("run2", "ok")):
        path.write_text(json.dumps({"run": run, "outputs": [str(out_file)], "qc": {"a": 1}}))
        (outcome,) = collect(ctx, {"01": [item]}, progress)
        assert outcome.status == status, run
    assert outcome.qc == {"a": 1}


def test_bids_validator_rejects_one_participant_the_others_run(small, tmp_path, capsys):
    """The real BIDS validator runs by default, on the selected participants only; an error
    inside one participant's folder rejects that participant (exit 16 in its row), the
    others are processed; an error outside the selection does not matter."""
    from synflow.cli.validator import find_validator

    if find_validator() is None:
        pytest.skip("no BIDS validator installed (pip install 'synflow[validator]')")
    bids = make_small_bids(tmp_path / "bids", subjects=("01", "02", "03"), seed=2)
    _dwi(bids, "02").with_name("sub-02_dwi.bval").unlink()  # DWI_MISSING_BVAL
    _dwi(bids, "03").with_name("sub-03_dwi.bvec").unlink()  # not selected below
    args = [bids, tmp_path / "out", "participant", "-w", tmp_path / "w", "--reference",
            small["ref"], "--participant-label", "01", "02", "--no-reports", *CHEAP_CLI]
    code, out = run_cli(args, capsys)
    assert code == ExitCode.BIDS_INVALID, out
    assert "bids-validator" in out and "participant(s) 01, 02" in out
    rows = {ln.split()[0]: ln for ln in out.split("Summary")[1].splitlines()
            if ln.startswith("sub-")}
    assert " ok " in rows["sub-01"] and "failed" in rows["sub-02"]
    assert "DWI_MISSING_BVAL" in out and "sub-03" not in out.split("Summary")[1]
    # a dataset-level error stops the run before any work
    (bids / "notes_by_hand.txt").write_text("not a BIDS file\n")  # NOT_INCLUDED, top level
    code, out = run_cli(args[:-len(CHEAP_CLI)], capsys)
    assert code == ExitCode.BIDS_INVALID and "not a valid BIDS dataset" in out, out


def test_missing_bval_or_bvec_is_a_series_problem(tmp_path):
    """pybids' get_bval/get_bvec raise IndexError when the file is absent: that must be a
    per-series problem naming the file, never a crash of the whole run (issue 10)."""
    from synflow.cli.bids import check_series, make_layout

    bids = make_small_bids(tmp_path / "bids", subjects=("01", "02"), seed=4)
    _dwi(bids, "01").with_name("sub-01_dwi.bval").unlink()
    _dwi(bids, "02").with_name("sub-02_dwi.bvec").unlink()
    layout = make_layout(bids, tmp_path / "db", True, None)
    item, problem = check_series(layout, str(_dwi(bids, "01")), 50.0)
    assert problem is not None and problem[1] == ExitCode.NO_INPUT
    assert "no .bval file found" in problem[0] and "sub-01_dwi" in problem[0]
    item, problem = check_series(layout, str(_dwi(bids, "02")), 50.0)
    assert problem is None and item.bvec_file is None  # b0s need only the b-values


def test_validator_reports_of_both_validator_generations():
    """The schema (Deno) validator's report and the legacy Node one's give the same lines."""
    from synflow.cli.validator import _issue_lines

    deno = {"issues": {"issues": [
        {"code": "DWI_MISSING_BVAL", "severity": "error", "location": "/sub-02/dwi/x.nii.gz"},
        {"code": "README_FILE_MISSING", "severity": "warning"}],
        "codeMessages": {"DWI_MISSING_BVAL": "DWI scans must have a .bval file.\nmore"}}}
    where = {"file": {"relativePath": "/sub-02/dwi/x.nii.gz"}}
    legacy = {"issues": {"errors": [{"key": "DWI_MISSING_BVAL", "reason": "no bval",
                                     "files": [where]}],
                         "warnings": [{"key": "README_FILE_MISSING"}]}}
    for report, text in ((deno, "DWI scans must have a .bval file."), (legacy, "no bval")):
        errors, n_warn = _issue_lines(report)
        assert n_warn == 1
        assert errors == [("/sub-02/dwi/x.nii.gz",
                           f"DWI_MISSING_BVAL: /sub-02/dwi/x.nii.gz: {text}")]


def test_summary_shows_the_qc_verdict():
    """A series whose QC numbers say the registration failed is not plain 'ok' (issue 10)."""
    from synflow.cli.progress import SeriesOutcome, summary_table

    good = SeriesOutcome("01", "sub-01_dwi", "ok", seconds=3.0,
                         qc={"cc_before": 0.5, "cc_syn": 0.9, "QCStatus": "ok"})
    bad = SeriesOutcome("02", "sub-02_dwi", "ok", seconds=3.0,
                        qc={"cc_before": 0.04, "cc_syn": -0.1, "QCStatus": "warning",
                            "QCWarnings": ["local CC after SyN is not above the affine's"]})
    rows = summary_table([good, bad]).splitlines()
    assert "ok (QC warning)" not in rows[2] and " ok " in rows[2] + " "
    assert "ok (QC warning)" in rows[3]
