"""synflow.io.image / gradients / dwi: NIfTI I/O, atomic writes, bvals/bvecs, b0 extraction."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from synflow.io.dwi import b0_indices, extract_b0, mean_b0
from synflow.io.gradients import GradientFileError, read_bvals_bvecs
from synflow.io.image import (
    NiftiError,
    atomic_path,
    atomic_write_nifti,
    load_nifti,
    load_volume,
    nifti_like,
    save_nifti,
    split_ext,
)

AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


def _blob(shape=(24, 26, 20), shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    g = np.indices(shape, dtype=np.float64)
    c = (np.array(shape, dtype=np.float64) - 1) / 2 + np.array(shift)
    d = np.sqrt(sum(((g[i] - c[i]) / (0.3 * shape[i])) ** 2 for i in range(3)))
    return ndi.gaussian_filter(100.0 * (d < 1) + 60.0 * (d < 0.5), 1.0).astype(np.float32)


def _write_series(tmp_path, bvals, nvol=None, dtype=np.float32, name="dwi"):
    """Small DWI series: b0s = blob (+ small noise), DW volumes = attenuated blob."""
    rng = np.random.default_rng(0)
    bvals = np.asarray(bvals, dtype=float)
    nvol = len(bvals) if nvol is None else nvol
    base = _blob()
    vols = []
    for i in range(nvol):
        b = bvals[i] if i < len(bvals) else 1000.0
        vols.append(base * np.exp(-b / 1000.0) + rng.normal(0, 0.5, base.shape))
    data = np.stack(vols, axis=-1).astype(dtype)
    dwi = tmp_path / f"{name}.nii.gz"
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(AFFINE, code=1)
    img.header.set_sform(AFFINE, code=1)
    nib.save(img, str(dwi))
    fbval = tmp_path / f"{name}.bval"
    fbval.write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    bvecs = np.zeros((3, len(bvals)))
    bvecs[0, bvals > 50] = 1.0
    fbvec = tmp_path / f"{name}.bvec"
    fbvec.write_text("\n".join(" ".join(f"{v:g}" for v in row) for row in bvecs) + "\n")
    return dwi, fbval, fbvec, data


# ----------------------------------------------------------------------------- image I/O
def test_save_load_roundtrip_and_dipy_return_values(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    f = tmp_path / "sub" / "x.nii.gz"
    save_nifti(f, data, AFFINE)
    out = load_nifti(f, return_img=True, return_voxsize=True, return_coords=True)
    assert len(out) == 5
    arr, aff, img, vox, codes = out
    np.testing.assert_array_equal(arr, data)
    np.testing.assert_allclose(aff, AFFINE)
    assert isinstance(img, nib.Nifti1Image)
    assert tuple(vox) == (2.0, 2.0, 2.0)
    assert codes == ("L", "A", "S")
    assert [p.name for p in f.parent.iterdir()] == ["x.nii.gz"]  # no temporary left
    lazy, _ = load_nifti(f, as_ndarray=False)
    assert not isinstance(lazy, np.ndarray)


def test_save_nifti_refuses_int64_without_dtype(tmp_path):
    with pytest.raises(ValueError, match="int64"):
        save_nifti(tmp_path / "a.nii", np.zeros((2, 2, 2), np.int64), AFFINE)
    save_nifti(tmp_path / "a.nii", np.zeros((2, 2, 2), np.int64), AFFINE, dtype=np.int32)
    assert load_nifti(tmp_path / "a.nii")[0].dtype == np.int32


def test_load_nifti_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(NiftiError, match="not found.*nope.nii.gz"):
        load_nifti(missing)
    text = tmp_path / "text.nii"
    text.write_text("hello, not a nifti\n")
    with pytest.raises(ValueError, match="text.nii"):
        load_nifti(text)
    good = tmp_path / "good.nii.gz"
    save_nifti(good, np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32),
               AFFINE)
    raw = gzip.decompress(good.read_bytes())
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(NiftiError, match="trunc.nii.gz"):
        load_nifti(trunc)
    trunc_raw = tmp_path / "trunc.nii"
    trunc_raw.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="trunc.nii"):
        load_nifti(trunc_raw)
    cut_gz = tmp_path / "cut.nii.gz"
    cut_gz.write_bytes(good.read_bytes()[:-200])  # truncated gzip stream
    with pytest.raises(ValueError, match="cut.nii.gz"):
        load_nifti(cut_gz)


def test_atomic_path_success_and_failure(tmp_path):
    dest = tmp_path / "out" / "img.nii.gz"
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".")
        assert tmp.name.endswith(".nii.gz")
        assert not dest.exists()
        tmp.write_bytes(b"first")
    assert dest.read_bytes() == b"first"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half-written")
            raise RuntimeError("crash while writing")
    assert dest.read_bytes() == b"first"  # untouched
    assert sorted(p.name for p in dest.parent.iterdir()) == ["img.nii.gz"]
    img = nib.Nifti1Image(np.ones((2, 2, 2), np.float32), AFFINE)
    assert atomic_write_nifti(img, dest) == dest
    np.testing.assert_array_equal(nib.load(str(dest)).get_fdata(), 1.0)
    assert split_ext("a/b.nii.gz") == ("a/b", ".nii.gz")
    assert split_ext("a/b.json") == ("a/b", ".json")


def test_one_split_ext_everywhere():
    """io.image, interfaces.bids and _atomic share one split_ext (os.path.splitext meaning)."""
    from synflow import _atomic
    from synflow.interfaces import bids

    assert bids.split_ext is split_ext is _atomic.split_ext
    assert split_ext("/d/sub-01_dwi.NII.GZ") == ("/d/sub-01_dwi", ".NII.GZ")
    assert split_ext("x.tar.gz") == ("x", ".tar.gz")
    assert split_ext("d.v1/noext") == ("d.v1/noext", "")


def test_load_volume_and_nifti_like(tmp_path):
    """float32 3-D voxels (X,Y,Z,1 squeezed, scaling applied); nifti_like keeps grid and codes."""
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4, 1)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_slope_inter(0.5, 1.0)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_sform(AFFINE, 2)
    img.header.set_qform(AFFINE, 0)
    f = tmp_path / "v.nii.gz"
    nib.save(img, str(f))
    vol, aff, loaded = load_volume(f)
    assert vol.dtype == np.float32 and vol.shape == (2, 3, 4)
    np.testing.assert_array_equal(vol, data[..., 0] * 0.5 + 1.0)
    np.testing.assert_array_equal(aff, AFFINE)
    out = nifti_like(vol > 3, loaded, np.uint8)
    assert out.get_data_dtype() == np.uint8
    assert int(out.header["sform_code"]) == 2 and int(out.header["qform_code"]) == 1
    assert out.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_array_equal(out.affine, AFFINE)
    with pytest.raises(NiftiError, match="not found.*missing.nii"):
        load_volume(tmp_path / "missing.nii")


def test_atomic_files_get_ordinary_permissions(tmp_path):
    """Outputs are readable like any file the user writes (umask), not mkstemp's 0600."""
    import os
    import stat

    from synflow.align import write_mapping
    from synflow.align.imwarp import DiffeomorphicMap
    from synflow.io.itk import write_itk_affine, write_itk_composite

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        mapping = DiffeomorphicMap(3, (4, 4, 4), AFFINE, (4, 4, 4), AFFINE, (4, 4, 4), AFFINE)
        mapping.allocate()
        write_mapping(mapping, tmp_path / "map.nii.gz")
        write_itk_composite(mapping, tmp_path / "xfm.h5")
        write_itk_affine(np.eye(4), tmp_path / "aff.txt")
    finally:
        os.umask(old)
    for name in ("a.txt", "map.nii.gz", "xfm.h5", "aff.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]


# ----------------------------------------------------------------------------- gradients
def test_read_bvals_bvecs_fsl_and_transposed(tmp_path):
    bvals = np.array([0, 5, 1000, 1000, 2000.0])
    bvecs = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]])
    fb = tmp_path / "x.bval"
    fb.write_text("0\t5,1000 1000 2000\n")
    fv = tmp_path / "x.bvec"
    np.savetxt(fv, bvecs.T)  # FSL: 3 rows
    b, v = read_bvals_bvecs(fb, fv)
    np.testing.assert_array_equal(b, bvals)
    np.testing.assert_array_equal(v, bvecs)
    fv2 = tmp_path / "y.txt"
    np.savetxt(fv2, bvecs)  # N x 3 is accepted too
    np.testing.assert_array_equal(read_bvals_bvecs(str(fb), str(fv2))[1], bvecs)
    b_only, none = read_bvals_bvecs(fb, None)
    assert none is None and b_only.shape == (5,)
    np.save(tmp_path / "b.npy", bvals)
    np.testing.assert_array_equal(read_bvals_bvecs(tmp_path / "b.npy", None)[0], bvals)


