"""SyN metrics: DIPY's protocol and synflow's contract, against DIPY and known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from synflow.align import _multigrid as mg
from synflow.align._quantize import masked_class_stats, quantize_positive
from synflow.align.metrics import CCMetric, EMMetric, SSDMetric

dipy_metrics = pytest.importorskip("dipy.align.metrics")


def _blob_pair(shape=(24, 28, 20), shift=1.5, seed=0):
    """A smooth positive image and a copy shifted by ``shift`` voxels along axis 0."""
    rng = np.random.default_rng(seed)
    base = ndi.gaussian_filter(rng.random([s + 8 for s in shape]), 2.5)
    base = (base - base.min()) / np.ptp(base)
    crop = tuple(slice(4, 4 + s) for s in shape)
    static = base[crop].astype(np.float32)
    moving = ndi.shift(base, (shift,) + (0,) * (len(shape) - 1), order=1)[crop]
    return static, moving.astype(np.float32)


def _run_protocol(metric, static, moving, spacing):
    dim = static.ndim
    aff = np.diag(list(spacing) + [1.0])
    metric.set_levels_below(1)
    metric.set_static_image(static, aff, np.asarray(spacing, float), np.eye(dim + 1))
    metric.use_static_image_dynamics(static, None)
    metric.set_moving_image(moving, aff, np.asarray(spacing, float), np.eye(dim + 1))
    metric.use_moving_image_dynamics(moving, None)
    metric.initialize_iteration()
    fw = np.array(metric.compute_forward())
    e_fw = metric.get_energy()
    bw = np.array(metric.compute_backward())
    metric.free_iteration()
    return fw, bw, e_fw


CASES = [
    ("CCMetric", {}),
    ("SSDMetric", {"step_type": "demons"}),
    ("SSDMetric", {"step_type": "gauss_newton"}),
    ("EMMetric", {"step_type": "demons"}),
    ("EMMetric", {"step_type": "gauss_newton"}),
]


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_protocol_matches_dipy(name, kwargs):
    """Same inputs through DIPY's metric protocol: equal steps (GN: the same solve)."""
    static, moving = _blob_pair()
    spacing = (2.0, 2.0, 2.0)
    ours = _run_protocol(getattr(__import__("synflow.align.metrics", fromlist=[name]), name)(
        3, **kwargs), static, moving, spacing)
    ref = _run_protocol(getattr(dipy_metrics, name)(3, **kwargs), static, moving, spacing)
    for a, b in zip(ours[:2], ref[:2], strict=True):
        assert a.shape == b.shape
        corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        if kwargs.get("step_type") == "gauss_newton":
            # red-black vs lexicographic Gauss-Seidel: the same system, not the same iterate
            assert corr > 0.97
            assert np.linalg.norm(a - b) < 0.3 * np.linalg.norm(b)
        else:
            np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max() + 1e-7, rtol=1e-3)
    assert ours[2] == pytest.approx(ref[2], rel=1e-4)


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_contract_equals_protocol(name, kwargs):
    """synflow's voxel steps are DIPY-protocol world steps / spacing (isotropic grid)."""
    static, moving = _blob_pair(shape=(20, 22, 18))
    h = 2.0
    cls = {"CCMetric": CCMetric, "SSDMetric": SSDMetric, "EMMetric": EMMetric}[name]
    world_fw, world_bw, _ = _run_protocol(cls(3, **kwargs), static, moving, (h, h, h))
    metric = cls(3, **kwargs)
    metric.set_levels_below(1)
    ginv = np.eye(3) / h**2
    fw, bw, _ = metric.compute_steps(static, moving, ginv)
    np.testing.assert_allclose(np.moveaxis(fw, 0, -1) * h, world_fw, rtol=1e-3,
                               atol=1e-5 * np.abs(world_fw).max())
    np.testing.assert_allclose(np.moveaxis(bw, 0, -1) * h, world_bw, rtol=1e-3,
                               atol=1e-5 * np.abs(world_bw).max())


def test_gauss_newton_solves_the_system():
    """Repeated V-cycles (on the residual) drive the system's residual towards 0."""
    static, moving = _blob_pair(shape=(16, 18, 14))
    delta = static - moving
    g = np.stack(np.gradient(static)).astype(np.float32)
    b = np.linalg.norm(g * delta)
    d = np.zeros_like(g)
    mg.v_cycle(2, 10, delta, None, g, None, 0.5, d)
    r1 = np.linalg.norm(mg.system_residual(delta, None, g, 0.5, d)) / b
    for _ in range(30):
        res = mg.system_residual(delta, None, g, 0.5, d)
        corr = np.zeros_like(d)
        mg.v_cycle(2, 10, None, None, g, res, 0.5, corr)
        d += corr
    r2 = np.linalg.norm(mg.system_residual(delta, None, g, 0.5, d)) / b
    assert r1 < 0.6
    assert r2 < 0.05


def test_gauss_newton_infinite_variance_is_neighbour_mean():
    """A voxel of infinite variance takes the mean of its neighbours (DIPY)."""
    g = np.ones((2, 5, 5), np.float32)
    sigma = np.ones((5, 5), np.float32)
    sigma[2, 2] = np.inf
    d = np.random.default_rng(1).random((2, 5, 5)).astype(np.float32)
    level = mg._Level(np.zeros((5, 5), np.float32), sigma, g, None, 1.0)
    # (2, 2) is a "red" voxel: updated first, from its (black) neighbours' old values
    nb = d[:, 1, 2] + d[:, 3, 2] + d[:, 2, 1] + d[:, 2, 3]
    level.smooth(d, 1)
    np.testing.assert_allclose(d[:, 2, 2], nb / 4, rtol=1e-5)


