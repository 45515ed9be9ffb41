"""SyN: DIPY-equivalent maps, known-answer registration, inverse consistency, bad input."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from synflow.align.imwarp import (
    DiffeomorphicMap,
    RegistrationStages,
    SymmetricDiffeomorphicRegistration,
)
from synflow.align.metrics import CCMetric, SSDMetric
from synflow.data.phantom import jacobian_determinant, make_registration_case

dipy_imwarp = pytest.importorskip("dipy.align.imwarp")


def oblique(spacing, angle_deg, origin):
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag(spacing)
    m[:3, 3] = origin
    return m


@pytest.fixture(scope="module")
def case():
    """A 3 mm whole-head b0-like pair with a known diffeomorphism (~2.5 mm) and affine."""
    return make_registration_case(voxel_size=3.0, seed=3)


@pytest.fixture(scope="module")
def registered(case):
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=[10, 10, 5])
    mapping = sdr.optimize(case.static, case.moving, case.static_affine, case.moving_affine,
                           case.prealign)
    return sdr, mapping


def random_map_pair(rng, dtype=np.float32):
    """The same random fields in a synflow and a DIPY DiffeomorphicMap (different grids)."""
    disp_shape = (14, 15, 16)
    dom_shape, cod_shape = (12, 13, 11), (14, 15, 16)
    dom = oblique((2.0, 2.5, 3.0), 10, (-5, 3, 2))
    cod = oblique((2.0, 2.0, 2.0), -5, (1, -2, 0))
    pre = np.eye(4)
    pre[:3, :3] += 0.03 * rng.standard_normal((3, 3))
    pre[:3, 3] = rng.standard_normal(3)
    fwd = (rng.standard_normal(disp_shape + (3,)) * 2).astype(dtype)
    bwd = (rng.standard_normal(disp_shape + (3,)) * 2).astype(dtype)
    maps = []
    for cls in (DiffeomorphicMap, dipy_imwarp.DiffeomorphicMap):
        m = cls(3, disp_shape, disp_grid2world=cod, domain_shape=dom_shape,
                domain_grid2world=dom, codomain_shape=cod_shape, codomain_grid2world=cod,
                prealign=pre)
        m.forward, m.backward = fwd, bwd
        maps.append(m)
    return maps, dom_shape, cod_shape


@pytest.mark.parametrize("is_inverse", [False, True])
@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_diffeomorphic_map_warps_like_dipy(is_inverse, interpolation):
    rng = np.random.default_rng(0)
    (ours, theirs), dom_shape, cod_shape = random_map_pair(rng)
    ours.is_inverse = theirs.is_inverse = is_inverse
    dom_img = rng.random(dom_shape) * 100
    cod_img = rng.random(cod_shape) * 100
    fwd_in, inv_in = (dom_img, cod_img) if is_inverse else (cod_img, dom_img)
    # DIPY's nearest-neighbour warp only takes float32/float64/int32/int64 images; synflow
    # takes any numeric dtype and keeps it (checked below for the others).
    for dtype in (np.float64, np.float32, np.int32, np.int64):
        a = ours.transform(fwd_in.astype(dtype), interpolation=interpolation)
        b = theirs.transform(fwd_in.astype(dtype), interpolation=interpolation)
        assert a.shape == b.shape
        if interpolation == "nearest":
            assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-5)
        a = ours.transform_inverse(inv_in.astype(dtype), interpolation=interpolation)
        b = theirs.transform_inverse(inv_in.astype(dtype), interpolation=interpolation)
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-5)
    for dtype in (np.uint8, np.int16, np.bool_):
        img = (fwd_in > 50).astype(dtype)
        a = ours.transform(img, interpolation="nearest")
        b = theirs.transform(img.astype(np.int32), interpolation="nearest")
        assert a.dtype == dtype
        np.testing.assert_array_equal(a.astype(np.int32), b)


def test_zero_field_integer_translation_is_exact():
    rng = np.random.default_rng(1)
    img = rng.random((10, 11, 12)).astype(np.float32)
    shift = np.eye(4)
    shift[:3, 3] = [2, -1, 3]  # static world -> moving world
    m = DiffeomorphicMap(3, img.shape, np.eye(4), img.shape, np.eye(4), img.shape, np.eye(4),
                         np.linalg.inv(shift))
    m.allocate()
    m.is_inverse = True
    out = m.transform(img)  # out[x] = img[x + shift]
    np.testing.assert_array_equal(out[:8, 1:, :9], img[2:, :10, 3:])


def test_scaled_affine_grids_are_exact():
    """A moving grid with half the spacing: every static voxel lands on a moving voxel."""
    rng = np.random.default_rng(2)
    moving = rng.random((20, 22, 24)).astype(np.float32)
    static_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    moving_aff = np.diag([1.0, 1.0, 1.0, 1.0])
    m = DiffeomorphicMap(3, (10, 11, 12), static_aff, moving.shape, moving_aff, (10, 11, 12),
                         static_aff, None)
    m.allocate()
    m.is_inverse = True
    np.testing.assert_array_equal(m.transform(moving), moving[::2, ::2, ::2])


def test_inverse_flips_direction_and_shares_arrays():
    rng = np.random.default_rng(3)
    (ours, _), dom_shape, _ = random_map_pair(rng)
    inv = ours.inverse()
    assert inv.forward is ours.forward and inv.is_inverse is not ours.is_inverse
    img = rng.random(dom_shape)
    np.testing.assert_array_equal(inv.transform_inverse(img), ours.transform(img))
    np.testing.assert_array_equal(inv.inverse().transform(img), ours.transform(img))


def test_identity_registration_leaves_near_zero_field(case):
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=[10, 10, 5])
    m = sdr.optimize(case.static, case.static, case.static_affine, case.static_affine)
    field = m.get_forward_field()
    assert np.abs(field).max() < 0.05  # mm


def test_recovers_known_deformation_like_dipy(case, registered):
    _, mapping = registered
    err = case.endpoint_error_of_mapping(mapping, case.prealign)
    before = case.endpoint_error(case.static_world_points @ case.prealign[:3, :3].T
                                 + case.prealign[:3, 3])
    assert before["mean"] > 2.0  # the affine alone leaves the ~2.5 mm deformation
    assert err["mean"] < 0.55 * before["mean"]
    dipy_metrics = pytest.importorskip("dipy.align.metrics")
    dmap = dipy_imwarp.SymmetricDiffeomorphicRegistration(
        dipy_metrics.CCMetric(3), level_iters=[10, 10, 5]).optimize(
        case.static, case.moving, static_grid2world=case.static_affine,
        moving_grid2world=case.moving_affine, prealign=case.prealign)
    dipy_err = case.endpoint_error_of_mapping(dmap, case.prealign)
    assert err["mean"] <= dipy_err["mean"] + 0.05
    # same model, same step: the two warps are close
    ours = mapping.transform(case.moving)
    theirs = dmap.transform(case.moving)
    brain = case.brain_mask
    assert np.abs(ours - theirs)[brain].mean() < 0.05 * np.abs(theirs)[brain].mean()


def test_no_folding_and_inverse_consistency(case, registered):
    _, mapping = registered
    jac = jacobian_determinant(mapping.get_forward_field(), case.static_affine)
    assert jac[case.brain_mask].min() > 0
    residual, stats = mapping.compute_inversion_error()
    res = np.sqrt((residual ** 2).sum(-1))[case.brain_mask]
    assert res.mean() < 0.05  # mm
    assert stats.shape == (3,)


def test_warp_roundtrip_forward_then_inverse(case, registered):
    _, mapping = registered
    there = mapping.transform(case.moving_labels.astype(np.uint8), interpolation="nearest")
    assert there.dtype == np.uint8 and there.shape == case.static.shape
    dice = [2 * np.sum((there == k) & (case.static_labels == k))
            / (np.sum(there == k) + np.sum(case.static_labels == k)) for k in (2, 3)]
    assert min(dice) > 0.7
    back = mapping.transform_inverse(mapping.transform(case.moving))
    brain = mapping.transform_inverse(case.brain_mask.astype(np.float32)) > 0.99
    rel = np.abs(back - case.moving)[brain].mean() / case.moving[brain].mean()
    assert rel < 0.15


def test_callback_stages_fire(case):
    seen = []
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3, radius=2), level_iters=[2, 1],
                                             callback=lambda reg, stage: seen.append(stage))
    sdr.optimize(case.static, case.moving, case.static_affine, case.moving_affine, case.prealign)
    for stage in (RegistrationStages.OPT_START, RegistrationStages.SCALE_START,
                  RegistrationStages.ITER_START, RegistrationStages.ITER_END,
                  RegistrationStages.SCALE_END, RegistrationStages.OPT_END):
        assert stage in seen
    assert seen.count(RegistrationStages.ITER_END) == 3
    assert len(sdr.full_energy_profile) == 3


def test_ssd_demons_reduces_difference():
    # DIPY's SSD test idea: a sphere registered to a shifted, squashed sphere.
    grid = np.mgrid[:40, :40, :40].astype(np.float32)
    def ball(c, r):
        return (np.sqrt(((grid - np.reshape(c, (3, 1, 1, 1))) ** 2).sum(0)) < r).astype(np.float32)
    static = ndi.gaussian_filter(ball((20, 20, 20), 10), 1)
    moving = ndi.gaussian_filter(ball((21, 19, 20), 9), 1)
    m = SymmetricDiffeomorphicRegistration(SSDMetric(3, smooth=2), level_iters=[20, 20, 10]
                                           ).optimize(static, moving)
    before = ((static - moving) ** 2).sum()
    after = ((static - m.transform(moving)) ** 2).sum()
    assert after < 0.2 * before


def test_anisotropic_voxels_register(case):
    # static resampled to 3 x 3 x 6 mm: the pyramid's upper levels are isotropic (DIPY's rule)
    aff = case.static_affine @ np.diag([1, 1, 2, 1.0])
    static = case.static[:, :, ::2]
    moving_aff = case.moving_affine
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3, radius=2), level_iters=[10, 5])
    m = sdr.optimize(static, case.moving, aff, moving_aff, case.prealign)
    warped = m.transform(case.moving)
    assert warped.shape == static.shape
    aff_only = DiffeomorphicMap(3, static.shape, aff, case.moving.shape, moving_aff,
                                static.shape, aff, np.linalg.inv(case.prealign))
    aff_only.allocate()
    aff_only.is_inverse = True
    before = np.corrcoef(aff_only.transform(case.moving).ravel(), static.ravel())[0, 1]
    after = np.corrcoef(warped.ravel(), static.ravel())[0, 1]
    assert after > before


# ------------------------------------------------------------------ bad input
@pytest.fixture
def tiny():
    rng = np.random.default_rng(4)
    return ndi.gaussian_filter(rng.random((40, 40, 40)), 2).astype(np.float32)


def sdr(levels=(1, 1)):
    return SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=list(levels))


def test_bad_level_iters():
    with pytest.raises(ValueError, match="level_iters"):
        SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=[])
    with pytest.raises(ValueError, match="metric"):
        SymmetricDiffeomorphicRegistration(None)


def test_mismatched_dimensionality(tiny):
    with pytest.raises(ValueError, match="moving must be a 3-D"):
        sdr().optimize(tiny, tiny[0])


def test_non_finite_values(tiny):
    bad = tiny.copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="static has 1 non-finite"):
        sdr().optimize(bad, tiny)


def test_constant_image(tiny):
    with pytest.raises(ValueError, match="moving is constant"):
        sdr().optimize(tiny, np.ones_like(tiny))


@pytest.mark.parametrize("matrix, msg", [
    (np.zeros((4, 4)), "last row"),
    (np.diag([1, 1, 0, 1.0]), "singular"),
    (np.full((4, 4), np.nan), "non-finite"),
    (np.eye(3), "shape"),
])
def test_bad_affines(tiny, matrix, msg):
    with pytest.raises(ValueError, match=msg):
        sdr().optimize(tiny, tiny, static_grid2world=matrix)
    with pytest.raises(ValueError, match=f"prealign.*{msg}|{msg}"):
        sdr().optimize(tiny, tiny, prealign=matrix)


def test_volume_too_small_for_cc_window(tiny):
    with pytest.raises(ValueError, match="smaller than the correlation window"):
        sdr(levels=(1, 1, 1, 1)).optimize(tiny, tiny)


def test_get_map_before_optimize():
    with pytest.raises(ValueError, match="before optimize"):
        sdr().get_map()


def test_2d_cc_registration_reduces_ssd():
    """DIPY's 2-D CC acceptance test idea: a T1 slice against a smoothly warped copy."""
    dipy_data = pytest.importorskip("dipy.data")
    from pathlib import Path

    t1 = np.load(Path(dipy_data.__file__).parent / "files" / "t1_coronal_slice.npy")
    t1 = t1.astype(np.float32)
    yy, xx = np.mgrid[: t1.shape[0], : t1.shape[1]].astype(np.float32)
    moving = ndi.map_coordinates(t1, [yy + 3 * np.sin(xx / 20), xx + 3 * np.cos(yy / 25)],
                                 order=1)
    m = SymmetricDiffeomorphicRegistration(CCMetric(2, sigma_diff=3, radius=4),
                                           level_iters=[15, 5]).optimize(t1, moving)
    before = ((t1 - moving) ** 2).sum()
    after = ((t1 - m.transform(moving)) ** 2).sum()
    assert after < 0.1 * before