def test_read_bvals_bvecs_errors(tmp_path):
    fb = tmp_path / "x.bval"
    fb.write_text("0 1000 1000\n")
    fv = tmp_path / "x.bvec"
    np.savetxt(fv, np.eye(3)[:, [0, 1]].T.T)  # 3 x 2: two directions
    with pytest.raises(GradientFileError, match=r"3 b-values in .*x.bval but 2 b-vectors"):
        read_bvals_bvecs(fb, fv)
    with pytest.raises(ValueError, match="not found.*missing.bval"):
        read_bvals_bvecs(tmp_path / "missing.bval", None)
    bad = tmp_path / "bad.bval"
    bad.write_text("0 abc 1000\n")
    with pytest.raises(ValueError, match="bad.bval"):
        read_bvals_bvecs(bad, None)
    empty = tmp_path / "empty.bval"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_bvals_bvecs(empty, None)
    fv4 = tmp_path / "four.bvec"
    np.savetxt(fv4, np.ones((4, 4)))
    with pytest.raises(OSError, match="three rows"):  # DIPY raises OSError here
        read_bvals_bvecs(None, fv4)
    csv = tmp_path / "x.csv"
    csv.write_text("0 1000\n")
    with pytest.raises(ValueError, match="not recognized"):
        read_bvals_bvecs(csv, None)


