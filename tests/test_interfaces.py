"""Each Nipype interface on its own, on small synthetic images (4 mm, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synflow.cli._testing import CHEAP_SYN, make_small_bids, make_small_reference
from synflow.interfaces import (
    AffinePrealign,
    ApplyMask,
    ApplyRegistration,
    DerivativesDataSink,
    ExtractB0,
    MedianOtsu,
    QCReport,
    RegistrationReportlets,
    SyNRegistration,
)
from synflow.interfaces.bids import (
    atomic_write,
    build_derivative_name,
    derivative_dir,
    parse_entities,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ifaces")
    bids = make_small_bids(root / "bids", subjects=("01",), seed=3)
    dwi = bids / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    return {"root": root, "dwi": dwi, "bval": dwi.with_name("sub-01_dwi.bval"),
            "ref": make_small_reference(root / "ref.nii.gz")}


def _run(iface, cwd: Path):
    cwd.mkdir(parents=True, exist_ok=True)
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return iface.run()
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def registered(data) -> dict:
    """b0 -> mask -> affine -> SyN once; the other tests reuse the results."""
    root = data["root"]
    b0 = _run(ExtractB0(in_file=str(data["dwi"]), in_bval=str(data["bval"])), root / "b0")
    ref_mask = _run(MedianOtsu(in_file=str(data["ref"])), root / "refmask")
    mov_mask = _run(MedianOtsu(in_file=b0.outputs.out_file), root / "movmask")
    aff = _run(AffinePrealign(reference_file=ref_mask.outputs.out_file,
                              moving_file=mov_mask.outputs.out_file,
                              reference_mask=ref_mask.outputs.out_mask,
                              moving_mask=mov_mask.outputs.out_mask), root / "affine")
    syn = _run(SyNRegistration(reference_file=ref_mask.outputs.out_file,
                               moving_file=mov_mask.outputs.out_file,
                               prealign_file=aff.outputs.out_matrix,
                               reference_mask=ref_mask.outputs.out_mask, **CHEAP_SYN),
               root / "syn")
    return {"b0": b0, "ref_mask": ref_mask, "mov_mask": mov_mask, "affine": aff, "syn": syn}


# ----------------------------------------------------------------------------- naming
def test_out_name_is_fname_presuffix(tmp_path):
    """Interface outputs: <cwd>/<stem><suffix>.nii.gz, whatever the input's extension."""
    from synflow.interfaces.dwi import out_name

    assert out_name("/in/sub-01_dwi.nii.gz", "_b0", str(tmp_path)) == \
        str(tmp_path / "sub-01_dwi_b0.nii.gz")
    assert out_name("/in/sub-01.v2_dwi.nii", "_mask", str(tmp_path)) == \
        str(tmp_path / "sub-01.v2_dwi_mask.nii.gz")


def test_parse_entities():
    ent = parse_entities("/x/sub-01/ses-A/dwi/sub-01_ses-A_acq-hi_dir-AP_run-2_dwi.nii.gz")
    assert ent == {"sub": "01", "ses": "A", "acq": "hi", "dir": "AP", "run": "2",
                   "suffix": "dwi", "extension": ".nii.gz"}
    with pytest.raises(ValueError, match="sub-"):
        parse_entities("ses-1_dwi.nii.gz")


