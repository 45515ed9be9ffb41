"""Tests of synflow.align.imaffine / transforms / _affine_public (DIPY 1.12 compatible)."""

from __future__ import annotations

import numpy as np
import pytest

from synflow._parallel import set_num_threads
from synflow.align import _affine_public as ap
from synflow.align import imaffine as im
from synflow.align import transforms as tr

# --------------------------------------------------------------------------- helpers


def _world(shape, g2w):
    idx = np.indices(shape, dtype=np.float64).reshape(len(shape), -1)
    return (g2w[:-1, :-1] @ idx + g2w[:-1, -1:]).T  # (N, dim) mm


def _anatomy(x: np.ndarray) -> np.ndarray:
    """Piecewise-smooth asymmetric 'head' (tissue-like plateaus) in world mm, shape (N,)."""
    x = np.atleast_2d(x)
    dim = x.shape[1]
    radii = np.array([26.0, 30.0, 22.0][:dim])
    r = np.sqrt(((x / radii) ** 2).sum(1))
    out = 0.35 / (1.0 + np.exp((r - 1.0) * 30.0))
    blobs = [((10.0, -8.0, 6.0), 7.0, 0.6), ((-12.0, 10.0, -4.0), 6.0, 0.9),
             ((4.0, 18.0, 8.0), 5.0, -0.25), ((-6.0, -16.0, -6.0), 8.0, 0.45),
             ((14.0, 10.0, -10.0), 4.0, 0.7)]
    for c, s, a in blobs:
        d = np.sqrt(((x - np.array(c[:dim])) ** 2).sum(1))
        out = out + a / (1.0 + np.exp((d - s) * 1.5))
    return out


def _make_pair(true_affine, dim=3, s_shape=(40, 44, 36), s_vox=(2.0, 2.0, 2.5),
               m_shape=(44, 40, 40), m_vox=(2.2, 2.0, 2.0)):
    """Static/moving pair: moving(y) = anatomy(A^-1 y), A = static-world -> moving-world."""
    s_shape, m_shape = s_shape[:dim], m_shape[:dim]
    s2w = np.diag(list(s_vox[:dim]) + [1.0])
    s2w[:dim, dim] = -np.array(s_shape) * np.array(s_vox[:dim]) / 2.0
    m2w = np.diag(list(m_vox[:dim]) + [1.0])
    m2w[:dim, dim] = -np.array(m_shape) * np.array(m_vox[:dim]) / 2.0 + 1.0
    static = _anatomy(_world(s_shape, s2w)).reshape(s_shape).astype(np.float32)
    ym = _world(m_shape, m2w)
    ainv = np.linalg.inv(true_affine)
    xm = ym @ ainv[:dim, :dim].T + ainv[:dim, dim]
    moving = _anatomy(xm).reshape(m_shape).astype(np.float32)
    return static, s2w, moving, m2w


def _rigid(angles_deg, t):
    return tr.RigidTransform3D().param_to_matrix(np.r_[np.deg2rad(angles_deg), t])


def _mean_err_mm(est, true, static, s2w, mask=None):
    x = _world(static.shape, s2w)
    if mask is None:
        mask = static.ravel() > 0.05
    else:
        mask = mask.ravel()
    x = x[mask]
    d = static.ndim
    pe = x @ est[:d, :d].T + est[:d, d]
    pt = x @ true[:d, :d].T + true[:d, d]
    return float(np.sqrt(((pe - pt) ** 2).sum(1)).mean())


# --------------------------------------------------------------------------- AffineMap