# --------------------------------------------------------------------------------- b0s
def test_b0_indices_threshold():
    bvals = [5, 1000, 10, 1000, 0, 2000]
    np.testing.assert_array_equal(b0_indices(bvals), [0, 2, 4])
    np.testing.assert_array_equal(b0_indices(bvals, b0_threshold=5), [0, 4])
    np.testing.assert_array_equal(b0_indices(bvals, b0_threshold=1000), [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"smallest b-value is 5 .*b0_threshold=1"):
        b0_indices([5, 1000, 10], b0_threshold=1)
    with pytest.raises(ValueError, match="b0_threshold"):
        b0_indices(bvals, b0_threshold=-1)
    with pytest.raises(ValueError, match="negative"):
        b0_indices([0, -5, 1000])


def test_mean_b0_array_level():
    rng = np.random.default_rng(1)
    data = rng.normal(100, 5, size=(6, 7, 5, 6)).astype(np.int16)
    bvals = np.array([0, 1000, 5, 1000, 10, 2000])
    mean, aff, idx = mean_b0(data, AFFINE, bvals)
    np.testing.assert_array_equal(idx, [0, 2, 4])
    assert mean.dtype == np.float32 and mean.shape == (6, 7, 5)
    np.testing.assert_allclose(mean, data[..., [0, 2, 4]].astype(np.float64).mean(-1), rtol=1e-6)
    np.testing.assert_array_equal(aff, AFFINE)
    with pytest.raises(ValueError, match="3-D shape"):
        mean_b0(data[..., 0], AFFINE, [0])
    with pytest.raises(ValueError, match="6 volumes but bvals lists 5"):
        mean_b0(data, AFFINE, bvals[:5])
    with pytest.raises(ValueError, match="smallest b-value is 1000"):
        mean_b0(data, AFFINE, [1000] * 6)
    fdata = data.astype(np.float32)
    fdata[1, 1, 1, 2] = np.nan
    fdata[2, 2, 2, 4] = np.nan
    fdata[3, 3, 3, 1] = np.nan  # not a b0: ignored
    with pytest.raises(ValueError, match="2 NaN/inf voxels"):
        mean_b0(fdata, AFFINE, bvals)
    zeroed, _, _ = mean_b0(fdata, AFFINE, bvals, nonfinite="zero")
    expect = np.nan_to_num(fdata[..., [0, 2, 4]].astype(np.float64), nan=0.0).mean(-1)
    np.testing.assert_allclose(zeroed, expect, rtol=1e-6)
    with pytest.raises(ValueError, match="nonfinite must be"):
        mean_b0(fdata, AFFINE, bvals, nonfinite="ignore")


def test_extract_b0_file_level(tmp_path):
    bvals = [0, 1000, 1000, 5, 2000, 10, 1000]
    dwi, fbval, _, data = _write_series(tmp_path, bvals)
    out = tmp_path / "deriv" / "sub-01_desc-b0_dwiref.nii.gz"
    img = extract_b0(dwi, fbval, out_file=out)
    expected = data[..., [0, 3, 5]].astype(np.float64).mean(-1)
    np.testing.assert_allclose(img.get_fdata(), expected, rtol=1e-6, atol=1e-4)
    saved = nib.load(str(out))
    assert saved.shape == data.shape[:3]
    assert saved.get_data_dtype() == np.float32
    np.testing.assert_allclose(saved.affine, AFFINE)
    assert int(saved.header["sform_code"]) == 1 and int(saved.header["qform_code"]) == 1
    np.testing.assert_allclose(saved.get_fdata(), img.get_fdata())
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    # a larger threshold also takes b=1000 volumes
    img_all = extract_b0(dwi, fbval, b0_threshold=1000)
    np.testing.assert_allclose(
        img_all.get_fdata(), data[..., [0, 1, 2, 3, 5, 6]].astype(np.float64).mean(-1),
        rtol=1e-6, atol=1e-4)


def test_extract_b0_errors_name_the_files(tmp_path):
    dwi, fbval, _, data = _write_series(tmp_path, [5, 1000, 10, 1000])
    with pytest.raises(ValueError, match=r"DWI file .*dwi.nii.gz has 4 volumes but b-values "
                                         r"file .*short.bval lists 3"):
        short = tmp_path / "short.bval"
        short.write_text("0 1000 1000\n")
        extract_b0(dwi, short)
    with pytest.raises(ValueError, match=r"smallest b-value is 5 .*raise the threshold"):
        extract_b0(dwi, fbval, b0_threshold=1)
    vol3 = tmp_path / "three.nii.gz"
    nib.save(nib.Nifti1Image(data[..., 0], AFFINE), str(vol3))
    with pytest.raises(ValueError, match=r"three.nii.gz must be a 4-D DWI series"):
        extract_b0(vol3, fbval)
    nan = data.copy()
    nan[0, 0, 0, 0] = np.nan
    fnan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(nan, AFFINE), str(fnan))
    with pytest.raises(ValueError, match=r"nan.nii.gz has 1 NaN/inf voxels"):
        extract_b0(fnan, fbval)
    raw = gzip.decompress(dwi.read_bytes())
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(gzip.compress(raw[: int(len(raw) * 0.6)]))
    with pytest.raises(ValueError, match="trunc.nii.gz"):
        extract_b0(trunc, fbval)
    with pytest.raises(ValueError, match="missing.nii.gz"):
        extract_b0(tmp_path / "missing.nii.gz", fbval)
    out = tmp_path / "never.nii.gz"
    with pytest.raises(ValueError):
        extract_b0(dwi, fbval, out_file=out, b0_threshold=1)
    assert not out.exists()


