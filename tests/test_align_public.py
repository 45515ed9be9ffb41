"""Tests of DIPY's one-call API in synflow.align: register_dwi_to_template, resample,
the base Transform, DIPY's mask warnings, scale spaces (DIPY 1.12 behaviour)."""

from __future__ import annotations

import numpy as np
import pytest

import synflow.align as sa
from synflow.align import imaffine as im
from synflow.align import transforms as tr
from synflow.align._dwi_public import b0_mask
from synflow.align.scalespace import IsotropicScaleSpace


def _blob(shape=(24, 26, 22), shift=(0.0, 0.0, 0.0)):
    idx = np.indices(shape, dtype=np.float64)
    c = np.array(shape, float)[:, None, None, None] / 2 + np.array(shift)[:, None, None, None]
    r2 = (((idx - c) / np.array([6.0, 7.0, 5.0])[:, None, None, None]) ** 2).sum(0)
    img = np.exp(-r2) + 0.5 * np.exp(-((idx[0] - c[0] - 3) ** 2 + (idx[1] - c[1]) ** 2
                                       + (idx[2] - c[2] + 2) ** 2) / 8.0)
    return img.astype(np.float32)


def test_base_transform_raises_like_dipy():
    t = tr.Transform()
    assert t.get_number_of_parameters() == -1 and t.get_dim() == -1
    for call in (lambda: t.jacobian(np.zeros(3), np.zeros(3)), t.get_identity_parameters,
                 lambda: t.param_to_matrix(np.zeros(3))):
        with pytest.raises(ValueError, match="abstract"):
            call()


def test_b0_mask_accepts_gtab_like_objects_and_bvals():
    bvals = np.array([0, 1000, 5, 1000, 2000])

    class G:
        b0s_mask = bvals <= 50

    expect = [True, False, True, False, False]
    assert b0_mask(G(), 5).tolist() == expect
    assert b0_mask((bvals, np.zeros((5, 3))), 5).tolist() == expect
    assert b0_mask(list(bvals), 5).tolist() == expect
    with pytest.raises(ValueError, match="gtab describes 5 volumes but dwi has 4"):
        b0_mask(bvals, 4)
    with pytest.raises(ValueError, match="no b0"):
        b0_mask(np.full(5, 1000.0), 5)
    with pytest.raises(ValueError, match="gtab should be"):
        b0_mask(3.0, 5)


def test_register_dwi_to_template_affine_recovers_shift(tmp_path):
    static = _blob()
    moving_b0 = _blob(shift=(2.0, -1.0, 1.0))
    dwi = np.stack([moving_b0, 0.3 * moving_b0, moving_b0 * 1.0, 0.2 * moving_b0], -1)
    bval = tmp_path / "x.bval"
    bvec = tmp_path / "x.bvec"
    np.savetxt(bval, [[0, 1000, 0, 1000]])
    np.savetxt(bvec, np.ones((3, 4)))
    warped, mat = sa.register_dwi_to_template(
        dwi, (str(bval), str(bvec)), dwi_affine=np.eye(4), template=static,
        template_affine=np.eye(4), reg_method="aff", pipeline=["center_of_mass", "translation"])
    assert warped.shape == static.shape and mat.shape == (4, 4)
    np.testing.assert_allclose(mat[:3, 3], [2.0, -1.0, 1.0], atol=0.3)
    with pytest.raises(ValueError, match="reg_method"):
        sa.register_dwi_to_template(dwi, (bval, bvec), dwi_affine=np.eye(4), template=static,
                                    template_affine=np.eye(4), reg_method="foo")
    with pytest.raises(ValueError, match="dwi must be a 4-D"):
        sa.register_dwi_to_template(static, [0], dwi_affine=np.eye(4), template=static,
                                    template_affine=np.eye(4))


def test_resample_matches_affine_map_and_dipy():
    dipy_align = pytest.importorskip("dipy.align")
    moving = _blob()
    static = np.zeros((20, 22, 18))
    s_aff = np.diag([1.2, 1.2, 1.2, 1.0])
    s_aff[:3, 3] = [1.0, -2.0, 0.5]
    between = np.eye(4)
    between[:3, 3] = [0.5, 0.25, -0.5]
    out = sa.resample(moving, static, moving_affine=np.eye(4), static_affine=s_aff,
                      between_affine=between)
    ref = dipy_align.resample(moving, static, moving_affine=np.eye(4), static_affine=s_aff,
                              between_affine=between)
    np.testing.assert_allclose(out.affine, s_aff)
    np.testing.assert_allclose(out.get_fdata(), ref.get_fdata(), atol=1e-5)
    with pytest.raises(ValueError, match="drop axis 3"):
        sa.resample(np.zeros((4, 4, 4, 3)), static, moving_affine=np.eye(4),
                    static_affine=s_aff)
    with pytest.raises(ValueError, match="moving_affine"):
        sa.resample(moving, static, static_affine=s_aff)


def test_four_d_input_names_the_axis_to_drop():
    img = np.random.default_rng(0).random((8, 8, 8, 2))
    with pytest.raises(ValueError, match=r"moving must be a 3-D.*drop axis 3 \(of length 2\)"):
        sa.affine_registration(img, img[..., 0], moving_affine=np.eye(4),
                               static_affine=np.eye(4))


def test_masks_with_sparse_sampling_warn_and_empty_masks_are_ignored():
    static = _blob()
    moving = _blob(shift=(1.0, 0.0, 0.0))
    mask = static > 0.05
    reg = im.AffineRegistration(im.MutualInformationMetric(32, 0.5), level_iters=[5, 5],
                                sigmas=[1, 0], factors=[2, 1], verbosity=0)
    with pytest.warns(UserWarning, match="sparse sampling"):
        reg.optimize(static, moving, tr.TranslationTransform3D(), None, static_mask=mask)
    dense = im.AffineRegistration(im.MutualInformationMetric(32), level_iters=[5, 5],
                                  sigmas=[1, 0], factors=[2, 1], verbosity=0)
    with pytest.warns(UserWarning, match="moving_mask is all zeros"):
        dense.optimize(static, moving, tr.TranslationTransform3D(), None,
                       moving_mask=np.zeros(moving.shape, bool))


def test_isotropic_scale_space_matches_dipy():
    dipy_ss = pytest.importorskip("dipy.align.scalespace")
    img = _blob().astype(np.float64)
    g2w = np.diag([1.0, 1.5, 2.5, 1.0])
    ours = IsotropicScaleSpace(img, [4, 2, 1], [3.0, 1.0, 0.0], g2w)
    ref = dipy_ss.IsotropicScaleSpace(img, [4, 2, 1], [3.0, 1.0, 0.0], image_grid2world=g2w,
                                      input_spacing=np.array([1.0, 1.5, 2.5]))
    for level in range(3):
        np.testing.assert_array_equal(ours.get_domain_shape(level), ref.get_domain_shape(level))
        np.testing.assert_allclose(ours.get_scaling(level), ref.get_scaling(level))
        np.testing.assert_allclose(ours.get_affine(level), ref.get_affine(level))
        np.testing.assert_allclose(ours.get_image(level), ref.get_image(level), atol=1e-6)
    with pytest.raises(ValueError, match="Invalid pyramid level"):
        ours.get_image(3)