@pytest.mark.parametrize("dim", [2, 3])
def test_affinemap_exact_integer_translation_and_scaling(dim):
    rng = np.random.default_rng(0)
    shape = (11, 13, 9)[:dim]
    img = rng.integers(0, 100, size=shape).astype(np.float64)
    for _ in range(5):
        t = rng.integers(-3, 4, size=dim).astype(float)
        A = np.eye(dim + 1)
        A[:dim, dim] = t
        amap = im.AffineMap(A, domain_grid_shape=shape, codomain_grid_shape=shape)
        out = amap.transform(img)
        nn = amap.transform(img, interpolation="nearest")
        expected = np.zeros(shape)
        ts = [int(ti) for ti in t]
        src = tuple(slice(max(0, ti), n + min(0, ti)) for ti, n in zip(ts, shape, strict=True))
        dst = tuple(slice(max(0, -ti), n - max(0, ti)) for ti, n in zip(ts, shape, strict=True))
        expected[dst] = img[src]
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(nn, expected)
        back = amap.transform_inverse(out)
        inner = tuple(slice(abs(int(ti)), n - abs(int(ti))) for ti, n in zip(t, shape, strict=True))
        np.testing.assert_array_equal(back[inner], img[inner])
    # scaled grids: domain voxel = 2 codomain voxels, exact subsampling
    g2w = np.diag([2.0] * dim + [1.0])
    amap = im.AffineMap(np.eye(dim + 1), domain_grid_shape=tuple(s // 2 for s in shape),
                        domain_grid2world=g2w, codomain_grid_shape=shape)
    sub = img[tuple(slice(0, 2 * (s // 2), 2) for s in shape)]
    np.testing.assert_array_equal(amap.transform(img), sub)
    np.testing.assert_array_equal(amap.transform(img, interpolation="nearest"), sub)
    dimaf = pytest.importorskip("dipy.align.imaffine")
    theirs = dimaf.AffineMap(np.eye(dim + 1), domain_grid_shape=tuple(s // 2 for s in shape),
                             domain_grid2world=g2w, codomain_grid_shape=shape)
    np.testing.assert_array_equal(amap.transform(img), theirs.transform(img))
    np.testing.assert_array_equal(amap.transform_inverse(sub), theirs.transform_inverse(sub))
    A = np.eye(dim + 1)
    A[:dim, dim] = 2.0
    ours = im.AffineMap(A, domain_grid_shape=shape, codomain_grid_shape=shape)
    theirs = dimaf.AffineMap(A, domain_grid_shape=shape, codomain_grid_shape=shape)
    for interp in ("linear", "nearest"):
        np.testing.assert_array_equal(ours.transform(img, interpolation=interp),
                                      theirs.transform(img, interpolation=interp))


@pytest.mark.parametrize("dim", [2, 3])
def test_affinemap_matches_dipy(dim):
    dimaf = pytest.importorskip("dipy.align.imaffine")
    rng = np.random.default_rng(1)
    shape = (12, 10, 9)[:dim]
    img = rng.random(shape)
    A = np.eye(dim + 1)
    A[:dim, :dim] += rng.normal(scale=0.1, size=(dim, dim))
    A[:dim, dim] = rng.normal(scale=1.5, size=dim)
    g2w = np.diag(list(rng.uniform(0.8, 2.0, dim)) + [1.0])
    g2w[:dim, dim] = rng.normal(size=dim)
    cg2w = np.diag(list(rng.uniform(0.8, 2.0, dim)) + [1.0])
    ours = im.AffineMap(A, domain_grid_shape=shape, domain_grid2world=g2w,
                        codomain_grid_shape=shape, codomain_grid2world=cg2w)
    theirs = dimaf.AffineMap(A, domain_grid_shape=shape, domain_grid2world=g2w,
                             codomain_grid_shape=shape, codomain_grid2world=cg2w)
    for interp in ("linear", "nearest"):
        a = ours.transform(img, interpolation=interp)
        b = theirs.transform(img, interpolation=interp)
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, atol=1e-6)
        a = ours.transform_inverse(img, interpolation=interp)
        b = theirs.transform_inverse(img, interpolation=interp)
        np.testing.assert_allclose(a, b, atol=1e-6)
    # integer images keep their dtype with nearest
    lab = rng.integers(0, 5, size=shape).astype(np.int16)
    a = ours.transform(lab, interpolation="nearest")
    assert a.dtype == np.int16
    np.testing.assert_array_equal(a, theirs.transform(lab, interpolation="nearest"))


def test_affinemap_nearest_rounding_rule():
    img = np.arange(1, 6, dtype=np.float64)[:, None, None] * np.ones((5, 2, 2))
    for t, first in [(0.5, 1), (0.49, 1), (0.51, 2), (4.0, 5), (4.2, 0), (-0.2, 0)]:
        A = np.eye(4)
        A[0, 3] = t
        out = im.AffineMap(A, domain_grid_shape=img.shape,
                           codomain_grid_shape=img.shape).transform(img, interpolation="nearest")
        assert out[0, 0, 0] == first, t


@pytest.mark.parametrize("bad, err", [
    (np.ones((3, 4)), im.AffineInversionError),
    (np.array([[1.0, 0, 0, np.nan], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
     im.AffineInvalidValuesError),
    (np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0.1, 0, 1]]),
     im.AffineInvalidValuesError),
    (np.diag([1.0, 0.0, 1.0, 1.0]), im.AffineInversionError),
    (np.ones(4), im.AffineInversionError),
])
def test_affinemap_validation(bad, err):
    with pytest.raises(err, match="affine"):
        im.AffineMap(bad)
    assert issubclass(err, ValueError)


def test_affinemap_requires_sampling_info():
    amap = im.AffineMap(np.eye(4))
    with pytest.raises(ValueError, match="sampling_grid_shape"):
        amap.transform(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="interpolation"):
        amap.transform(np.zeros((3, 3, 3)), interpolation="cubic", sampling_grid_shape=(3, 3, 3))
    assert amap.get_affine() is not amap.affine


# --------------------------------------------------------------------------- centres


def test_centre_helpers_exact():
    shape = (20, 22, 18)
    img = np.zeros(shape)
    img[4:9, 10:13, 2:7] = 2.0  # box centred at (6, 11, 4)
    mov = np.zeros((16, 16, 16))
    mov[9:12, 3:8, 10:13] = 1.0  # centred at (10, 5, 11)
    s2w = np.diag([2.0, 1.5, 3.0, 1.0])
    s2w[:3, 3] = [5.0, -3.0, 1.0]
    m2w = np.diag([1.0, 2.0, 2.0, 1.0])
    m2w[:3, 3] = [-4.0, 2.0, 0.5]
    com = im.transform_centers_of_mass(img, s2w, mov, m2w).affine
    expect = (m2w @ [10, 5, 11, 1.0]) - (s2w @ [6, 11, 4, 1.0])
    np.testing.assert_allclose(com[:3, 3], expect[:3], atol=1e-12)
    np.testing.assert_array_equal(com[:3, :3], np.eye(3))
    geo = im.transform_geometric_centers(img, s2w, mov, m2w).affine
    expect = (m2w @ [8, 8, 8, 1.0]) - (s2w @ [10, 11, 9, 1.0])
    np.testing.assert_allclose(geo[:3, 3], expect[:3], atol=1e-12)
    org = im.transform_origins(img, s2w, mov, m2w).affine
    np.testing.assert_allclose(org[:3, 3], m2w[:3, 3] - s2w[:3, 3], atol=1e-12)
    dimaf = pytest.importorskip("dipy.align.imaffine")
    for ours, theirs in ((im.transform_centers_of_mass, dimaf.transform_centers_of_mass),
                         (im.transform_geometric_centers, dimaf.transform_geometric_centers),
                         (im.transform_origins, dimaf.transform_origins)):
        np.testing.assert_allclose(ours(img, s2w, mov, m2w).affine,
                                   theirs(img, s2w, mov, m2w).affine, atol=1e-12)


# --------------------------------------------------------------------------- transforms


def test_transforms_match_dipy():
    dt = pytest.importorskip("dipy.align.transforms")
    rng = np.random.default_rng(3)
    for key, theirs in dt.regtransforms.items():
        ours = tr.regtransforms[key]
        n = theirs.get_number_of_parameters()
        assert ours.get_number_of_parameters() == n
        assert ours.get_dim() == theirs.get_dim()
        np.testing.assert_array_equal(ours.get_identity_parameters(),
                                      theirs.get_identity_parameters())
        for _ in range(3):
            th = rng.normal(size=n)
            x = rng.normal(size=ours.get_dim()) * 20
            np.testing.assert_allclose(ours.param_to_matrix(th), theirs.param_to_matrix(th),
                                       atol=1e-12)
            np.testing.assert_allclose(ours.jacobian(th, x), theirs.jacobian(th, x),
                                       atol=1e-10)


def test_rigid_convention_and_identity():
    a, b, g = 0.1, -0.2, 0.3
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(g), -np.sin(g), 0], [np.sin(g), np.cos(g), 0], [0, 0, 1]])
    m = tr.RigidTransform3D().param_to_matrix([a, b, g, 1, 2, 3])
    np.testing.assert_allclose(m[:3, :3], rz @ rx @ ry, atol=1e-14)
    np.testing.assert_array_equal(m[:3, 3], [1, 2, 3])
    for t in tr.regtransforms.values():
        np.testing.assert_allclose(t.param_to_matrix(t.get_identity_parameters()),
                                   np.eye(t.get_dim() + 1), atol=1e-15)
    with pytest.raises(ValueError, match="theta"):
        tr.AffineTransform3D().param_to_matrix(np.zeros(6))


# --------------------------------------------------------------------------- MI metric


def _mi_inputs():
    rng = np.random.default_rng(0)
    from scipy import ndimage as ndi

    sh = (30, 32, 28)
    static = ndi.gaussian_filter(rng.random(sh), 3)
    static = (static - static.min()) / (static.max() - static.min())
    moving = ndi.gaussian_filter(rng.random(sh), 3) ** 2
    moving = (moving - moving.min()) / (moving.max() - moving.min())
    g2w = np.diag([2.0, 2.0, 2.5, 1.0])
    g2w[:3, 3] = [-30, -32, -35]
    pre = np.eye(4)
    pre[:3, 3] = [1.3, -2.7, 0.9]
    return static, moving, g2w, pre


@pytest.mark.parametrize("masked", [False, True])
def test_mi_value_matches_dipy(masked):
    dimaf = pytest.importorskip("dipy.align.imaffine")
    dtr = pytest.importorskip("dipy.align.transforms")
    static, moving, g2w, pre = _mi_inputs()
    smask = (static > 0.3).astype(np.int32) if masked else None
    mmask = (moving > 0.2).astype(np.int32) if masked else None
    th = tr.RigidTransform3D().get_identity_parameters() + [0.01, -0.02, 0.015, 0.5, -0.3, 0.2]
    ours = im.MutualInformationMetric(nbins=32)
    theirs = dimaf.MutualInformationMetric(nbins=32)
    kw = dict(static_grid2world=g2w, moving_grid2world=g2w, starting_affine=pre,
              static_mask=smask, moving_mask=mmask)
    ours.setup(tr.RigidTransform3D(), static, moving, **kw)
    theirs.setup(dtr.RigidTransform3D(), static, moving, **kw)
    d_ours = ours.distance(th)
    d_theirs = theirs.distance(th)
    assert d_ours < -0.005
    assert abs(d_ours - d_theirs) < 1e-6 * max(1.0, abs(d_theirs)) + 1e-7
    np.testing.assert_allclose(ours.histogram.joint, theirs.histogram.joint, atol=1e-7)


@pytest.mark.parametrize("transform", [tr.RigidTransform3D(), tr.AffineTransform3D(),
                                       tr.TranslationTransform3D()])
@pytest.mark.parametrize("sampling", [None, 0.5])
def test_mi_gradient_matches_finite_differences(transform, sampling):
    static, moving, g2w, pre = _mi_inputs()
    metric = im.MutualInformationMetric(nbins=32, sampling_proportion=sampling)
    metric.setup(transform, static, moving, static_grid2world=g2w, moving_grid2world=g2w,
                 starting_affine=pre)
    rng = np.random.default_rng(5)
    n = transform.get_number_of_parameters()
    th = transform.get_identity_parameters() + rng.normal(scale=0.01, size=n)
    f, g = metric.distance_and_gradient(th)
    assert np.isfinite(f) and np.all(np.isfinite(g))
    h = 1e-4
    fd = np.array([(metric.distance(th + h * e) - metric.distance(th - h * e)) / (2 * h)
                   for e in np.eye(n)])
    cos = fd @ g / (np.linalg.norm(fd) * np.linalg.norm(g))
    assert cos >= 0.99, (cos, fd, g)
    # the value returned with the gradient equals distance()
    assert f == metric.distance(th)


def test_mi_invalid_params_give_inf():
    static, moving, g2w, pre = _mi_inputs()
    metric = im.MutualInformationMetric()
    t = tr.AffineTransform3D()
    metric.setup(t, static, moving, static_grid2world=g2w, moving_grid2world=g2w)
    f, g = metric.distance_and_gradient(np.zeros(12))  # singular matrix
    assert f == np.inf and np.all(g == 0)


def test_metric_bit_identical_across_thread_counts():
    static, moving, g2w, pre = _mi_inputs()
    big_s = np.tile(static, (3, 2, 1))  # > several chunks
    big_m = np.tile(moving, (3, 2, 1))
    t = tr.AffineTransform3D()
    th = t.get_identity_parameters() + 0.01
    out = []
    for n in (1, 2, 3):
        set_num_threads(n)
        try:
            m = im.MutualInformationMetric()
            m.setup(t, big_s, big_m, static_grid2world=g2w, moving_grid2world=g2w,
                    starting_affine=pre)
            out.append(m.distance_and_gradient(th))
        finally:
            set_num_threads(None)
    for f, g in out[1:]:
        assert f == out[0][0]
        np.testing.assert_array_equal(g, out[0][1])


# --------------------------------------------------------------------------- registration


def test_rigid_recovery_anisotropic():
    true = _rigid([4.0, -3.0, 5.0], [3.0, -2.5, 1.5])
    static, s2w, moving, m2w = _make_pair(true)
    reg = im.AffineRegistration(level_iters=[100, 50, 25], verbosity=0)
    c = im.transform_centers_of_mass(static, s2w, moving, m2w).affine
    amap = reg.optimize(static, moving, tr.RigidTransform3D(), None, static_grid2world=s2w,
                        moving_grid2world=m2w, starting_affine=c)
    est = amap.affine
    assert _mean_err_mm(est, true, static, s2w) < 0.5
    # the map resamples moving onto static
    warped = amap.transform(moving)
    obj = static > 0.05
    assert np.abs(warped - static)[obj].mean() < 0.1 * np.abs(static[obj]).mean()


def test_affine_pipeline_recovery_and_estimate_prealign():
    true = _rigid([-3.0, 2.0, 4.0], [-2.0, 3.0, 2.0])
    true[:3, :3] = true[:3, :3] @ np.array([[1.04, 0.02, 0.0], [0.0, 0.97, 0.01],
                                            [0.0, 0.0, 1.02]])
    static, s2w, moving, m2w = _make_pair(true)
    est = ap.estimate_prealign(static, moving, s2w, m2w)
    assert est.shape == (4, 4) and np.all(np.isfinite(est))
    assert _mean_err_mm(est, true, static, s2w) < 0.5
    # sampled MI on the larger levels (DIPY's sparse mode) gives the same quality
    est = ap.estimate_prealign(static, moving, s2w, m2w, max_samples=20000)
    assert _mean_err_mm(est, true, static, s2w) < 0.5
    resampled, aff = ap.affine_registration(moving, static, moving_affine=m2w,
                                            static_affine=s2w, level_iters=[100, 50, 20])
    assert resampled.shape == static.shape
    assert _mean_err_mm(aff, true, static, s2w) < 0.5


def test_masks_are_honoured():
    true = _rigid([3.0, 2.0, -4.0], [2.0, 1.0, -2.0])
    static, s2w, moving, m2w = _make_pair(true)
    # corrupt a big slab of the static image with a bright structure that the moving
    # image does not have; the static mask excludes it
    corrupt = static.copy()
    corrupt[:, :14] = 0.9
    smask = np.ones(static.shape, bool)
    smask[:, :16] = False
    reg = im.AffineRegistration(level_iters=[100, 50, 25], verbosity=0)
    c = im.transform_centers_of_mass(static, s2w, moving, m2w).affine
    est = reg.optimize(corrupt, moving, tr.RigidTransform3D(), None, static_grid2world=s2w,
                       moving_grid2world=m2w, starting_affine=c, static_mask=smask).affine
    assert _mean_err_mm(est, true, static, s2w, mask=smask & (static > 0.05)) < 0.5
    # same with a moving mask on a corrupted moving image and sampled MI
    mcorrupt = moving.copy()
    mcorrupt[-10:] = 1.0
    mmask = np.ones(moving.shape, bool)
    mmask[-12:] = False
    est = ap.estimate_prealign(static, mcorrupt, s2w, m2w, moving_mask=mmask,
                               pipeline=("center_of_mass", "translation", "rigid"))
    assert _mean_err_mm(est, true, static, s2w) < 0.5


def test_registration_2d():
    true = tr.RigidTransform2D().param_to_matrix([np.deg2rad(5.0), 2.0, -1.5])
    static, s2w, moving, m2w = _make_pair(true, dim=2, s_shape=(64, 70), m_shape=(70, 64))
    reg = im.AffineRegistration(level_iters=[100, 50, 25], verbosity=0)
    est = reg.optimize(static, moving, tr.RigidTransform2D(), None, static_grid2world=s2w,
                       moving_grid2world=m2w, starting_affine="mass").affine
    assert _mean_err_mm(est, true, static, s2w) < 0.5


def test_affine_registration_api():
    true = _rigid([0.0, 0.0, 3.0], [2.0, 0.0, 0.0])
    static, s2w, moving, m2w = _make_pair(true)
    out, aff = ap.center_of_mass(moving, static, moving_affine=m2w, static_affine=s2w)
    assert out.shape == static.shape and aff.shape == (4, 4)
    res = ap.affine_registration(moving, static, moving_affine=m2w, static_affine=s2w,
                                 pipeline=[ap.center_of_mass, "translation"],
                                 level_iters=[50, 20, 0], ret_metric=True)
    assert len(res) == 4 and res[2].shape == (3,) and res[3] < 0
    with pytest.raises(ValueError, match="pipeline"):
        ap.affine_registration(moving, static, moving_affine=m2w, static_affine=s2w,
                               pipeline=["shear"])
    with pytest.raises(ValueError, match="quality metric"):
        ap.affine_registration(moving, static, moving_affine=m2w, static_affine=s2w,
                               pipeline=["center_of_mass"], ret_metric=True)
    with pytest.raises(ValueError, match="static_affine"):
        ap.affine_registration(moving, static, moving_affine=m2w)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    true = np.eye(4)
    static, s2w, moving, m2w = _make_pair(true, s_shape=(20, 22, 18), m_shape=(20, 22, 18))
    reg = im.AffineRegistration(level_iters=[10, 5, 2], verbosity=0)
    rigid = tr.RigidTransform3D()

    def run(**kw):
        args = dict(static=static, moving=moving, transform=rigid, params0=None,
                    static_grid2world=s2w, moving_grid2world=m2w)
        args.update(kw)
        return reg.optimize(**args)

    with pytest.raises(ValueError, match="static.*constant"):
        run(static=np.ones_like(static))
    with pytest.raises(ValueError, match="moving.*constant"):
        run(moving=np.zeros_like(moving))
    bad = moving.copy()
    bad[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match="moving.*non-finite"):
        run(moving=bad)
    with pytest.raises(ValueError, match="static.*empty"):
        run(static=np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="static_grid2world"):
        run(static_grid2world=np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="moving_grid2world"):
        run(moving_grid2world=np.full((4, 4), np.inf))
    with pytest.raises(ValueError, match="starting_affine"):
        run(starting_affine=np.zeros((4, 4)))
    far = np.eye(4)
    far[0, 3] = 1e4
    with pytest.raises(ValueError, match="overlap"):
        run(starting_affine=far)
    with pytest.warns(UserWarning, match="static_mask is all zeros"):  # DIPY: ignored
        run(static_mask=np.zeros(static.shape, bool))
    with pytest.raises(ValueError, match="moving_mask"):
        run(moving_mask=np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="params0"):
        run(params0=np.zeros(3))
    with pytest.raises(ValueError, match="moving.*zero"):
        ap.estimate_prealign(static, np.zeros_like(moving), s2w, m2w)
    with pytest.raises(ValueError, match="static.*non-finite"):
        ap.estimate_prealign(np.full_like(static, np.inf), moving, s2w, m2w)
    with pytest.raises(ValueError, match="overlap"):
        ap.estimate_prealign(static, moving, s2w, m2w, pipeline=("rigid",),
                             starting_affine=far)
    with pytest.raises(ValueError, match="level_iters"):
        im.AffineRegistration(level_iters=[])


def test_sparse_sampling_honours_masks_and_matches_dense():
    static, moving, g2w, pre = _mi_inputs()
    t = tr.RigidTransform3D()
    smask = static > 0.3
    dense = im.MutualInformationMetric()
    dense.setup(t, static, moving, static_grid2world=g2w, moving_grid2world=g2w,
                starting_affine=pre, static_mask=smask)
    sparse = im.MutualInformationMetric(sampling_proportion=0.25)
    sparse.setup(t, static, moving, static_grid2world=g2w, moving_grid2world=g2w,
                 starting_affine=pre, static_mask=smask)
    # every sample lies in the static mask (nearest voxel), about a quarter of it
    vox = np.linalg.inv(pre @ g2w) @ sparse._level.pts.astype(np.float64)
    idx = [np.clip(np.ceil(v - 0.5), 0, n - 1).astype(int) for v, n in zip(vox[:3],
                                                                         static.shape,
                                                                         strict=True)]
    assert smask[tuple(idx)].all()
    assert 0.2 < sparse._level.n / smask.sum() < 0.3
    th = t.get_identity_parameters() + [0.01, 0.0, -0.01, 0.5, 0.2, -0.3]
    assert sparse.distance(th) < 0
    assert abs(sparse.distance(th) - dense.distance(th)) < 0.5 * abs(dense.distance(th))


@pytest.mark.parametrize("oshape", [(20, 31, 17), (25, 12, 30), (9, 9, 9)])
def test_resample_linear_equals_scipy_grid_constant(oshape):
    """The 3-D trilinear kernel is map_coordinates(order=1, mode='grid-constant') (DIPY's
    rule) to float64 rounding, also for points outside the input and on other grids."""
    from scipy import ndimage as ndi

    from synflow.align._sampling import resample_linear

    rng = np.random.default_rng(len(oshape) + oshape[0])
    img = rng.random((20, 31, 17))
    for _ in range(3):
        a = np.eye(4)
        a[:3, :3] += rng.normal(0, 0.2, (3, 3))
        a[:3, 3] = rng.normal(0, 3, 3)
        got = resample_linear(img, oshape, a)
        ijk = np.indices(oshape).reshape(3, -1).astype(float)
        ref = ndi.map_coordinates(img, a[:3, :3] @ ijk + a[:3, 3:], order=1,
                                  mode="grid-constant", cval=0.0).reshape(oshape)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-13)