def test_extract_b0_integer_scaled_file(tmp_path):
    dwi, fbval, _, data = _write_series(tmp_path, [0, 1000, 0], dtype=np.int16, name="int")
    img = extract_b0(dwi, fbval)
    np.testing.assert_allclose(img.get_fdata(),
                               data[..., [0, 2]].astype(np.float64).mean(-1), atol=1e-4)


def test_mean_b0_align_registers_moved_b0s():
    pytest.importorskip("synflow.align._affine_public")
    from synflow import align

    if not hasattr(align, "affine_registration"):
        pytest.skip("synflow.align.affine_registration not available yet")
    ref = _blob()
    moved = _blob(shift=(2.0, -1.5, 1.0))
    dw = 0.3 * ref
    data = np.stack([ref, dw, moved], axis=-1)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    plain, _, idx = mean_b0(data, aff, [0, 1000, 0])
    aligned, _, _ = mean_b0(data, aff, [0, 1000, 0], align=True)
    np.testing.assert_array_equal(idx, [0, 2])
    err_plain = np.abs(plain - ref).mean()
    err_aligned = np.abs(aligned - ref).mean()
    assert err_aligned < 0.3 * err_plain
    assert aligned.dtype == np.float32


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_save_nifti_unwritable_directory_leaves_nothing(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that ignores permissions")
        with pytest.raises(OSError):
            save_nifti(ro / "x.nii.gz", np.zeros((2, 2, 2), np.float32), AFFINE)
    finally:
        ro.chmod(0o700)
