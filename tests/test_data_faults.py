"""Bad input data (issue 10, items 9, 10, 12): each fault reproduced on small synthetic data.

* complex voxels -> a data error "complex data is not supported" naming the file;
* a NaN affine -> "non-finite entries", naming the file;
* a few NaN voxels (one corner voxel in every volume) -> processed, zeroed, counted, warned;
  many NaN voxels inside the brain -> a data error;
* a sheared sform (qform_code 0) -> nibabel's affine rule, a shear warning, outputs whose
  qform never disagrees with their sform; failed-looking QC numbers -> ``QCStatus: warning``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nipype.pipeline import engine as pe

from synflow.cli._testing import CHEAP_SYN, make_small_bids, make_small_reference
from synflow.interfaces.dwi import ExtractB0, MedianOtsu
from synflow.interfaces.registration import MAX_FOLDING_PERCENT, qc_status
from synflow.io.dwi import extract_b0, read_mean_b0
from synflow.io.image import NiftiError, affine_shear, affine_source, load_volume, nifti_like

AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
SHEARED = AFFINE.copy()
SHEARED[0, 1] = 0.6  # the i axis leans along y: no rotation x voxel sizes gives this


def _blob(shape=(24, 26, 20)) -> np.ndarray:
    g = np.indices(shape, dtype=np.float64)
    c = (np.array(shape, dtype=np.float64) - 1) / 2
    d = np.sqrt(sum(((g[i] - c[i]) / (0.3 * shape[i])) ** 2 for i in range(3)))
    return (100.0 * (d < 1) + 60.0 * (d < 0.5)).astype(np.float32)


def _series(tmp_path: Path, data: np.ndarray | None = None, affine=AFFINE, *, sform_code=1,
            qform_code=1, name="dwi") -> tuple[Path, Path]:
    """A 4-volume series (b = 0, 1000, 0, 1000) and its .bval, with the given header codes."""
    if data is None:
        base = _blob()
        data = np.stack([base, base * 0.4, base, base * 0.4], axis=-1)
    img = nib.Nifti1Image(data, None)
    img.header.set_sform(affine, code=sform_code)
    img.header.set_qform(affine if qform_code else None, code=qform_code)
    dwi = tmp_path / f"{name}.nii.gz"
    nib.save(img, str(dwi))
    bval = tmp_path / f"{name}.bval"
    bval.write_text("0 1000 0 1000\n")
    return dwi, bval


# --- item 10: messages that name the problem -----------------------------------------------

def test_complex_data_is_a_data_error_naming_the_file(tmp_path):
    base = _blob()
    data = np.stack([base, base, base, base], axis=-1).astype(np.complex64) * (1 + 1j)
    dwi, bval = _series(tmp_path, data, name="cplx")
    with pytest.raises(NiftiError, match=r"cplx\.nii\.gz: complex data is not supported"):
        extract_b0(dwi, bval)
    with pytest.raises(ValueError, match="complex data is not supported"):
        load_volume(dwi)
    with pytest.raises(ValueError, match=r"cplx\.nii\.gz: complex data is not supported"):
        ExtractB0(in_file=str(dwi), in_bval=str(bval)).run(cwd=str(tmp_path))


def test_nan_affine_says_non_finite_and_names_the_file(tmp_path):
    bad = AFFINE.copy()
    bad[0, 3] = np.nan
    dwi, bval = _series(tmp_path, affine=bad, name="nanaff")
    with pytest.raises(ValueError, match=r"affine of DWI file .*nanaff\.nii\.gz has 1 "
                                         r"non-finite entries"):
        extract_b0(dwi, bval)


# --- item 12: a few non-finite voxels are zeroed, counted and warned -----------------------

def _with_nan(positions) -> np.ndarray:
    base = _blob()
    data = np.stack([base, base * 0.4, base, base * 0.4], axis=-1)
    for pos in positions:
        data[pos] = np.nan  # pos indexes (i, j, k) or (i, j, k, volume)
    return data


def test_corner_nan_in_every_volume_is_zeroed_counted_and_warned(tmp_path):
    dwi, bval = _series(tmp_path, _with_nan([(0, 0, 0)]))
    with pytest.raises(ValueError, match="2 NaN/inf voxels"):  # the engine API still refuses
        extract_b0(dwi, bval)
    res = ExtractB0(in_file=str(dwi), in_bval=str(bval)).run(cwd=str(tmp_path)).outputs
    b0 = nib.load(res.out_file).get_fdata()
    assert np.all(np.isfinite(b0)) and b0[0, 0, 0] == 0
    assert res.data_qc["NonFiniteVoxels"] == 1 and res.data_qc["NonFiniteValues"] == 2
    assert any("1 voxels were NaN/inf" in w for w in res.data_qc["DataWarnings"])
    assert np.count_nonzero(nib.load(res.out_nonfinite).get_fdata()) == 1
    mo = MedianOtsu(in_file=res.out_file, nonfinite_mask=res.out_nonfinite, median_radius=1,
                    numpass=1, data_qc=res.data_qc).run(cwd=str(tmp_path)).outputs
    assert mo.data_qc["NonFiniteVoxelsInMask"] == 0 and mo.data_qc["BrainMaskVoxels"] > 0
    qc = qc_status({"cc_affine": 0.5, "cc_syn": 0.7, "folding_percent": 0.0}, mo.data_qc)
    assert qc["QCStatus"] == "warning" and qc["NonFiniteVoxels"] == 1
    assert "DataWarnings" not in qc and len(qc["QCWarnings"]) == 1


def test_clean_series_gives_identical_b0_and_no_warning(tmp_path):
    dwi, bval = _series(tmp_path)
    res = ExtractB0(in_file=str(dwi), in_bval=str(bval)).run(cwd=str(tmp_path)).outputs
    ref = extract_b0(dwi, bval)
    assert np.array_equal(nib.load(res.out_file).get_fdata(), ref.get_fdata())
    assert res.data_qc["NonFiniteVoxels"] == 0 and res.data_qc["DataWarnings"] == []
    assert res.data_qc["AffineSource"] == "sform" and res.data_qc["AffineShear"] == 0


def test_nan_inside_the_brain_fails_the_series(tmp_path):
    # a 4x4x4 block in the middle of the brain: 64 voxels, far above 0.1 % of the mask
    block = (slice(10, 14), slice(11, 15), slice(8, 12))
    dwi, bval = _series(tmp_path, _with_nan([(*block, 0)]))
    res = ExtractB0(in_file=str(dwi), in_bval=str(bval)).run(cwd=str(tmp_path)).outputs
    assert res.data_qc["NonFiniteVoxels"] == 64
    with pytest.raises(ValueError, match=r"64 of the \d+ brain-mask voxels .* were NaN/inf"):
        MedianOtsu(in_file=res.out_file, nonfinite_mask=res.out_nonfinite, median_radius=1,
                   numpass=1, data_qc=res.data_qc).run(cwd=str(tmp_path))


# --- item 9: header rule, shear, QC verdict -----------------------------------------------

def test_affine_rule_is_nibabels(tmp_path):
    for sform_code, qform_code, expected in [(1, 1, "sform"), (0, 1, "qform"),
                                             (2, 0, "sform"), (0, 0, "fallback")]:
        dwi, bval = _series(tmp_path, sform_code=sform_code, qform_code=qform_code,
                            name=f"s{sform_code}q{qform_code}")
        img = nib.load(dwi)
        assert affine_source(img.header) == expected
        out, _, info = read_mean_b0(dwi, bval)
        assert info["AffineSource"] == expected
        assert np.allclose(out.affine, img.affine)
        assert np.allclose(out.header.get_qform(), out.header.get_sform())
        assert out.header["qform_code"] > 0 and out.header["sform_code"] > 0
        assert (expected == "fallback") == any("fall-back" in w for w in info["DataWarnings"])


def test_sheared_sform_is_kept_in_the_sform_only_and_warned(tmp_path):
    dwi, bval = _series(tmp_path, affine=SHEARED, sform_code=2, qform_code=0, name="shear")
    assert affine_shear(SHEARED) > 0.1 and affine_shear(AFFINE) == 0
    out, _, info = read_mean_b0(dwi, bval)
    assert info["AffineSource"] == "sform" and info["AffineShear"] > 0.1
    assert any("sheared" in w and "qform cannot hold shear" in w for w in info["DataWarnings"])
    assert np.allclose(out.header.get_sform(), SHEARED) and out.header["sform_code"] == 2
    # no qform that disagrees with the sform: the qform is unset (a qform cannot hold shear)
    assert out.header["qform_code"] == 0 and out.header.get_qform(coded=True)[0] is None
    saved = tmp_path / "b0.nii.gz"
    nib.save(out, str(saved))
    assert np.allclose(nib.load(saved).affine, SHEARED)
    # nifti_like on an unsheared image keeps qform == sform
    plain = nifti_like(np.zeros((2, 2, 2)), nib.Nifti1Image(np.zeros((2, 2, 2)), AFFINE))
    assert np.allclose(plain.header.get_qform(), plain.header.get_sform())


def test_qc_status_flags_failed_registration_numbers():
    good = {"cc_before": 0.3, "cc_affine": 0.6, "cc_syn": 0.8, "folding_percent": 0.0}
    assert qc_status(good) == {**good, "QCStatus": "ok", "QCWarnings": []}
    # the outside tester's numbers: CC 0.043 before, -0.109 after SyN
    failed = qc_status({**good, "cc_before": 0.043, "cc_affine": 0.05, "cc_syn": -0.109})
    assert failed["QCStatus"] == "warning"
    assert "not above local CC after the affine" in failed["QCWarnings"][0]
    folded = qc_status({**good, "folding_percent": 2 * MAX_FOLDING_PERCENT})
    assert folded["QCStatus"] == "warning" and "fold" in folded["QCWarnings"][0]
    assert qc_status({"syn_seconds": 1.0})["QCStatus"] == "ok"  # compute_qc=False


# --- whole series, through the workflow ----------------------------------------------------

def _run_one(tmp_path: Path, edit) -> tuple[Path, dict]:
    """Run one small series through the workflow after ``edit(img) -> img``; its sidecar QC."""
    from synflow.workflows.base import DWISeries, init_single_subject_wf
    from synflow.workflows.reference import Reference, init_reference_wf

    bids = make_small_bids(tmp_path / "bids", subjects=("01",), seed=2)
    ref = make_small_reference(tmp_path / "ref.nii.gz")
    dwi = bids / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    nib.save(edit(nib.load(dwi)), str(dwi))
    reference = Reference(kind="image", image=str(ref), space="small")
    wf = pe.Workflow(name="faults", base_dir=str(tmp_path / "work"))
    sub_wf = init_single_subject_wf("01", [DWISeries(str(dwi), str(dwi).replace(
        ".nii.gz", ".bval"))], output_dir=str(tmp_path / "out"), reference=reference,
        bids_dir=str(bids), syn=CHEAP_SYN, reportlets=False)
    wf.connect([(init_reference_wf(reference), sub_wf, [
        ("outputnode.reference", "inputnode.reference"),
        ("outputnode.reference_mask", "inputnode.reference_mask")])])
    wf.run(plugin="Linear")
    out = tmp_path / "out" / "sub-01" / "dwi"
    meta = json.loads((out / "sub-01_from-dwiref_to-small_mode-image_xfm.json").read_text())
    return out, meta["QC"]


def test_series_with_a_nan_corner_voxel_is_processed(tmp_path):
    def corner_nan(img):
        data = np.asanyarray(img.dataobj).astype(np.float32)
        data[0, 0, 0, :] = np.nan
        return nib.Nifti1Image(data, img.affine, img.header)

    out, qc = _run_one(tmp_path, corner_nan)
    assert qc["NonFiniteVoxels"] == 1 and qc["NonFiniteVoxelsInMask"] == 0
    assert qc["QCStatus"] == "warning" and any("NaN/inf" in w for w in qc["QCWarnings"])
    assert np.isfinite(qc["cc_syn"]) and qc["cc_syn"] > qc["cc_before"]
    b0 = nib.load(out / "sub-01_desc-b0_dwiref.nii.gz").get_fdata()
    assert np.all(np.isfinite(b0))


def test_clean_series_is_ok(tmp_path):
    _, qc = _run_one(tmp_path, lambda img: img)
    assert qc["QCStatus"] == "ok" and qc["QCWarnings"] == []
    assert qc["NonFiniteVoxels"] == 0 and qc["AffineSource"] == "sform"
