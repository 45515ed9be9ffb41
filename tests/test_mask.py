"""synflow.segment: Otsu, the level-counting median and median_otsu (vs SciPy, skimage, DIPY)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi

from synflow import _parallel
from synflow.segment import mask as mask_mod
from synflow.segment import median_otsu, multi_median, otsu
from synflow.segment.mask import median_filter_codes
from synflow.segment.threshold import otsu_from_edges, otsu_from_histogram, threshold_otsu


def _repeated_scipy_median(x: np.ndarray, r: int, numpass: int) -> np.ndarray:
    out = x.copy()
    for _ in range(numpass):
        out = ndi.median_filter(out, size=2 * r + 1)  # mode='reflect' (default)
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(bool)
    b = b.astype(bool)
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _synthetic_head(shape=(34, 38, 30), seed=0, noise=0.04) -> tuple[np.ndarray, np.ndarray]:
    """Smooth bright brain ellipsoid inside a dimmer skull/scalp shell, Rician noise."""
    rng = np.random.default_rng(seed)
    g = np.indices(shape, dtype=np.float64)
    c = (np.array(shape, dtype=np.float64) - 1) / 2
    rad = np.array(shape, dtype=np.float64) * 0.33
    d = np.sqrt(sum(((g[i] - c[i]) / rad[i]) ** 2 for i in range(3)))
    brain = d < 1.0
    shell = (d >= 1.12) & (d < 1.35)
    signal = np.where(brain, 1.0 + 0.3 * np.cos(3 * g[0] / shape[0]) * np.sin(2 * g[1] / shape[1]),
                      0.0)
    signal = ndi.gaussian_filter(signal, 1.0) + 0.25 * shell
    vol = np.hypot(signal + rng.normal(0, noise, shape), rng.normal(0, noise, shape))
    return vol.astype(np.float32), brain


# ---------------------------------------------------------------------------------- Otsu
def test_otsu_two_levels_known_threshold():
    img = np.zeros((20, 20), np.float64)
    img[5:9, 3:15] = 10.0
    t = otsu(img)
    # 256 bins over [0, 10]: every split separates the two spikes, argmax takes the first,
    # and DIPY returns its left edge
    assert t == 0.0
    assert threshold_otsu(img) == pytest.approx(10.0 / 256 / 2)  # scikit-image: bin centre
    np.testing.assert_array_equal(img > t, img == 10.0)


def test_otsu_recovers_dilated_point():  # DIPY's test_mask
    vol = np.zeros((30, 30, 30))
    vol[15, 15, 15] = 1
    ball = ndi.binary_dilation(vol, ndi.generate_binary_structure(3, 1), iterations=4)
    vol = ball.astype("f8")
    assert np.count_nonzero(vol > otsu(vol)) == np.count_nonzero(ball)


def test_otsu_from_edges_known():
    counts = np.array([3, 5, 0, 0, 5, 2])
    edges = np.arange(7, dtype=np.float64)
    # two clusters {0,1} and {4,5}: best split after bin 1, whose left edge is 1
    assert otsu_from_edges(counts, edges) == 1.0
    with pytest.raises(ValueError, match="fewer than two non-empty"):
        otsu_from_edges(np.array([0, 4, 0]), np.arange(4.0))


def _otsu_images(dtype, low: int = 0):
    """Four bimodal test images of ``dtype`` (integers from ``low``), seeded."""
    rng = np.random.default_rng(3)
    for trial in range(4):
        if np.issubdtype(dtype, np.integer):
            hi = 255 if dtype == np.uint8 else 3000
            yield rng.integers(low, hi, size=(17, 19, 7)).astype(dtype)
        else:
            img = np.concatenate([rng.normal(10, 3, 900), rng.gamma(2.0, 5.0, 700) + 30])
            yield (img * (trial + 1)).astype(dtype).reshape(40, 40)


def _assert_same_threshold(got, ref):
    assert got == ref
    assert np.asarray(got).dtype == np.asarray(ref).dtype


@pytest.mark.needs_dipy
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.int32])
@pytest.mark.parametrize("nbins", [256, 64])
def test_otsu_equals_dipy(dtype, nbins):
    dthr = pytest.importorskip("dipy.segment.threshold")
    for img in _otsu_images(dtype):
        _assert_same_threshold(otsu(img, nbins=nbins), dthr.otsu(img, nbins=nbins))


def test_otsu_from_histogram_known():
    counts = np.array([0, 5, 0, 0, 5, 0])
    centers = np.arange(6, dtype=np.float64)
    # ends are trimmed (as skimage); the first maximal split sits on the lower spike
    assert otsu_from_histogram(counts, centers) == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.int32])
@pytest.mark.parametrize("nbins", [256, 64])
def test_otsu_equals_skimage(dtype, nbins):
    skf = pytest.importorskip("skimage.filters")
    low = -300 if np.dtype(dtype).kind == "i" and dtype != np.int16 else 0
    for img in _otsu_images(dtype, low):
        _assert_same_threshold(threshold_otsu(img, nbins=nbins),
                               skf.threshold_otsu(img, nbins=nbins))


@pytest.mark.parametrize("bad,match", [
    (np.zeros((0, 3)), "no threshold"),
    (np.full((4, 4, 4), 7.0), "no threshold"),
    (np.array([1.0, np.nan, 3.0]), "non-finite"),
])
def test_otsu_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        otsu(bad)


# -------------------------------------------------------------------------- median kernel
@pytest.mark.parametrize("shape", [(7, 9, 11), (3, 5, 2), (1, 4, 6), (12, 10, 9), (20, 3, 1),
                                   (5,), (6, 7), (2, 2, 2)])
@pytest.mark.parametrize("r", [1, 2, 4])
def test_median_codes_equal_scipy(shape, r):
    rng = np.random.default_rng(hash((shape, r)) % 2**32)
    codes = rng.integers(0, 40, size=shape).astype(np.uint8)
    for numpass in (1, 2):
        ref = _repeated_scipy_median(codes, r, numpass)
        np.testing.assert_array_equal(median_filter_codes(codes, r, numpass), ref)


def test_median_codes_uint16_levels_and_large_radius():
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 1000, size=(9, 8, 10)).astype(np.uint16)
    np.testing.assert_array_equal(median_filter_codes(codes, 3, 1, nlev=1000),
                                  ndi.median_filter(codes, 7))
    codes8 = rng.integers(0, 5, size=(8, 30, 12)).astype(np.uint8)
    np.testing.assert_array_equal(median_filter_codes(codes8, 8, 1),  # 17**2 > 255 counts
                                  ndi.median_filter(codes8, 17))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
@pytest.mark.parametrize("r,numpass", [(1, 3), (2, 2), (4, 1)])
def test_multi_median_exact_on_quantised_input(dtype, r, numpass):
    """<= `levels` distinct values: bit-identical to repeated scipy median_filter."""
    rng = np.random.default_rng(7)
    x = (rng.integers(0, 200, size=(11, 13, 9)) * 1.5 - 40).astype(dtype)
    got = multi_median(x, r, numpass)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, _repeated_scipy_median(x, r, numpass))


def test_multi_median_many_values_is_exact_median_of_quantised():
    rng = np.random.default_rng(11)
    x = rng.gamma(2.0, 100.0, size=(14, 15, 13)).astype(np.float32)  # ~2700 distinct values
    levels = 64
    got = multi_median(x, 2, 2, levels=levels)
    codes, reps = mask_mod._quantise(x, levels)
    q = reps[codes]  # the monotone quantisation g(x)
    np.testing.assert_array_equal(got, _repeated_scipy_median(q, 2, 2))
    # hence every voxel lies in the same bin as the exact result
    exact = _repeated_scipy_median(x, 2, 2)
    width = (x.max() - x.min()) / levels
    assert np.max(np.abs(got - exact)) <= width * (1 + 1e-6)


def test_multi_median_leaves_input_unchanged():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 11, 12)).astype(np.float32)
    x0 = x.copy()
    out = multi_median(x, 2, 3)
    np.testing.assert_array_equal(x, x0)
    assert out is not x and not np.shares_memory(out, x)
    assert multi_median(x, 2, 0) is not x


def test_median_thread_count_does_not_change_result():
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 90, size=(40, 21, 17)).astype(np.uint8)
    ref = ndi.median_filter(codes, 9)
    for n in (1, 2):
        _parallel.set_num_threads(n)
        try:
            np.testing.assert_array_equal(median_filter_codes(codes, 4, 1), ref)
        finally:
            _parallel.set_num_threads(None)


def test_multi_median_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        multi_median(np.array([[1.0, np.nan], [2.0, 3.0]]), 1, 1)
    with pytest.raises(ValueError, match="median_radius"):
        multi_median(np.ones((3, 3, 3)), -1, 1)
    with pytest.raises(ValueError, match="1-D to 3-D"):
        multi_median(np.ones((2, 2, 2, 2)), 1, 1)


# ---------------------------------------------------------------------------- median_otsu
def test_median_otsu_4d_with_vol_idx_equals_3d():
    vol, _ = _synthetic_head()
    rng = np.random.default_rng(1)
    series = np.stack([vol, vol * 0.3 + rng.normal(0, 0.01, vol.shape).astype(np.float32),
                       vol], axis=-1)
    m3 = median_otsu(np.mean(series[..., (0, 2)], axis=3), median_radius=2, numpass=2)[1]
    masked4, m4 = median_otsu(series, vol_idx=[0, 2], median_radius=2, numpass=2)
    np.testing.assert_array_equal(m3, m4)
    assert masked4.shape == series.shape
    np.testing.assert_array_equal(masked4[~m4], 0)
    with pytest.raises(ValueError, match="vol_idx"):
        median_otsu(series)


def test_median_otsu_dilate_grows_monotonically():
    vol, _ = _synthetic_head()
    masks = [median_otsu(vol, median_radius=2, numpass=2, dilate=d)[1] for d in (None, 1, 2)]
    for small, big in zip(masks[:-1], masks[1:], strict=True):
        assert np.all(big[small])
        assert big.sum() > small.sum()


def test_median_otsu_finalize_removes_islands_and_holes():
    vol, _ = _synthetic_head()
    vol = vol.copy()
    vol[1:6, 1:6, 1:6] = vol.max()  # bright island in a corner
    plain = median_otsu(vol, median_radius=1, numpass=1)[1]
    final = median_otsu(vol, median_radius=1, numpass=1, finalize_mask=True)[1]
    assert ndi.label(plain)[1] > 1
    assert ndi.label(final)[1] == 1
    np.testing.assert_array_equal(final, ndi.binary_fill_holes(final))


def test_median_otsu_autocrop_deprecated():
    vol, _ = _synthetic_head()
    with pytest.warns(DeprecationWarning, match="autocrop"):
        masked, m = median_otsu(vol, median_radius=1, numpass=1, autocrop=True)
    assert masked.shape == m.shape
    assert all(m.any(axis=tuple(a for a in range(3) if a != ax))[[0, -1]].all() for ax in range(3))


def test_median_otsu_bad_input_names_the_input():
    with pytest.raises(ValueError, match="no threshold: input_volume is empty"):
        median_otsu(np.zeros((0, 4, 4), np.float32))
    with pytest.raises(ValueError, match="no threshold"):
        median_otsu(np.full((8, 8, 8), 3.0))
    bad = np.ones((8, 8, 8))
    bad[2, 3, 4] = np.nan
    bad[1, 1, 1] = np.inf
    with pytest.raises(ValueError, match="input_volume has 2 non-finite"):
        median_otsu(bad)
    with pytest.raises(ValueError, match="3-D or 4-D"):
        median_otsu(np.ones((8, 8)))


def test_median_otsu_empty_mask_is_an_error(monkeypatch):
    vol, _ = _synthetic_head()
    monkeypatch.setattr(mask_mod, "_median_otsu_mask", lambda b0, r, n: np.zeros(b0.shape, bool))
    with pytest.raises(ValueError, match="mask of input_volume is empty"):
        median_otsu(vol)


def test_median_otsu_finds_synthetic_brain():
    vol, brain = _synthetic_head(shape=(40, 44, 36))
    m = median_otsu(vol, median_radius=2, numpass=2)[1]
    assert _dice(m, brain) > 0.9


# --------------------------------------------------------------------------- vs DIPY 1.12
def _dipy_median_otsu(vol, **kw):
    """DIPY's median_otsu with DIPY's own Otsu (what it uses without scikit-image)."""
    dmask = pytest.importorskip("dipy.segment.mask")
    from dipy.segment.threshold import otsu as dipy_otsu

    saved = dmask.otsu
    dmask.otsu = dipy_otsu  # with scikit-image installed DIPY would call threshold_otsu
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dmask.median_otsu(vol, **kw)
    finally:
        dmask.otsu = saved


@pytest.mark.needs_dipy
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_median_otsu_matches_dipy_synthetic_head(dtype):
    vol, _ = _synthetic_head()
    vol = vol.astype(dtype)
    ref_masked, ref = _dipy_median_otsu(vol, median_radius=3, numpass=2)
    masked, m = median_otsu(vol, median_radius=3, numpass=2)
    assert _dice(m, ref) >= 0.99
    np.testing.assert_array_equal(m, ref)  # exact for floating-point input
    np.testing.assert_array_equal(masked, ref_masked)


def _dipy_file(name):
    dipy = pytest.importorskip("dipy")
    path = os.path.join(os.path.dirname(dipy.__file__), "data", "files", name)
    if not os.path.exists(path):
        pytest.skip(f"{name} not shipped with this DIPY")
    import nibabel as nib

    return nib.load(path).get_fdata()


@pytest.mark.needs_dipy
def test_median_otsu_matches_dipy_s0_10slices():
    s0 = _dipy_file("S0_10slices.nii.gz")[..., 0]
    ref = _dipy_median_otsu(s0, median_radius=2, numpass=2)[1]
    m = median_otsu(s0, median_radius=2, numpass=2)[1]
    assert _dice(m, ref) >= 0.99
    np.testing.assert_array_equal(m, ref)
    assert m.sum() < (s0 > s0.mean()).sum()  # DIPY's check: smaller than data > mean


@pytest.mark.needs_dipy
def test_median_otsu_matches_dipy_small_64d_and_integer_input():
    data = _dipy_file("small_64D.nii")
    ref = _dipy_median_otsu(data, vol_idx=[0, 1], median_radius=4, numpass=4)[1]
    m = median_otsu(data, vol_idx=[0, 1], median_radius=4, numpass=4)[1]
    np.testing.assert_array_equal(m, ref)
    s0 = _dipy_file("S0_10slices.nii.gz")[::2, ::2, :, 0].astype(np.uint16)  # integer Otsu path
    ref = _dipy_median_otsu(s0, median_radius=2, numpass=2)[1]
    m = median_otsu(s0, median_radius=2, numpass=2)[1]
    assert _dice(m, ref) >= 0.99


@pytest.mark.slow
@pytest.mark.needs_dipy
def test_median_otsu_matches_dipy_default_parameters():
    s0 = _dipy_file("S0_10slices.nii.gz")[..., 0]
    ref = _dipy_median_otsu(s0)[1]
    np.testing.assert_array_equal(median_otsu(s0)[1], ref)


@pytest.mark.needs_dipy
@pytest.mark.parametrize("kw", [dict(dilate=2), dict(finalize_mask=True), dict(autocrop=True),
                                dict(dilate=1, finalize_mask=True, autocrop=True)])
def test_median_otsu_options_match_dipy(kw):
    """dilate, finalize_mask and the deprecated autocrop, on a 4-D input, as DIPY."""
    vol, _ = _synthetic_head()
    series = np.stack([vol, 0.9 * vol], -1).astype(np.float64)
    ref_masked, ref = _dipy_median_otsu(series, vol_idx=[0, 1], median_radius=2, numpass=2,
                                        **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        masked, m = median_otsu(series, vol_idx=[0, 1], median_radius=2, numpass=2, **kw)
    np.testing.assert_array_equal(m, ref.astype(bool))
    np.testing.assert_array_equal(masked, ref_masked)


def test_mask_module_offers_dipy_names():
    from synflow.segment import mask, threshold

    assert mask.otsu is threshold.otsu
    for name in ("applymask", "bounding_box", "crop", "median_otsu", "multi_median", "otsu"):
        assert name in mask.__all__
