"""Workflow factories: structure, resource declarations, and one real run (Linear)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest
from nipype.pipeline import engine as pe

from synflow.cli._testing import CHEAP_SYN, make_small_bids, make_small_reference
from synflow.workflows import (
    DWISeries,
    Reference,
    init_dwi_derivatives_wf,
    init_dwi_registration_wf,
    init_reference_wf,
    init_single_subject_wf,
    init_synflow_wf,
    workflow_name,
)


def test_top_workflow_is_versioned():
    import synflow

    major, minor = synflow.__version__.split(".")[:2]
    assert workflow_name() == f"synflow_{major}_{minor}_wf"
    wf = init_synflow_wf({}, output_dir="/tmp/x")
    assert wf.name == workflow_name()


def test_dwi_registration_wf_structure():
    wf = init_dwi_registration_wf(syn=CHEAP_SYN, omp_nthreads=3, b0_threshold=80)
    names = set(wf.list_node_names())
    assert {"inputnode", "outputnode", "extract_b0", "median_otsu", "affine_prealign", "syn",
            "b0_to_reference", "reportlets"} <= names
    assert set(wf.get_node("inputnode").inputs.copyable_trait_names()) == {
        "dwi_file", "bval_file", "reference", "reference_mask"}
    syn = wf.get_node("syn")
    assert syn.n_procs == 3 and syn.mem_gb >= 0.3
    assert syn.inputs.level_iters == [2, 2, 0] and syn.inputs.num_threads == 3
    assert wf.get_node("extract_b0").inputs.b0_threshold == 80
    for name in names - {"inputnode", "outputnode"}:
        assert wf.get_node(name).mem_gb > 0.05, name
    with pytest.raises(ValueError, match="unknown SyN setting"):
        init_dwi_registration_wf(syn={"radius": 3})
    assert "reportlets" not in init_dwi_registration_wf(reportlets=False).list_node_names()


def test_series_names_are_nipype_safe():
    s = DWISeries("/d/sub-01/ses-A/dwi/sub-01_ses-A_acq-hi_run-2_dwi.nii.gz", "x.bval")
    assert s.subject == "01" and s.name == "sub-01_ses-A_acq-hi_run-2_dwi"
    assert s.wf_name == "dwi_ses_A_acq_hi_run_2_wf"
    assert DWISeries("/d/sub-01/dwi/sub-01_dwi.nii.gz", "x.bval").wf_name == "dwi_wf"


def test_reference_kinds(tmp_path):
    from synflow.data import TEMPLATE_SPACE

    ref = Reference()
    assert ref.space == TEMPLATE_SPACE and Path(ref.image).exists() and Path(ref.mask).exists()
    assert "apply_mask" in init_reference_wf(ref).list_node_names()
    make_small_reference(tmp_path / "r.nii.gz")
    img = Reference(kind="image", image=str(tmp_path / "r.nii.gz"))
    assert img.space == "custom"
    assert "median_otsu" in init_reference_wf(img).list_node_names()
    bids = make_small_bids(tmp_path / "bids", subjects=("01",))
    dwi = bids / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    part = Reference(kind="participant", participant="01", dwi_file=str(dwi),
                     bval_file=str(dwi).replace(".nii.gz", ".bval"))
    assert part.space == "sub01"
    assert "extract_b0" in init_reference_wf(part).list_node_names()
    with pytest.raises(ValueError):
        Reference(kind="group")


def test_crash_folders_per_participant(tmp_path):
    series = [DWISeries(str(tmp_path / "sub-01/dwi/sub-01_dwi.nii.gz"), "b")]
    wf = init_synflow_wf({"01": series}, output_dir=str(tmp_path),
                         crashdump_dirs={"01": str(tmp_path / "crash")})
    sub = wf.get_node("sub_01_wf")
    node = sub.get_node("dwi_wf.syn")
    assert node.config["execution"]["crashdump_dir"] == str(tmp_path / "crash")
    assert isinstance(sub.get_node("ds_wf.ds_fwd_xfm"), pe.Node)


def test_use_in_a_pipeline(tmp_path):
    """Connect the factories into one's own workflow and run it (Linear plugin)."""
    bids = make_small_bids(tmp_path / "bids", subjects=("01",), seed=2)
    ref = make_small_reference(tmp_path / "ref.nii.gz")
    dwi = bids / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    reference = Reference(kind="image", image=str(ref), space="small")
    wf = pe.Workflow(name="mine", base_dir=str(tmp_path / "work"))
    ref_wf = init_reference_wf(reference)
    sub_wf = init_single_subject_wf("01", [DWISeries(str(dwi), str(dwi).replace(
        ".nii.gz", ".bval"))], output_dir=str(tmp_path / "out"), reference=reference,
        bids_dir=str(bids), syn=CHEAP_SYN, reportlets=False)
    wf.connect([(ref_wf, sub_wf, [("outputnode.reference", "inputnode.reference"),
                                  ("outputnode.reference_mask", "inputnode.reference_mask")])])
    wf.run(plugin="Linear")
    out = tmp_path / "out" / "sub-01" / "dwi"
    warped = nib.load(out / "sub-01_space-small_desc-b0_dwiref.nii.gz")
    assert warped.shape == nib.load(ref).shape
    meta = json.loads((out / "sub-01_desc-b0_dwiref.json").read_text())
    assert meta["Sources"] == ["bids:raw:sub-01/dwi/sub-01_dwi.nii.gz",
                               "bids:raw:sub-01/dwi/sub-01_dwi.bval"]
    meta = json.loads((out / "sub-01_from-dwiref_to-small_mode-image_xfm.json").read_text())
    assert meta["Sources"] == ["bids::sub-01/dwi/sub-01_desc-b0_dwiref.nii.gz",
                               "bids::sub-01/dwi/sub-01_desc-brain_mask.nii.gz"]
    assert set(meta["QC"]) >= {"cc_syn", "folding_percent", "ice_mean_mm"}
    assert not (tmp_path / "out" / "sub-01" / "figures").exists()