def test_cc_steps_equal_dipy():
    """CCMetric's forward/backward steps and energy equal DIPY's (voxel grid = mm grid)."""
    dipy_metrics = pytest.importorskip("dipy.align.metrics")
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    shape = (24, 26, 22)
    imgs = []
    for _ in range(2):
        a = ndi.gaussian_filter(rng.random(shape), 2)
        imgs.append(((a - a.min()) / (a.max() - a.min())).astype(np.float32))
    static, moving = imgs
    ref = dipy_metrics.CCMetric(3, sigma_diff=2.0, radius=4)
    ref.set_static_image(static, np.eye(4), np.ones(3), np.eye(4))
    ref.set_moving_image(moving, np.eye(4), np.ones(3), np.eye(4))
    ref.initialize_iteration()
    fw_ref = np.asarray(ref.compute_forward())
    bw_ref = np.asarray(ref.compute_backward())
    fw, bw, energy = CCMetric(3, sigma_diff=2.0, radius=4).compute_steps(static, moving,
                                                                          np.eye(3))
    scale = np.abs(fw_ref).max()
    np.testing.assert_allclose(np.moveaxis(fw, 0, -1), fw_ref, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(np.moveaxis(bw, 0, -1), bw_ref, rtol=0, atol=1e-6 * scale)
    assert energy == pytest.approx(ref.get_energy(), rel=1e-6)


# --------------------------------------------------------------------------- DIPY's map API
def _affine2d(scale, shift, angle_deg=0.0):
    a = np.deg2rad(angle_deg)
    m = np.eye(3)
    m[:2, :2] = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * scale
    m[:2, 2] = shift
    return m


def test_map_defaults_follow_dipy():
    m = DiffeomorphicMap(2, (10, 12))
    assert tuple(m.domain_shape) == tuple(m.codomain_shape) == (10, 12)
    assert m.domain_grid2world is None and m.codomain_grid2world is None
    m.allocate()
    img = np.arange(120, dtype=np.float32).reshape(10, 12)
    np.testing.assert_array_equal(m.transform(img), img)
    np.testing.assert_array_equal(m.transform_inverse(img), img)
    with pytest.raises(ValueError, match="disp_shape"):
        DiffeomorphicMap(2, None)
    assert m.interpret_matrix("identity") is None
    with pytest.raises(ValueError, match="Invalid matrix"):
        m.interpret_matrix("rotation")


def test_mult_aff_and_direction_and_spacings():
    from synflow.align.imwarp import get_direction_and_spacings, mult_aff

    A, B = np.diag([2.0, 3.0, 1.0]), _affine2d(1.0, [1, 2], 30)
    np.testing.assert_array_equal(mult_aff(A, B), A @ B)
    assert mult_aff(A, None) is A and mult_aff(None, B) is B and mult_aff(None, None) is None
    rot = oblique([1.0, 1.0, 1.0], 25, [0, 0, 0])[:3, :3]
    aff = oblique([1.5, 2.0, 2.5], 25, [3, 4, 5])
    direction, spacings = get_direction_and_spacings(aff, 3)
    np.testing.assert_allclose(direction, rot, atol=1e-12)
    np.testing.assert_allclose(spacings, [1.5, 2.0, 2.5])
    d, s = get_direction_and_spacings(None, 2)
    np.testing.assert_array_equal(d, np.eye(2))
    np.testing.assert_array_equal(s, np.ones(2))


def _affine_only_map(D, C, R, P, dom=(30, 34), cod=(36, 32)):
    m = DiffeomorphicMap(2, dom, R, dom, D, cod, C, P)
    m.allocate()
    return m


def test_simplified_transform_of_an_affine_map_is_the_composed_affine():
    """Zero fields: the simplified fields are exactly ``Cinv P D i - i`` / ``Dinv Pinv C j - j``."""
    D = _affine2d(1.1, [-2, 3], 10)
    C = _affine2d(0.9, [1, -1], -5)
    R = _affine2d(1.0, [0.5, 0.5])
    P = _affine2d(1.02, [1.5, -0.5], 3)
    m = _affine_only_map(D, C, R, P)
    s = m.get_simplified_transform()
    for field, mat, shape in ((s.forward, np.linalg.inv(C) @ P @ D, m.domain_shape),
                              (s.backward, np.linalg.inv(D) @ np.linalg.inv(P) @ C,
                               m.codomain_shape)):
        ij = np.indices(tuple(shape), dtype=np.float64)
        expect = np.tensordot(mat[:2, :2], ij, axes=1) + mat[:2, 2, None, None] - ij
        np.testing.assert_allclose(field, np.moveaxis(expect, 0, -1), atol=2e-5)
    assert s.prealign is None and s.domain_grid2world is None and s.disp_grid2world is None
    rng = np.random.default_rng(1)
    img = ndi.gaussian_filter(rng.random((36, 32)), 2).astype(np.float32)
    np.testing.assert_allclose(s.transform(img), m.transform(img), atol=1e-5)
    img_dom = ndi.gaussian_filter(rng.random((30, 34)), 2).astype(np.float32)
    np.testing.assert_allclose(s.transform_inverse(img_dom), m.transform_inverse(img_dom),
                               atol=1e-5)


def _smooth_field(shape, scale, seed):
    rng = np.random.default_rng(seed)
    f = rng.standard_normal(tuple(shape) + (len(shape),)).astype(np.float32)
    return (ndi.gaussian_filter(f, [3] * len(shape) + [0]) * scale).astype(np.float32)


@pytest.mark.parametrize("angle", [0.0, 12.0])
def test_simplified_transform_equals_dipy(angle):
    shape, cod = (20, 22, 18), (24, 20, 21)
    D, C = oblique([2, 2, 2], angle, [1, 2, 3]), oblique([1.8, 2.1, 1.9], -angle / 2, [4, 0, 2])
    R, P = oblique([2, 2, 2], angle, [1, 2, 3]), oblique([1, 1, 1], 3, [2, -1, 1])
    maps = []
    for cls in (DiffeomorphicMap, dipy_imwarp.DiffeomorphicMap):
        m = cls(3, shape, disp_grid2world=R, domain_shape=shape, domain_grid2world=D,
                codomain_shape=cod, codomain_grid2world=C, prealign=P)
        m.forward, m.backward = _smooth_field(shape, 8, 0), _smooth_field(shape, 8, 1)
        maps.append(m.get_simplified_transform())
    ours, ref = maps
    np.testing.assert_allclose(ours.forward, ref.forward, atol=2e-5)
    np.testing.assert_allclose(ours.backward, ref.backward, atol=2e-5)
    assert ours.forward.shape == shape + (3,) and ours.backward.shape == cod + (3,)


def test_warp_endomorphism_constant_fields():
    """Constant shifts a then b compose to a + b, zero where x + a leaves the grid (DIPY)."""
    shape = (8, 9)
    g2w = np.diag([2.0, 2.0, 1.0])
    m = DiffeomorphicMap(2, shape, g2w)
    phi = DiffeomorphicMap(2, shape, g2w)
    m.allocate()
    phi.allocate()
    m.forward[:] = [3.0, 0.0]  # mm: 1.5 voxels along axis 0
    m.backward[:] = [-3.0, 0.0]
    phi.forward[:] = [0.0, 1.0]
    phi.backward[:] = [0.0, -1.0]
    c = m.warp_endomorphism(phi)
    inside = np.zeros(shape, bool)
    inside[: shape[0] - 2, : shape[1] - 1] = True  # x + 1.5 < 7 and y < 8 strictly
    expect = np.where(inside[..., None], [3.0, 1.0], 0.0)
    np.testing.assert_allclose(c.forward, expect, atol=1e-6)
    inside_b = np.zeros(shape, bool)
    inside_b[2:shape[0] - 1, 1:shape[1] - 1] = True  # backward: phi^-1 (y - 0.5) then x - 1.5
    inside_b[1, 1:shape[1] - 1] = False
    np.testing.assert_allclose(c.backward[inside_b], np.tile([-3.0, -1.0], (inside_b.sum(), 1)),
                               atol=1e-6)
    assert c.is_inverse == m.is_inverse


def test_warp_endomorphism_equals_dipy():
    shape = (21, 19, 23)
    R = oblique([1.5, 1.5, 1.5], 20, [3, -2, 1])
    out = []
    for cls in (DiffeomorphicMap, dipy_imwarp.DiffeomorphicMap):
        m = cls(3, shape, disp_grid2world=R)
        phi = cls(3, shape, disp_grid2world=R)
        m.forward, m.backward = _smooth_field(shape, 10, 2), _smooth_field(shape, 10, 3)
        phi.forward, phi.backward = _smooth_field(shape, 10, 4), _smooth_field(shape, 10, 5)
        c = m.warp_endomorphism(phi)
        out.append((np.asarray(c.forward), np.asarray(c.backward)))
    np.testing.assert_allclose(out[0][0], out[1][0], atol=2e-5)
    np.testing.assert_allclose(out[0][1], out[1][1], atol=2e-5)


def test_intermediate_maps_and_dipy_attributes(tiny):
    reg = sdr(levels=(4, 4))
    assert reg.verbosity == 1  # VerbosityLevels.STATUS
    with pytest.raises(ValueError, match="before optimize"):
        reg.get_intermediate_maps()
    with pytest.raises(ValueError, match="not enough energies"):
        reg._get_energy_derivative()
    moving = ndi.shift(tiny, (1.5, -1.0, 0.5), order=1)
    P = np.eye(4)
    P[:3, 3] = [0.3, 0.0, -0.2]
    mapping = reg.optimize(tiny, moving, prealign=P)
    s2r, m2r = reg.get_intermediate_maps()
    assert s2r is reg.static_to_ref and m2r is reg.moving_to_ref
    assert tuple(s2r.domain_shape) == tuple(s2r.codomain_shape) == tiny.shape
    assert s2r.prealign is None
    np.testing.assert_allclose(m2r.prealign, np.linalg.inv(P))
    assert s2r.forward.shape == tiny.shape + (3,)
    # each half-map's fields are inverses of one another
    assert s2r.compute_inversion_error()[1][1] < 0.05
    assert m2r.compute_inversion_error()[1][1] < 0.05
    # moving -> reference -> static equals the returned map's warp
    via_ref = s2r.transform(m2r.transform_inverse(moving))
    direct = mapping.transform(moving)
    core = (slice(6, -6),) * 3
    assert np.abs(via_ref - direct)[core].mean() < 0.02 * np.ptp(tiny)


def test_metric_mask0_reaches_the_scale_space(tiny, monkeypatch):
    from synflow.align import imwarp

    seen = []
    real = imwarp.ScaleSpace

    def spy(*args, **kwargs):
        seen.append(kwargs.get("mask0"))
        return real(*args, **kwargs)

    monkeypatch.setattr(imwarp, "ScaleSpace", spy)
    metric = CCMetric(3)
    metric.mask0 = True
    SymmetricDiffeomorphicRegistration(metric, level_iters=[1]).optimize(tiny, tiny)
    assert seen == [True, True]
    sdr(levels=(1,)).optimize(tiny, tiny)
    assert seen[2:] == [False, False]


def test_auto_level_iters_stops_and_records_iterations(case):
    from synflow.align.imwarp import RECOMMENDED

    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3, **RECOMMENDED["metric"]),
                                             **RECOMMENDED["registration"])
    assert sdr.level_iters == "auto"
    mapping = sdr.optimize(case.static, case.moving, case.static_affine, case.moving_affine,
                           case.prealign)
    caps = sdr.max_iters
    assert len(sdr.iterations_per_level) == len(caps)
    assert all(1 <= n <= cap for n, cap in zip(sdr.iterations_per_level, caps, strict=True))
    assert len(sdr.full_energy_profile) == sum(sdr.iterations_per_level)
    err = case.endpoint_error_of_mapping(mapping, case.prealign)["mean"]
    short = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=[10, 10, 5]).optimize(
        case.static, case.moving, case.static_affine, case.moving_affine, case.prealign)
    assert err < case.endpoint_error_of_mapping(short, case.prealign)["mean"]
    jac = jacobian_determinant(mapping.get_forward_field(), case.static_affine)
    assert jac[case.brain_mask].min() > 0