def test_downsample_block_means_odd_shape():
    a = np.arange(15, dtype=np.float32).reshape(3, 5)
    out = mg.downsample(a)
    assert out.shape == (2, 3)
    assert out[0, 0] == pytest.approx(np.mean([0, 1, 5, 6]))
    assert out[1, 2] == pytest.approx(14.0)  # a 1x1 block
    assert out[0, 2] == pytest.approx(np.mean([4, 9]))


def test_quantize_and_stats_match_dipy():
    from dipy.align import expectmax as em

    rng = np.random.default_rng(3)
    v = (rng.random((12, 13, 9)) * 5 - 1).astype(np.float32)
    labels, levels, hist = quantize_positive(v, 16)
    l2, lev2, h2 = em.quantize_positive_3d(v, 16)
    np.testing.assert_array_equal(labels, l2)
    np.testing.assert_allclose(levels, lev2, rtol=1e-5)
    np.testing.assert_array_equal(hist, h2)
    mask = (v > 0.5).astype(np.int32)
    w = rng.random(v.shape).astype(np.float32)
    means, variances = masked_class_stats(mask, w, 16, labels)
    m2, v2 = em.compute_masked_class_stats_3d(mask, w, 16, labels.astype(np.int32))
    np.testing.assert_allclose(means, m2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(variances, v2, rtol=1e-3, atol=1e-6)


def test_em_transfer_of_a_known_intensity_mapping():
    """moving = 1.5 - static inside the head: EM's transfer function recovers it."""
    static, _ = _blob_pair(shape=(20, 20, 16))
    static = np.where(static > 0.3, static, 0).astype(np.float32)
    moving = np.where(static > 0, 1.5 - static, 0).astype(np.float32)
    metric = EMMetric(3, q_levels=64, step_type="demons")
    f, energy = metric.compute_factors(static, moving)
    inside = static > 0
    np.testing.assert_allclose(f.staticq_means_field[inside], moving[inside], atol=0.02)
    np.testing.assert_allclose(f.movingq_means_field[inside], static[inside], atol=0.02)
    assert energy < 1e-3 * inside.sum()
    # aligned pair: the demons step is (almost) zero compared with a shifted pair
    step = metric.step(f, static, np.eye(3), True)
    shifted = ndi.shift(moving, (1.5, 0, 0), order=1).astype(np.float32)
    f2, _ = metric.compute_factors(static, shifted)
    step2 = metric.step(f2, static, np.eye(3), True)
    assert np.abs(step).max() < 0.2 * np.abs(step2).max()


@pytest.mark.parametrize("metric", [
    SSDMetric(2, smooth=1.0, step_type="gauss_newton"),
    EMMetric(2, smooth=2.0, step_type="gauss_newton"),
    EMMetric(2, smooth=2.0, step_type="demons"),
])
def test_synflow_optimiser_reduces_energy(metric):
    from synflow.align.imwarp import SymmetricDiffeomorphicRegistration

    static, moving = _blob_pair(shape=(48, 52), shift=2.0)
    sdr = SymmetricDiffeomorphicRegistration(metric, level_iters=[20, 10])
    mapping = sdr.optimize(static, moving)
    warped = mapping.transform(moving)
    inner = (slice(6, -6), slice(6, -6))
    before = np.sum((static - moving)[inner] ** 2)
    after = np.sum((static - warped)[inner] ** 2)
    assert after < 0.3 * before


def test_dipy_optimiser_runs_with_synflow_metric():
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration

    static, moving = _blob_pair(shape=(48, 52), shift=2.0)
    sdr = SymmetricDiffeomorphicRegistration(EMMetric(2, smooth=2.0), level_iters=[20, 10])
    mapping = sdr.optimize(static, moving)
    warped = mapping.transform(moving)
    inner = (slice(6, -6), slice(6, -6))
    assert np.sum((static - warped)[inner] ** 2) < 0.3 * np.sum((static - moving)[inner] ** 2)


@pytest.mark.parametrize(("cls", "kwargs", "word"), [
    (SSDMetric, {"step_type": "newton"}, "step_type"),
    (EMMetric, {"step_type": "unknown"}, "step_type"),
    (EMMetric, {"q_levels": 1}, "q_levels"),
    (EMMetric, {"smooth": -1.0}, "smooth"),
    (SSDMetric, {"inner_iter": 0}, "inner_iter"),
    (SSDMetric, {"smooth": float("nan")}, "smooth"),
    (CCMetric, {"radius": 0}, "radius"),
    (CCMetric, {"sigma_diff": -2}, "sigma_diff"),
])
def test_bad_arguments(cls, kwargs, word):
    with pytest.raises(ValueError, match=word):
        cls(3, **kwargs)


@pytest.mark.parametrize("cls", [CCMetric, SSDMetric, EMMetric])
def test_bad_dim_and_images(cls):
    with pytest.raises(ValueError, match="dim"):
        cls(4)
    metric = cls(3)
    with pytest.raises(ValueError, match="static_image"):
        metric.set_static_image(np.zeros((5, 5)), np.eye(4), np.ones(3), np.eye(3))
    with pytest.raises(ValueError, match="image"):
        metric.initialize_iteration()


def test_keyword_only_like_dipy():
    with pytest.raises(TypeError):
        EMMetric(3, 1.0)
    assert SSDMetric(3).step_type == "demons"
    assert EMMetric(3).step_type == "gauss_newton"
    assert EMMetric(3).mask0 is False
