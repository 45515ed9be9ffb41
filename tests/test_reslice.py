"""synflow.align.reslice.reslice (DIPY's reslice) and the Reslice Nipype interface."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from synflow.align.reslice import reslice


def _data(shape=(21, 18, 15, 2), dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return ((rng.random(shape) - 0.3) * 1000).astype(dtype)


def _affine():
    a = np.diag([2.0, 2.0, 2.5, 1.0])
    a[:3, 3] = [-20.0, -18.0, -15.0]
    return a


def test_known_answer_linear_ramp():
    """Order 1 reproduces a linear function exactly at the new sample points."""
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in (10, 12, 8)],
                          indexing="ij")
    vol = 3 * i - 2 * j + 0.5 * k
    out, aff2 = reslice(vol, np.eye(4), (1, 1, 1), (0.5, 2.0, 1.0), order=1, mode="nearest")
    assert out.shape == (20, 6, 8)
    ii, jj, kk = np.meshgrid(0.5 * np.arange(20), 2.0 * np.arange(6), np.arange(8),
                             indexing="ij")
    inside = ii <= 9
    np.testing.assert_allclose(out[inside], (3 * ii - 2 * jj + 0.5 * kk)[inside], atol=1e-12)
    np.testing.assert_allclose(aff2, np.diag([0.5, 2.0, 1.0, 1.0]))


@pytest.mark.needs_dipy
@pytest.mark.parametrize("order", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("mode", ["constant", "nearest", "reflect", "wrap", "mirror",
                                  "grid-constant", "grid-mirror", "grid-wrap"])
def test_equals_dipy(order, mode):
    dipy_reslice = pytest.importorskip("dipy.align.reslice").reslice
    data = _data()
    for new_zooms in [(1.0, 1.3, 3.0), (3.0, 3.0, 3.0)]:
        ref, ref_aff = dipy_reslice(data, _affine(), (2.0, 2.0, 2.5), new_zooms, order=order,
                                    mode=mode, cval=3.0)
        out, aff = reslice(data, _affine(), (2.0, 2.0, 2.5), new_zooms, order=order,
                           mode=mode, cval=3.0)
        assert out.dtype == ref.dtype and out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-9)
        np.testing.assert_allclose(aff, ref_aff)


@pytest.mark.needs_dipy
@pytest.mark.parametrize("order", [0, 1, 3])
def test_equals_dipy_layouts_and_odd_shapes(order):
    """3-D and 4-D, C- and Fortran-ordered (nibabel's layout), odd sizes, anisotropic
    zooms up and down, float32 (float32 arithmetic) and float64, cval 0 and not."""
    dipy_reslice = pytest.importorskip("dipy.align.reslice").reslice
    rng = np.random.default_rng(3)
    for shape, dtype, fortran, cval in (((13, 10, 7, 3), np.float32, True, 0.0),
                                        ((13, 10, 7, 3), np.float64, False, -2.0),
                                        ((9, 11, 5), np.float32, False, 0.0),
                                        ((9, 11, 5), np.float64, True, 5.0)):
        data = (rng.random(shape) * 100).astype(dtype)
        data = np.asfortranarray(data) if fortran else data
        for new_zooms in [(0.7, 1.9, 1.25), (2.6, 1.0, 0.5)]:
            ref, _ = dipy_reslice(data, np.eye(4), (1.0, 1.2, 1.5), new_zooms, order=order,
                                  cval=cval)
            out, _ = reslice(data, np.eye(4), (1.0, 1.2, 1.5), new_zooms, order=order,
                             cval=cval)
            assert out.dtype == ref.dtype and out.shape == ref.shape
            atol = 1e-4 if dtype == np.float32 else 1e-10
            np.testing.assert_allclose(out, ref, rtol=0, atol=atol)


@pytest.mark.needs_dipy
@pytest.mark.parametrize("order", [1, 3])
def test_non_finite_data_equal_dipy(order):
    """NaN stays where SciPy puts it (the per-volume path; a dense product would spread it)."""
    dipy_reslice = pytest.importorskip("dipy.align.reslice").reslice
    data = _data()
    data[5, 6, 7, 0] = np.nan
    ref, _ = dipy_reslice(data, _affine(), (2.0, 2.0, 2.5), (1.5, 1.5, 1.5), order=order)
    out, _ = reslice(data, _affine(), (2.0, 2.0, 2.5), (1.5, 1.5, 1.5), order=order)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=0, atol=1e-9)


@pytest.mark.needs_dipy
def test_equals_dipy_float32_and_int16():
    dipy_reslice = pytest.importorskip("dipy.align.reslice").reslice
    for dtype, atol in ((np.float32, 1e-6), (np.int16, 1)):
        data = _data(dtype=dtype)
        ref, _ = dipy_reslice(data, _affine(), (2.0, 2.0, 2.5), (1.5, 1.5, 1.5), order=3)
        out, _ = reslice(data, _affine(), (2.0, 2.0, 2.5), (1.5, 1.5, 1.5), order=3)
        assert out.dtype == dtype
        span = float(np.ptp(ref))
        np.testing.assert_allclose(out.astype(np.float64) / span, ref / span, rtol=0,
                                   atol=atol if dtype == np.float32 else 1.0 / span)


@pytest.mark.needs_dipy
def test_integer_output_rounded_and_clipped_as_dipy():
    dipy_reslice = pytest.importorskip("dipy.align.reslice").reslice
    for dtype in (np.uint8, np.int8):
        info = np.iinfo(dtype)
        data = np.random.default_rng(1).integers(info.min, info.max, (9, 8, 7), endpoint=True)
        data = data.astype(dtype)
        ref, _ = dipy_reslice(data, np.eye(4), (2, 2, 2), (0.7, 0.9, 1.1), order=5)
        out, _ = reslice(data, np.eye(4), (2, 2, 2), (0.7, 0.9, 1.1), order=5)
        assert out.dtype == dtype
        assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1  # ties may round apart
        assert np.mean(out != ref) < 0.01


def test_4d_is_volume_by_volume_and_new_shape():
    data = _data()
    out, _ = reslice(data, _affine(), (2, 2, 2.5), (1, 1, 1), order=3)
    for t in range(data.shape[3]):
        # equal to float rounding (BLAS sums in a block order that depends on the shape)
        np.testing.assert_allclose(out[..., t],
                                   reslice(data[..., t], _affine(), (2, 2, 2.5),
                                           (1, 1, 1), order=3)[0], rtol=0, atol=1e-9)
    small, _ = reslice(data, _affine(), (2, 2, 2.5), (1, 1, 1), new_shape=(5, 6, 7))
    assert small.shape == (5, 6, 7, 2)


def test_bad_input_names_the_argument():
    data = _data()
    with pytest.raises(ValueError, match="dimension of data"):
        reslice(np.zeros((4, 4, 4, 4, 1)), _affine(), (2, 2, 2), (1, 1, 1))
    with pytest.raises(ValueError, match="num_processes"):
        reslice(data, _affine(), (2, 2, 2), (1, 1, 1), num_processes=0)
    with pytest.raises(ValueError, match="new_zooms"):
        reslice(data, _affine(), (2, 2, 2), (1, -1, 1))
    with pytest.raises(ValueError, match="zooms"):
        reslice(data, _affine(), (2, 2), (1, 1, 1))
    with pytest.raises(ValueError, match="order"):
        reslice(data, _affine(), (2, 2, 2), (1, 1, 1), order=7)
    with pytest.raises(ValueError, match="mode"):
        reslice(data, _affine(), (2, 2, 2), (1, 1, 1), mode="bogus")
    with pytest.raises(ValueError, match="affine"):
        reslice(data, np.full((4, 4), np.nan), (2, 2, 2), (1, 1, 1))


def test_reslice_interface(tmp_path, monkeypatch):
    pytest.importorskip("nipype")
    from synflow.interfaces import Reslice

    data = _data(dtype=np.float32)
    in_file = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(data, _affine()), in_file)
    monkeypatch.chdir(tmp_path)
    res = Reslice(in_file=str(in_file), new_zooms=(1.0, 1.0, 1.25), order=1).run()
    img = nib.load(res.outputs.out_file)
    assert res.outputs.out_file.endswith("dwi_resliced.nii.gz")
    np.testing.assert_allclose(img.header.get_zooms()[:3], (1.0, 1.0, 1.25))
    ref, aff = reslice(data, _affine(), (2.0, 2.0, 2.5), (1.0, 1.0, 1.25), order=1)
    np.testing.assert_allclose(img.affine, aff, atol=1e-6)
    # equal to float32 rounding (the file's array is Fortran-ordered: other summation order)
    np.testing.assert_allclose(img.get_fdata(dtype=np.float32), ref, rtol=1e-6, atol=1e-3)
    iso = Reslice(in_file=str(in_file), new_zooms=3.0, out_file=str(tmp_path / "o.nii")).run()
    np.testing.assert_allclose(nib.load(iso.outputs.out_file).header.get_zooms()[:3], (3,) * 3)
