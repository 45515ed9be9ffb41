"""Field primitives against analytic answers: sampling, composition, inversion, resampling."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from synflow._parallel import set_num_threads
from synflow.align import vector_fields as vf


def linear_field(shape, matrix, offset):
    """d(x) = matrix @ x + offset (voxel units, component first): trilinear is exact on it."""
    pts = vf.grid_points(shape).astype(np.float64)
    d = np.einsum("ij,j...->i...", np.asarray(matrix, float), pts)
    d += np.asarray(offset, float).reshape((3,) + (1,) * len(shape))
    return d.astype(np.float32)


def interior(shape, margin):
    return tuple(slice(margin, s - margin) for s in shape)


def test_sample_image_matches_map_coordinates_grid_constant():
    rng = np.random.default_rng(0)
    img = rng.random((12, 13, 14)).astype(np.float32)
    coords = (rng.random((3, 20, 9, 7)) * 18 - 3).astype(np.float32)
    ours = vf.sample_image(img, coords)
    ref = ndi.map_coordinates(img, coords, order=1, mode="grid-constant", cval=0.0)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_sample_image_nearest_follows_dipy_rounding():
    img = np.arange(5, dtype=np.int16)[:, None, None] * np.ones((1, 2, 2), np.int16)
    x = np.array([0.0, 0.5, 0.51, 1.49, 3.5, 4.0, 4.2, -0.2], dtype=np.float32)
    coords = np.stack([x, np.zeros_like(x), np.zeros_like(x)])[:, :, None, None]
    out = vf.sample_image(img, coords, order=0)[:, 0, 0]
    # 0.5 rounds down, > 0.5 up; outside [0, n-1] gives 0
    np.testing.assert_array_equal(out, [0, 0, 1, 1, 3, 4, 0, 0])
    assert out.dtype == np.int16


def test_integer_translation_is_exact():
    rng = np.random.default_rng(1)
    img = rng.random((10, 11, 12)).astype(np.float32)
    coords = vf.affine_points(np.array([[1, 0, 0, 2], [0, 1, 0, -1], [0, 0, 1, 3], [0, 0, 0, 1.0]]),
                              img.shape)
    out = vf.sample_image(img, coords)
    np.testing.assert_array_equal(out[:8, 1:, :9], img[2:, :10, 3:])
    assert np.all(out[8:] == 0)


def test_compose_linear_fields_is_exact():
    shape = (20, 21, 22)
    a1, c1 = 0.02 * np.eye(3) + 0.01, [0.3, -0.2, 0.1]
    a2, c2 = -0.03 * np.eye(3), [-0.1, 0.4, 0.2]
    d1, d2 = linear_field(shape, a1, c1), linear_field(shape, a2, c2)
    for t in (0.25, 1.0, 4.0):
        got = vf.compose(d1, d2, t)
        # c(x) = d1(x) + t d2(x + d1(x)) with linear d2
        pts = vf.grid_points(shape)
        expected = d1 + t * (linear_field(shape, a2, c2)
                             + np.einsum("ij,j...->i...", a2, d1).astype(np.float32))
        sl = (slice(None),) + interior(shape, 3)
        np.testing.assert_allclose(got[sl], expected[sl], atol=2e-4)
        del pts


def test_compose_small_matches_compose_for_small_steps():
    rng = np.random.default_rng(2)
    shape = (24, 25, 26)
    field = np.stack([ndi.gaussian_filter(rng.standard_normal(shape), 3) * 20
                      for _ in range(3)]).astype(np.float32)
    step = np.stack([ndi.gaussian_filter(rng.standard_normal(shape), 2) for _ in range(3)])
    step = (0.25 * step / np.sqrt((step ** 2).sum(0)).max()).astype(np.float32)
    exact = vf.compose(step, field)
    approx = vf.compose_small(step, field)
    sl = (slice(None),) + interior(shape, 2)
    err = np.abs(exact - approx)[sl]
    # Taylor remainder and trilinear error are both second order in the sub-voxel step.
    assert err.max() < 0.02 * np.abs(field).max()
    assert err.mean() < 1e-3 * np.abs(field).max() + 1e-4


def test_invert_affine_field_analytically():
    shape = (32, 33, 34)
    a = np.array([[0.05, 0.01, 0], [0, -0.04, 0.02], [0.01, 0, 0.03]])
    c = np.array([1.5, -0.7, 0.9])
    d = linear_field(shape, a, c)
    p = vf.invert(d, max_iter=30, tol=1e-5)
    # (I + A)(x + p) + c = x  =>  p(x) = (I + A)^-1 (x - c) - x
    inv = np.linalg.inv(np.eye(3) + a)
    pts = vf.grid_points(shape).astype(np.float64)
    expected = np.einsum("ij,j...->i...", inv, pts - c.reshape(3, 1, 1, 1)) - pts
    sl = (slice(None),) + interior(shape, 4)
    np.testing.assert_allclose(p[sl], expected[sl], atol=2e-3)


def test_invert_smooth_field_residual_small_and_multigrid_agrees():
    rng = np.random.default_rng(3)
    shape = (40, 41, 42)
    d = np.stack([ndi.gaussian_filter(rng.standard_normal(shape), 4) for _ in range(3)])
    d = (2.0 * d / np.abs(d).max()).astype(np.float32)
    for multigrid in (False, True):
        p = vf.invert(d, max_iter=30, tol=1e-4, multigrid=multigrid)
        residual = vf.compose(p, d)  # (id + d) o (id + p) - id
        sl = (slice(None),) + interior(shape, 4)
        assert np.sqrt((residual[sl] ** 2).sum(0)).mean() < 1e-3


def test_upsample_2x_equals_trilinear_resampling():
    rng = np.random.default_rng(4)
    f = rng.random((3, 9, 10, 11)).astype(np.float32)
    new_shape = (17, 20, 21)
    ref = vf.sample_field(f, vf.affine_points(np.diag([0.5, 0.5, 0.5, 1.0]), new_shape))
    np.testing.assert_allclose(vf.upsample_field_2x(f, new_shape), ref, atol=1e-6)


def test_results_do_not_depend_on_thread_count():
    rng = np.random.default_rng(5)
    shape = (33, 20, 21)
    d = np.stack([ndi.gaussian_filter(rng.standard_normal(shape), 3) for _ in range(3)])
    d = d.astype(np.float32)
    try:
        set_num_threads(1)
        one = (vf.invert(d), vf.compose(d, d))
        set_num_threads(2)
        two = (vf.invert(d), vf.compose(d, d))
    finally:
        set_num_threads(None)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="threads"):
        set_num_threads(bad)


def test_padded_sampling_equals_zero_padded_sampling():
    rng = np.random.default_rng(6)
    img = rng.random((9, 10, 11)).astype(np.float32)
    coords = (rng.random((3, 15, 8, 6)) * 16 - 3).astype(np.float32)
    expected = vf.sample_image(img, coords)
    got = vf.sample_padded(vf.pad_image(img), coords + vf.PAD)
    np.testing.assert_allclose(got, expected, atol=1e-6)


# --------------------------------------------------------------------------- DIPY-rule kernels
def _rand_field(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((len(shape),) + tuple(shape)).astype(np.float32)


@pytest.mark.parametrize("shape", [(13, 11), (9, 12, 10)])
def test_sample_field_cells_matches_map_coordinates_inside(shape):
    field = _rand_field(shape)
    rng = np.random.default_rng(1)
    coords = rng.uniform(-2, max(shape) + 1, (len(shape), 7, 5)).astype(np.float32)
    got = vf.sample_field_cells(field, coords, zero_outside=True)
    inside = np.all([(coords[a] >= 0) & (coords[a] < n - 1) for a, n in enumerate(shape)], 0)
    for c in range(len(shape)):
        ref = ndi.map_coordinates(field[c], coords, order=1, mode="nearest")
        np.testing.assert_allclose(got[c][inside], ref[inside], atol=1e-5)
        assert np.all(got[c][~inside] == 0)
    add = np.ones_like(got)
    np.testing.assert_allclose(vf.sample_field_cells(field, coords, True, add)[:, inside],
                               got[:, inside] + 1, atol=1e-6)


@pytest.mark.parametrize("oblique", [False, True])
def test_sample_field_affine_is_zero_padded_trilinear(oblique):
    """Both paths (separable, general) equal map_coordinates(mode='grid-constant')."""
    shape, out_shape = (12, 10, 11), (14, 9, 13)
    field = _rand_field(shape, 2)
    m = np.eye(4)
    m[:3, :3] = np.diag([0.9, 1.2, 0.8])
    if oblique:
        m[0, 1] = 0.15
    m[:3, 3] = [-1.3, 0.4, 0.6]
    got = vf.sample_field_affine(field, m, out_shape)
    ijk = np.indices(out_shape, dtype=np.float64)
    coords = np.tensordot(m[:3, :3], ijk, axes=1) + m[:3, 3, None, None, None]
    for c in range(3):
        ref = ndi.map_coordinates(field[c].astype(np.float64), coords, order=1,
                                  mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(got[c], ref, atol=1e-5)


def test_compose_inside_constant_fields():
    shape = (6, 7, 5)
    d1 = np.zeros((3,) + shape, np.float32)
    d1[0] = 0.5
    d2 = np.ones((3,) + shape, np.float32)
    c = vf.compose_inside(d1, d2)
    np.testing.assert_allclose(c[0, :5, :-1, :-1], 1.5)  # inside iff x + 0.5 < 5 etc.
    np.testing.assert_allclose(c[1, :5, :-1, :-1], 1.0)
    assert np.all(c[:, 5] == 0) and np.all(c[:, :, -1] == 0) and np.all(c[:, :, :, -1] == 0)
    # premult halves the displacement first: x + 0.25
    np.testing.assert_allclose(vf.compose_inside(d1 * 2, d2, np.diag([0.25] * 3))[0, :5, 0, 0],
                               2.0)


def test_thread_pool_works_in_a_forked_child():
    """A process forked after synflow's pool was used (Nipype MultiProc forks its workers
    from a parent that may have run the engine) must not wait on the parent's threads."""
    import multiprocessing

    from synflow._parallel import run_tasks

    assert run_tasks([lambda: 1, lambda: 2], threads=2) == [1, 2]  # the pool now exists
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        result = pool.apply_async(_two_tasks_in_child)
        assert result.get(timeout=60) == [3, 4]


def _two_tasks_in_child():
    from synflow._parallel import run_tasks

    return run_tasks([lambda: 3, lambda: 4], threads=2)
