"""Known-answer tests for synflow.align.qc (Jacobian, folding, local CC, inverse consistency)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from synflow.align import qc


def _world(shape, aff):
    """World coordinates (X, Y, Z, 3) of every voxel centre."""
    ijk = np.indices(shape, dtype=np.float64)
    return np.einsum("ab,b...->...a", aff[:3, :3], ijk) + aff[:3, 3]


def _rot(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = np.eye(4)
OBLIQUE[:3, :3] = _rot(0.2, -0.1, 0.3) @ np.diag([1.8, 2.0, 2.5])
OBLIQUE[:3, 3] = [-30.0, -20.0, 10.0]


class _Map:
    def __init__(self, fwd, bwd, aff):
        self.forward, self.backward, self.disp_grid2world = fwd, bwd, aff


# --------------------------------------------------------------------------- Jacobian
@pytest.mark.parametrize("aff", [np.eye(4), np.diag([2.0, 2.0, 2.0, 1.0]), OBLIQUE])
def test_jacobian_of_affine_field_is_det_of_matrix(aff):
    shape = (12, 14, 10)
    m = np.eye(3) + np.array([[0.10, -0.05, 0.02], [0.03, -0.20, 0.04], [-0.02, 0.06, 0.15]])
    x = _world(shape, aff)
    u = (x @ (m - np.eye(3)).T + np.array([1.0, -2.0, 0.5])).astype(np.float32)
    jac = qc.jacobian_determinant(u, aff)
    assert jac.shape == shape and jac.dtype == np.float32
    np.testing.assert_allclose(jac, np.linalg.det(m), rtol=2e-5)  # exact incl. borders


def test_jacobian_identity_and_translation():
    u = np.zeros((5, 6, 7, 3), np.float32)
    np.testing.assert_array_equal(qc.jacobian_determinant(u, None), 1.0)
    u[...] = [3.0, -1.0, 2.0]
    np.testing.assert_allclose(qc.jacobian_determinant(u, np.diag([2, 3, 4, 1.0])), 1.0)


@pytest.mark.parametrize("aff", [np.diag([2.0, 2.0, 2.0, 1.0]), OBLIQUE])
def test_jacobian_of_sinusoidal_field(aff):
    """u = a sin(k x_w) e_x: det = 1 + a k cos(k x_w); on an axis-aligned grid the central
    difference is exactly 1 + a cos(k x) sin(k h) / h."""
    shape = (32, 10, 8)
    a, period = 2.0, 40.0
    k = 2 * np.pi / period
    x = _world(shape, aff)
    u = np.zeros(shape + (3,), np.float32)
    u[..., 0] = a * np.sin(k * x[..., 0])
    jac = qc.jacobian_determinant(u, aff)
    inner = (slice(1, -1),) * 3
    analytic = 1 + a * k * np.cos(k * x[..., 0])
    np.testing.assert_allclose(jac[inner], analytic[inner], atol=0.02)
    if np.allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3]))):
        h = aff[0, 0]
        discrete = 1 + a * np.cos(k * x[..., 0]) * np.sin(k * h) / h
        np.testing.assert_allclose(jac[inner], discrete[inner], atol=1e-5)
    assert jac.min() < 1 < jac.max()


def test_jacobian_detects_folding_and_rejects_bad_input():
    shape = (20, 6, 6)
    u = np.zeros(shape + (3,), np.float32)
    i = np.arange(shape[0], dtype=np.float32)
    u[..., 0] = (-2.0 * np.exp(-((i - 10) ** 2) / 4) * (i - 10))[:, None, None]  # x-> x+u folds
    jac = qc.jacobian_determinant(u, None)
    assert jac.min() < 0
    assert 0 < qc.folding_fraction(jac) < 100
    with pytest.raises(ValueError, match="disp_mm"):
        qc.jacobian_determinant(np.zeros((4, 4, 4)), None)
    with pytest.raises(ValueError, match="grid2world"):
        qc.jacobian_determinant(np.zeros((4, 4, 4, 3)), np.zeros((4, 4)))


# --------------------------------------------------------------------------- folding
def test_folding_fraction_counts_percent_in_mask():
    jac = np.ones((10, 10, 1), np.float32)
    jac[0, :3, 0] = [-1.0, 0.0, 1e-3]  # two folded (<= 0), one not
    jac[9, 9, 0] = -5.0  # folded but outside the mask below
    mask = np.zeros_like(jac, bool)
    mask[:5] = True
    assert qc.folding_fraction(jac, mask) == pytest.approx(100 * 2 / 50)
    assert qc.folding_fraction(jac) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="mask"):
        qc.folding_fraction(jac, np.zeros_like(mask))
    with pytest.raises(ValueError, match="mask"):
        qc.folding_fraction(jac, mask[:5])


# --------------------------------------------------------------------------- local CC
def _texture(shape=(20, 22, 18), seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 1.5).astype(np.float32)


def test_local_cc_known_values():
    a = _texture()
    assert qc.local_cc(a, a) == pytest.approx(1.0, abs=1e-9)
    assert qc.local_cc(a, 3 * a + 7) == pytest.approx(1.0, abs=1e-6)
    assert qc.local_cc(a, -2 * a) == pytest.approx(-1.0, abs=1e-6)
    b = _texture(seed=1)
    assert abs(qc.local_cc(a, b)) < 0.15
    shifted = np.roll(a, 2, axis=0)
    assert qc.local_cc(a, a) > qc.local_cc(a, shifted) > qc.local_cc(a, b)


def test_local_cc_matches_brute_force():
    a = _texture(seed=2)
    b = 0.5 * a + _texture(seed=3)
    r = 2
    mask = np.zeros(a.shape, bool)
    mask[4:8, 5:9, 6:9] = True  # windows stay inside the volume
    ccs = []
    for i, j, k in zip(*np.nonzero(mask), strict=True):
        wa = a[i - r:i + r + 1, j - r:j + r + 1, k - r:k + r + 1].astype(np.float64).ravel()
        wb = b[i - r:i + r + 1, j - r:j + r + 1, k - r:k + r + 1].astype(np.float64).ravel()
        ccs.append(np.corrcoef(wa, wb)[0, 1])
    assert qc.local_cc(a, b, mask, radius=r) == pytest.approx(np.mean(ccs), abs=1e-6)


def test_local_cc_ignores_flat_windows_and_validates():
    a = np.zeros((12, 12, 12), np.float32)
    with pytest.raises(ValueError, match="non-constant"):
        qc.local_cc(a, a)
    with pytest.raises(ValueError, match="same shape"):
        qc.local_cc(a, a[:-1])
    with pytest.raises(ValueError, match="radius"):
        qc.local_cc(a, a, radius=0)
    b = _texture((12, 12, 12))
    c = b.copy()
    c[:4] = 0  # flat region: windows there are skipped, not NaN
    v = qc.local_cc(b, c)
    assert np.isfinite(v) and 0.5 < v <= 1


# --------------------------------------------------------------------------- inverse consistency
def test_ice_of_exact_inverse_affine_pair_is_zero():
    shape = (16, 18, 14)
    aff = OBLIQUE
    m = np.eye(3) + 0.05 * np.array([[1, -0.5, 0.2], [0.3, -1, 0.4], [-0.2, 0.6, 0.8]])
    x = _world(shape, aff)
    fwd = (x @ (m - np.eye(3)).T).astype(np.float32)
    bwd = (x @ (np.linalg.inv(m) - np.eye(3)).T).astype(np.float32)
    mean, p95, mx = qc.inverse_consistency_error(_Map(fwd, bwd, aff))
    assert mx < 1e-4 and mean <= p95 <= mx


def test_ice_of_mismatched_translations():
    shape = (10, 10, 10)
    fwd = np.broadcast_to(np.float32([1.0, 0.5, 0.0]), shape + (3,)).copy()
    bwd = np.broadcast_to(np.float32([-0.5, 0.5, 0.0]), shape + (3,)).copy()
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    mean, p95, mx = qc.inverse_consistency_error(_Map(fwd, bwd, aff))
    expected = np.hypot(0.5, 1.0)
    assert mean == pytest.approx(expected, rel=1e-6)
    assert p95 == pytest.approx(expected, rel=1e-6) and mx == pytest.approx(expected, rel=1e-6)
    mask = np.zeros(shape, bool)
    mask[3:6, 3:6, 3:6] = True
    assert qc.inverse_consistency_error(_Map(fwd, bwd, aff), mask)[0] == pytest.approx(expected)


def test_ice_validates():
    f = np.zeros((6, 6, 6, 3), np.float32)
    with pytest.raises(ValueError, match="backward"):
        qc.inverse_consistency_error(_Map(f, None, None))
    with pytest.raises(ValueError, match="same grid"):
        qc.inverse_consistency_error(_Map(f, f[:5], None))
    with pytest.raises(ValueError, match="mask"):
        qc.inverse_consistency_error(_Map(f, f, None), np.ones((5, 6, 6), bool))


@pytest.mark.needs_dipy
def test_ice_matches_dipy_inversion_error():
    pytest.importorskip("dipy")
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    sh = (40, 40, 40)
    x, y, z = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in sh], indexing="ij")
    static = np.exp(-((x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2) / 72).astype(np.float32)
    moving = np.exp(-((x - 21) ** 2 / 98 + (y - 19.5) ** 2 / 60.5 + (z - 20) ** 2 / 72)
                    ).astype(np.float32)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=[5, 5, 0])
    mapping = sdr.optimize(static, moving, static_grid2world=aff, moving_grid2world=aff)
    # DIPY's compute_inversion_error = compose(backward, forward), outside samples -> 0
    comp, _stats = mapping.compute_inversion_error()
    ref = np.sqrt((comp.astype(np.float64) ** 2).sum(-1))
    mean, p95, mx = qc.inverse_consistency_error(mapping, symmetric=False)
    assert mean == pytest.approx(ref.mean(), rel=1e-3, abs=1e-6)
    assert mx == pytest.approx(ref.max(), rel=1e-3, abs=1e-6)
    assert mx > 0  # a real, non-trivial map
    sym = qc.inverse_consistency_error(mapping)
    assert all(np.isfinite(sym)) and sym[0] <= sym[1] <= sym[2]
    jac = qc.jacobian_determinant(mapping.get_forward_field(), mapping.disp_grid2world)
    assert jac.min() > 0 and qc.folding_fraction(jac) == 0.0