def test_derivatives_wf_names(tmp_path):
    wf = init_dwi_derivatives_wf(output_dir=str(tmp_path), space="MNI152NLin2009aSym",
                                 source_file="/r/sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz")
    fwd = wf.get_node("ds_fwd_xfm").inputs
    assert (fwd.from_, fwd.to, fwd.mode, fwd.suffix) == ("dwiref", "MNI152NLin2009aSym",
                                                          "image", "xfm")
    assert wf.get_node("ds_fwd_xfm").run_without_submitting


def test_manifest_round_trip_and_staleness(tmp_path):
    """The manifest counts only for the run that wrote it, and only while its files exist."""
    from synflow.workflows.manifest import WriteManifest, manifest_path, read_manifest

    data = tmp_path / "out" / "sub-01_desc-b0_dwiref.nii.gz"
    fig = tmp_path / "out" / "sub-01_desc-brainmask_dwi.svg"
    data.parent.mkdir()
    data.write_bytes(b"x")
    fig.write_text("<svg/>")
    path = manifest_path(tmp_path / "manifests", "01", "sub-01_dwi")
    assert path == tmp_path / "manifests" / "sub-01" / "sub-01_dwi.json"
    assert read_manifest(path, "run1") is None  # missing
    WriteManifest(manifest_file=str(path), run_id="run1", out_files=[str(data)],
                  figures=[str(fig)], figure_descs=["brainmask"],
                  qc={"cc_syn": 0.9}).run(cwd=str(tmp_path))
    got = read_manifest(path, "run1")
    assert got["outputs"] == [str(data)] and got["figures"] == {"brainmask": str(fig)}
    assert got["qc"] == {"cc_syn": 0.9}
    assert read_manifest(path, "run2") is None  # an earlier run's manifest
    fig.unlink()
    assert read_manifest(path, "run1") is None  # a listed output is gone
    assert not list(path.parent.glob(".*partial*"))


def test_every_series_ends_with_its_manifest(tmp_path):
    from synflow.workflows.manifest import manifest_path

    series = [DWISeries(str(tmp_path / "sub-01/dwi/sub-01_dwi.nii.gz"), "b")]
    wf = init_synflow_wf({"01": series}, output_dir=str(tmp_path / "out"),
                         manifest_dir=str(tmp_path / "m"), run_id="r1")
    node = wf.get_node("sub_01_wf").get_node("ds_wf.ds_manifest")
    assert node.inputs.manifest_file == str(manifest_path(tmp_path / "m", "01", "sub-01_dwi"))
    assert node.inputs.run_id == "r1" and node.interface.always_run
    assert "ds_manifest" not in init_dwi_derivatives_wf(
        output_dir=str(tmp_path), space="x", source_file=series[0].dwi_file).list_node_names()


def _graph_examples(tmp: Path):
    """One built workflow per ``init_*_wf`` (per kind for the reference): (factory, wf)."""
    from synflow.data import get_template

    dwi = tmp / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    dwi.parent.mkdir(parents=True, exist_ok=True)
    dwi.write_bytes(b"")  # the graph only: the files need to exist, not to be images
    dwi.with_name("sub-01_dwi.bval").write_text("0\n")
    src = str(dwi)
    series = [DWISeries(src, src.replace(".nii.gz", ".bval"))]
    template = str(get_template("b0"))
    return [
        (init_dwi_registration_wf, init_dwi_registration_wf()),
        (init_dwi_derivatives_wf, init_dwi_derivatives_wf(
            output_dir="/o", space="s", source_file=src, manifest_file="/w/m.json")),
        (init_reference_wf, init_reference_wf(Reference())),
        (init_reference_wf, init_reference_wf(Reference(kind="image", image=template))),
        (init_reference_wf, init_reference_wf(Reference(
            kind="participant", participant="01", dwi_file=src, bval_file=series[0].bval_file))),
        (init_single_subject_wf, init_single_subject_wf(
            "01", series, output_dir="/o", reference=Reference())),
        (init_synflow_wf, init_synflow_wf({"01": series}, output_dir="/o")),
    ]


def test_docstrings_draw_the_built_graph(tmp_path):
    """Each factory's docstring holds graph_text() of what it builds (paste it when it changes)."""
    import inspect

    from synflow.workflows.graph import graph_text

    examples = _graph_examples(tmp_path)
    for factory, wf in examples:
        picture = graph_text(wf, indent="    ")
        assert picture in inspect.getdoc(factory), (
            f"{factory.__name__}'s docstring does not draw its graph; it should hold:\n"
            f"{picture}")
    every = {f.__name__ for f, _ in examples}
    import synflow.workflows as wfs

    assert every == {n for n in wfs.__all__ if n.startswith("init_")}