def test_build_derivative_name_nipreps_order():
    src = "sub-01_ses-1_run-1_dwi.nii.gz"
    assert (build_derivative_name(src, "xfm", ".txt", from_="dwiref", to="MNI152NLin2009aSym",
                                  mode="image", desc="affine")
            == "sub-01_ses-1_run-1_from-dwiref_to-MNI152NLin2009aSym_mode-image_desc-affine"
               "_xfm.txt")
    assert (build_derivative_name(src, "dwiref", ".nii.gz", space="custom", desc="b0")
            == "sub-01_ses-1_run-1_space-custom_desc-b0_dwiref.nii.gz")
    assert build_derivative_name(src, "mask", "nii.gz", desc="brain") == \
        "sub-01_ses-1_run-1_desc-brain_mask.nii.gz"
    with pytest.raises(ValueError, match="alphanumeric"):
        build_derivative_name(src, "mask", ".nii.gz", desc="brain-mask")
    chunks = {build_derivative_name(f"sub-01_chunk-{i}_dwi.nii.gz", "dwiref", ".nii.gz")
              for i in (1, 2)}
    assert chunks == {"sub-01_chunk-1_dwiref.nii.gz", "sub-01_chunk-2_dwiref.nii.gz"}
    with pytest.raises(ValueError, match=r"entities \['foo'\] are not known"):
        build_derivative_name("sub-01_foo-1_dwi.nii.gz", "dwiref", ".nii.gz")
    assert derivative_dir("/o", src, "dwi") == Path("/o/sub-01/ses-1/dwi")
    assert derivative_dir("/o", src, "figures") == Path("/o/sub-01/figures")


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "a.nii.gz"
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_derivatives_data_sink(tmp_path):
    src = tmp_path / "in.nii.gz"
    nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)).to_filename(src)
    sink = DerivativesDataSink(base_directory=str(tmp_path / "out"),
                               source_file="/raw/sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz",
                               in_file=str(src), suffix="dwiref", desc="b0", space="custom",
                               meta_dict={"Parameters": {"x": 1}}, qc={"cc_syn": 0.9},
                               sources=["bids:raw:sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz"])
    res = _run(sink, tmp_path / "node")
    out = Path(res.outputs.out_file)
    assert out == tmp_path / "out/sub-01/ses-1/dwi/sub-01_ses-1_space-custom_desc-b0_dwiref.nii.gz"
    meta = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
    assert meta["QC"] == {"cc_syn": 0.9} and meta["Parameters"] == {"x": 1}
    assert meta["Sources"][0].startswith("bids:raw:")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left
    # several files at once (figures): one desc each, no sidecars
    sink = DerivativesDataSink(base_directory=str(tmp_path / "out"),
                               source_file="sub-01_ses-1_dwi.nii.gz", datatype="figures",
                               in_file=[str(src), str(src)], desc=["a", "b"], suffix="dwi",
                               write_sidecar=False)
    res = _run(sink, tmp_path / "node2")
    assert [Path(p).name for p in res.outputs.out_file] == [
        "sub-01_ses-1_desc-a_dwi.nii.gz", "sub-01_ses-1_desc-b_dwi.nii.gz"]
    assert Path(res.outputs.out_file[0]).parent == tmp_path / "out/sub-01/figures"


# ----------------------------------------------------------------------------- DWI / masks
def test_extract_b0(data, registered):
    res = registered["b0"]
    img = nib.load(res.outputs.out_file)
    assert img.ndim == 3 and img.shape == nib.load(data["dwi"]).shape[:3]
    assert res.outputs.n_b0 == 2 and res.outputs.n_volumes == 6
    np.testing.assert_allclose(img.affine, nib.load(data["dwi"]).affine)


def test_extract_b0_threshold_error(data, tmp_path):
    with pytest.raises(Exception, match=r"(?i)b0|threshold"):
        _run(ExtractB0(in_file=str(data["dwi"]), in_bval=str(data["bval"]), b0_threshold=-1.0),
             tmp_path)


def test_median_otsu_and_apply_mask(registered, tmp_path):
    res = registered["mov_mask"]
    mask = np.asanyarray(nib.load(res.outputs.out_mask).dataobj)
    assert mask.dtype == np.uint8 and 0.05 < mask.mean() < 0.9
    masked = _run(ApplyMask(in_file=registered["b0"].outputs.out_file,
                            in_mask=res.outputs.out_mask), tmp_path)
    out = np.asanyarray(nib.load(masked.outputs.out_file).dataobj)
    assert np.all(out[mask == 0] == 0)


def test_apply_mask_dilation_in_mm(tmp_path):
    # one voxel grown by 2 mm on a 1 x 1 x 2 mm grid: the voxels within an ellipsoid
    # |di|^2 + |dj|^2 + (2 dk)^2 <= 4, i.e. 13 in the centre plane + 1 + 1 at dk = +-1
    data = np.arange(1, 9 * 9 * 5 + 1, dtype=np.float32).reshape(9, 9, 5)
    mask = np.zeros(data.shape, np.uint8)
    mask[4, 4, 2] = 1
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(mask, aff), tmp_path / "mask.nii.gz")
    res = _run(ApplyMask(in_file=str(tmp_path / "img.nii.gz"),
                         in_mask=str(tmp_path / "mask.nii.gz"), dilation_mm=2.0),
               tmp_path / "run")
    out = np.asanyarray(nib.load(res.outputs.out_file).dataobj)
    kept = out > 0
    assert kept.sum() == 13 + 1 + 1
    assert kept[4, 4, 2] and kept[6, 4, 2] and kept[4, 4, 3] and not kept[4, 4, 4]
    np.testing.assert_array_equal(out[kept], data[kept])
    with pytest.raises(ValueError, match="dilation_mm must be >= 0"):
        _run(ApplyMask(in_file=str(tmp_path / "img.nii.gz"),
                       in_mask=str(tmp_path / "mask.nii.gz"), dilation_mm=-1.0),
             tmp_path / "bad")