def test_auto_stop_rule_on_a_known_energy_profile():
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters="auto", energy_tol=1e-2,
                                             energy_window=2)
    sdr.energy_list = [-100.0, -100.5]
    assert not sdr._auto_converged()  # fewer than window + 1 energies
    sdr.energy_list = [-100.0, -100.5, -100.9]
    assert sdr._auto_converged()  # 0.9 % < 1 % over the last 2 iterations
    sdr.energy_list = [-100.0, -100.5, -101.5]
    assert not sdr._auto_converged()


def test_dipy_iterations_are_recorded_too(tiny):
    reg = SymmetricDiffeomorphicRegistration(CCMetric(3, radius=2), level_iters=[3, 2])
    reg.optimize(tiny, np.roll(tiny, 1, axis=0))
    assert reg.iterations_per_level == [3, 2]


@pytest.mark.parametrize("kwargs, msg", [
    ({"level_iters": "fast"}, "level_iters"),
    ({"energy_tol": -1.0}, "energy_tol"),
    ({"energy_window": 0}, "energy_window"),
    ({"work_cap": 0.0}, "work_cap"),
])
def test_bad_synflow_keywords(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        SymmetricDiffeomorphicRegistration(CCMetric(3), **kwargs)


def test_work_cap_limits_the_iterations_of_large_levels(tiny):
    reg = SymmetricDiffeomorphicRegistration(CCMetric(3, radius=2), level_iters="auto",
                                             max_iters=(20, 20), energy_tol=0.0,
                                             work_cap=3 * 40 ** 3)
    reg.optimize(tiny, np.roll(tiny, 1, axis=0))
    assert reg.iterations_per_level == [20, 3]  # 20 ** 3 voxels: 24 > 20; 40 ** 3: 3