# ----------------------------------------------------------------------------- registration
def test_affine_prealign(data, registered):
    res = registered["affine"]
    mat = np.loadtxt(res.outputs.out_matrix)
    assert mat.shape == (4, 4) and np.allclose(mat[3], [0, 0, 0, 1])
    assert nib.load(res.outputs.out_file).shape == nib.load(data["ref"]).shape
    assert Path(res.outputs.out_itk).read_text().startswith("#Insight Transform File")


def test_syn_registration_outputs(data, registered):
    from synflow.align import read_mapping

    out = registered["syn"].outputs
    for name in ("out_mapping", "out_forward_xfm", "out_inverse_xfm", "out_affine_xfm",
                 "out_file", "out_unaligned", "out_qc"):
        assert Path(getattr(out, name)).exists(), name
    qc = out.qc
    assert set(qc) >= {"cc_before", "cc_affine", "cc_syn", "jacobian_min", "folding_percent",
                       "ice_mean_mm", "ice_p95_mm", "ice_max_mm"}
    assert qc["cc_syn"] > qc["cc_before"]
    assert not any("seconds" in k for k in qc)  # timings are not quality numbers
    assert out.elapsed > 0
    assert out.parameters["level_iters"] == CHEAP_SYN["level_iters"]
    mapping = read_mapping(out.out_mapping)
    warped = mapping.transform(np.asanyarray(nib.load(
        registered["mov_mask"].outputs.out_file).dataobj, dtype=np.float32))
    np.testing.assert_allclose(warped, nib.load(out.out_file).get_fdata(), atol=1e-3)


def test_syn_mapping_works_with_dipys_read_mapping(registered):
    """The sidecar entry DIPYReadMapping is all DIPY's own reader needs."""
    import warnings

    dipy_align = pytest.importorskip("dipy.align")
    out = registered["syn"].outputs
    moving = registered["mov_mask"].outputs.out_file
    meta = out.dipy_meta["DIPYReadMapping"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dmap = dipy_align.read_mapping(out.out_mapping, moving,
                                       registered["ref_mask"].outputs.out_file,
                                       prealign=np.array(meta["Prealign"]))
    warped = dmap.transform(np.asanyarray(nib.load(moving).dataobj, dtype=np.float32))
    expected = nib.load(out.out_file).get_fdata()
    np.testing.assert_allclose(warped, expected, atol=1e-3 * np.abs(expected).max())


def test_thread_inputs_do_not_enter_the_hash():
    a = SyNRegistration(reference_file=__file__, moving_file=__file__, num_threads=1)
    b = SyNRegistration(reference_file=__file__, moving_file=__file__, num_threads=8)
    assert a.inputs.get_hashval()[1] == b.inputs.get_hashval()[1]
    c = SyNRegistration(reference_file=__file__, moving_file=__file__, level_iters=[1])
    assert a.inputs.get_hashval()[1] != c.inputs.get_hashval()[1]
    for iface in (AffinePrealign, ApplyRegistration):
        assert iface.input_spec().trait("num_threads").nohash


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_apply_registration(data, registered, tmp_path, direction):
    syn = registered["syn"].outputs
    if direction == "forward":  # b0-space mask -> reference grid
        in_file, grid = registered["mov_mask"].outputs.out_mask, data["ref"]
    else:  # reference mask -> b0 grid
        in_file, grid = registered["ref_mask"].outputs.out_mask, data["dwi"]
    res = _run(ApplyRegistration(in_file=in_file, mapping_file=syn.out_mapping,
                                 direction=direction, interpolation="nearest"), tmp_path)
    out = nib.load(res.outputs.out_file)
    assert out.shape == nib.load(grid).shape[:3]
    np.testing.assert_allclose(out.affine, nib.load(grid).affine, atol=1e-5)
    vals = np.asanyarray(out.dataobj)
    assert vals.dtype == np.uint8 and set(np.unique(vals)) <= {0, 1} and vals.any()


def test_apply_registration_linear_4d(data, registered, tmp_path):
    syn = registered["syn"].outputs
    res = _run(ApplyRegistration(in_file=str(data["dwi"]), mapping_file=syn.out_mapping),
               tmp_path)
    out = nib.load(res.outputs.out_file)
    assert out.shape == nib.load(data["ref"]).shape + (6,)
    assert out.get_data_dtype() == np.float32


# ----------------------------------------------------------------------------- QC
def test_reportlets_and_report(data, registered, tmp_path):
    syn = registered["syn"].outputs
    res = _run(RegistrationReportlets(
        b0_file=registered["b0"].outputs.out_file,
        mask_file=registered["mov_mask"].outputs.out_mask,
        reference_file=registered["ref_mask"].outputs.out_file,
        reference_mask=registered["ref_mask"].outputs.out_mask,
        unaligned_file=syn.out_unaligned, affine_file=registered["affine"].outputs.out_file,
        warped_file=syn.out_file, mapping_file=syn.out_mapping, series_name="sub-01_dwi",
        qc=syn.qc, parameters={"syn": CHEAP_SYN}), tmp_path / "figs")
    assert len(res.outputs.out_figures) == len(res.outputs.out_descs) == 8
    assert all(Path(f).stat().st_size > 1000 for f in res.outputs.out_figures)
    record = json.loads(Path(res.outputs.out_series).read_text())
    assert record["status"] == "ok" and record["qc"]["cc_syn"] == syn.qc["cc_syn"]
    rep = _run(QCReport(subject="01", in_series=[res.outputs.out_series]), tmp_path / "rep")
    html = Path(rep.outputs.out_report).read_text()
    assert "sub-01" in html and "<svg" in html


def test_single_volume_4d_images_are_3d(data, tmp_path):
    """An (X, Y, Z, 1) reference, as some tools write, works like the 3-D image."""
    img = nib.load(data["ref"])
    img4 = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine)
    nib.save(img4, tmp_path / "ref4d.nii.gz")
    res3 = _run(MedianOtsu(in_file=str(data["ref"])), tmp_path / "m3")
    res4 = _run(MedianOtsu(in_file=str(tmp_path / "ref4d.nii.gz")), tmp_path / "m4")
    np.testing.assert_array_equal(np.asanyarray(nib.load(res4.outputs.out_mask).dataobj),
                                  np.asanyarray(nib.load(res3.outputs.out_mask).dataobj))
    applied = _run(ApplyMask(in_file=str(tmp_path / "ref4d.nii.gz"),
                             in_mask=res4.outputs.out_mask, dilation_mm=4.0), tmp_path / "a4")
    assert nib.load(applied.outputs.out_file).shape == img.shape


# ----------------------------------------------------------------------------- sidecars
def test_reference_record_survives_a_reinstall(tmp_path):
    """Sidecars name the bundled template (name, synflow version, sha256), not the
    site-packages path that disappears on reinstall; a user's file keeps its path."""
    import hashlib

    import synflow
    from synflow.data import get_template
    from synflow.workflows.reference import Reference

    rec = Reference().describe()
    b0, mask = get_template("b0"), get_template("brainmask")
    assert rec["Template"] == "tpl-MNI152NLin2009aSym res-02"
    assert rec["SynflowVersion"] == synflow.__version__
    assert rec["Image"] == b0.name and rec["Mask"] == mask.name
    assert "/" not in rec["Image"] and "site-packages" not in json.dumps(rec)
    assert rec["ImageSHA256"] == hashlib.sha256(b0.read_bytes()).hexdigest()
    assert rec["MaskSHA256"] == hashlib.sha256(mask.read_bytes()).hexdigest()

    mine = tmp_path / "my_ref.nii.gz"
    mine.write_bytes(b0.read_bytes())
    rec = Reference(kind="image", image=str(mine)).describe()
    assert rec["Image"] == str(mine) and "Template" not in rec
    assert rec["ImageSHA256"] == hashlib.sha256(mine.read_bytes()).hexdigest()
    json.dumps(rec)  # JSON-able


def test_flicker_figures_name_their_layers():
    from synflow.interfaces.reports import figure_entries

    entries = {e["title"]: e for e in figure_entries(["a.svg", "b.svg", "c.svg"],
                                                     ["affinesyn", "flickersyn", "grid"])}
    assert (entries["Affine vs. SyN"]["before_label"],
            entries["Affine vs. SyN"]["after_label"]) == ("b0 after affine", "b0 after SyN")
    assert entries["Reference vs. registered b0"]["before_label"] == "reference"
    assert "before_label" not in entries["Deformation"]
