"""Tests of synflow.data: bundled template, phantom cases with known answers, demo BIDS data."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from _oracle import oracle_mapping
from scipy import ndimage as ndi

from synflow.data import TEMPLATE_SPACE, get_fnames, get_template
from synflow.data import phantom as ph


@pytest.fixture(scope="module")
def case() -> ph.RegistrationCase:
    return ph.make_registration_case(seed=0)


# ------------------------------------------------------------------ template
def test_template_files_mni_space():
    assert TEMPLATE_SPACE == "MNI152NLin2009aSym"
    ref = nib.load(str(get_template("b0")))
    assert ref.shape == (98, 116, 94)
    np.testing.assert_allclose(np.diag(ref.affine)[:3], [2, 2, 2])
    # 1 mm voxel (98, 134, 72) is MNI (0, 0, 0); the 2 mm grid keeps world coordinates
    np.testing.assert_allclose(ref.affine[:3, 3], [-97.5, -133.5, -71.5])
    for kind in ("b0", "brainmask", "headmask", "GM", "WM", "CSF"):
        img = nib.load(str(get_template(kind)))
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine)
        assert img.get_data_dtype() == np.uint8
    probs = [nib.load(str(get_template(k))).get_fdata() for k in ("GM", "WM", "CSF")]
    total = sum(probs)
    assert all(p.min() >= 0 and p.max() <= 1 + 1e-6 for p in probs)
    assert total.max() <= 1 + 1e-6
    brain = nib.load(str(get_template("brainmask"))).get_fdata() > 0
    head = nib.load(str(get_template("headmask"))).get_fdata() > 0
    assert np.all(head[brain])
    assert total[brain].mean() > 0.9
    # brain volume ~ 1.5-1.9 l
    assert 1.3e6 < brain.sum() * 8 < 2.1e6
    # b0 contrast: CSF > GM > WM > scalp > 0 = background
    b0 = nib.load(str(get_template("b0"))).get_fdata()
    gm, wm, csf = probs
    means = [b0[p > 0.9].mean() for p in (csf, gm, wm)]
    assert means[0] > means[1] > means[2] > 0
    assert b0[~ndi.binary_dilation(head, iterations=2)].max() == 0
    # left-right symmetric template: brain centre near x = 0
    com = ref.affine[:3, :3] @ np.array(ndi.center_of_mass(brain)) + ref.affine[:3, 3]
    assert abs(com[0]) < 2


def test_get_template_and_fnames_errors():
    with pytest.raises(ValueError, match="brainmask"):
        get_template("T1")
    with pytest.raises(ValueError, match="b0_pair"):
        get_fnames("stanford_hardi")
    with pytest.raises(ValueError, match="network"):
        get_fnames("syn_data")
    with pytest.raises(ValueError, match="must be one of"):
        get_fnames("nope")
    assert get_fnames("template_b0") == str(get_template("b0"))


def test_bundled_examples():
    st, mv, pre = get_fnames("b0_pair")
    s, m = nib.load(st), nib.load(mv)
    assert s.shape == (81, 106, 76) and m.shape == (80, 96, 60)
    np.testing.assert_allclose(np.diag(s.affine)[:3], [2, 2, 2])
    np.testing.assert_allclose(np.diag(m.affine)[:3], [2.5, 2.5, 3.0])
    p = np.loadtxt(pre)
    assert p.shape == (4, 4)
    np.testing.assert_allclose(p[3], [0, 0, 0, 1])
    dwi, bval, bvec = get_fnames("small_dwi")
    img = nib.load(dwi)
    bvals = np.loadtxt(bval)
    bvecs = np.loadtxt(bvec)
    assert img.ndim == 4 and img.shape[3] == len(bvals) == bvecs.shape[1]
    data = img.get_fdata()
    b0 = data[..., bvals == 0].mean(-1)
    dw = data[..., bvals > 0].mean(-1)
    mask = b0 > np.percentile(b0, 70)
    assert dw[mask].mean() < 0.8 * b0[mask].mean()
    for f in (st, mv, dwi):
        assert len(open(f, "rb").read()) < 1_000_000


def test_tutorial_pair_regenerates():
    tp = ph.make_tutorial_pair()
    st = nib.load(get_fnames("b0_pair")[0])
    np.testing.assert_allclose(st.affine, tp.static_affine, atol=1e-6)
    r = np.corrcoef(st.get_fdata().ravel(), tp.static.ravel())[0, 1]
    assert r > 0.99
    np.testing.assert_allclose(np.loadtxt(get_fnames("b0_pair")[2]), tp.prealign, atol=1e-6)
    # the prealign is close to, but not exactly, the true affine
    x = ph.grid_world_points(tp.static.shape, tp.static_affine)
    truth = tp.true_pull_points()
    brain = tp.static > 250

    def epe(a):
        return np.linalg.norm(x @ a[:3, :3].T + a[:3, 3] - truth, axis=-1)[brain].mean()

    assert epe(tp.true_affine) < epe(tp.prealign) < 8 < epe(np.eye(4))


# ------------------------------------------------------------------ deformations
def test_velocity_exponentiation_inverse_and_jacobian():
    t = ph.load_template_tissues(2.0)
    info: dict = {}
    fwd, inv = ph.random_diffeomorphism(t.shape, t.affine, 2.5, rng=1, mask=t.brain_mask,
                                        info=info)
    assert fwd.dtype == np.float32 and fwd.shape == t.shape + (3,)
    mean = np.linalg.norm(fwd, axis=-1)[t.brain_mask].mean()
    assert abs(mean - 2.5) < 0.1
    m = t.brain_mask
    # x -> x + fwd -> + inv is refined to identity at the grid points (the truth of a case)
    err = np.linalg.norm(ph.compose_displacements(fwd, inv, t.affine), axis=-1)
    print(f"exp(v) then exp(-v): max {err[m].max():.4f} mm (brain), {err.max():.4f} mm (grid)")
    assert err[m].max() < 0.05 and err.max() < 0.1
    # the other order is limited by trilinear interpolation of fwd
    err = np.linalg.norm(ph.compose_displacements(inv, fwd, t.affine), axis=-1)
    print(f"exp(-v) then exp(v): max {err[m].max():.3f} mm, mean {err[m].mean():.4f} mm")
    assert err[m].max() < 0.6 and err[m].mean() < 0.05
    assert info["min_jacobian"] > 0 and info["min_jacobian_inverse"] > 0
    assert ph.jacobian_determinant(fwd, t.affine).min() > 0
    # the product of the two Jacobians (at matching points) is ~1 on average
    assert abs(ph.jacobian_determinant(fwd, t.affine)[t.brain_mask].mean() - 1) < 0.05


def test_deformation_dataclass_unpacks_and_reports():
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    info: dict = {}
    d = ph.random_diffeomorphism((20, 22, 18), aff, 1.0, 6.0, rng=3, info=info)
    fwd, inv = d
    assert fwd is d.forward and inv is d.inverse and d[1] is d.inverse and len(d) == 2
    assert info == d.diagnostics()
    assert d.min_jacobian == pytest.approx(float(ph.jacobian_determinant(fwd, aff).min()))
    z = ph.random_diffeomorphism((4, 4, 4), aff, 0.0)
    assert z.n_squarings == 0 and not z.forward.any() and z.min_jacobian == 1.0


def test_phantom_jacobian_is_the_qc_one():
    from synflow.align.qc import jacobian_determinant

    assert ph.jacobian_determinant is jacobian_determinant


def test_jacobian_of_linear_field():
    aff = np.diag([2.0, 3.0, 1.5, 1.0])
    x = ph.grid_world_points((10, 12, 9), aff)
    a = np.array([[0.1, 0.02, 0], [0, -0.05, 0.03], [0.01, 0, 0.2]])
    disp = (x @ a.T).astype(np.float32)
    np.testing.assert_allclose(ph.jacobian_determinant(disp, aff),
                               np.linalg.det(np.eye(3) + a), rtol=1e-5)


def test_random_affine_about_centre():
    c = np.array([0.0, -18.0, 18.0])
    a = ph.random_affine(3, max_rotation_deg=5, max_translation_mm=0, max_scale=0,
                         max_shear=0, center_mm=c)
    np.testing.assert_allclose(a[:3, :3] @ c + a[:3, 3], c, atol=1e-9)
    np.testing.assert_allclose(a[:3, :3] @ a[:3, :3].T, np.eye(3), atol=1e-12)
    with pytest.raises(ValueError, match="max_rotation_deg"):
        ph.random_affine(0, max_rotation_deg=-1)


# ------------------------------------------------------------------ registration case
def test_case_oracle(case: ph.RegistrationCase):
    c = case
    assert c.static.dtype == np.float32 and c.moving.dtype == np.float32
    assert c.true_displacement.shape == c.static.shape + (3,)
    # endpoint error of the truth is exactly 0; of doing nothing it is large
    e = c.endpoint_error(c.true_pull_points())
    assert e["mean"] == 0 and e["p95"] == 0
    assert c.endpoint_error(c.static_world_points)["mean"] > 3
    assert 1.5 < c.endpoint_error_of_affine(c.prealign)["mean"] < 4
    # warping moving (noise-free) with the true pull map reproduces static (noise-free)
    vox = ph.world_to_vox(c.true_pull_points(), c.moving_affine)
    warped = ndi.map_coordinates(c.moving_clean, vox, order=3, mode="nearest")
    m = c.brain_mask
    ref = c.static_clean[m].mean()
    err = np.abs(warped - c.static_clean)[m].mean() / ref
    err0 = np.abs(c.moving_clean - c.static_clean)[m].mean() / ref
    assert err < 0.04 and err < 0.15 * err0
    # label overlap through the truth
    lab = ndi.map_coordinates(c.moving_labels, vox, order=0, mode="nearest")
    d = ph.dice(lab, c.static_labels, labels=[1, 2, 3])
    assert d[1] > 0.65 and d[2] > 0.88 and d[3] > 0.88  # CSF is thin: nearest twice
    d0 = ph.dice(c.moving_labels, c.static_labels, labels=[2, 3])
    assert min(d0.values()) < 0.7
    # noise level ~ SNR 25 in WM, contrast CSF > GM > WM
    means = [c.static[c.static_labels == k].mean() for k in (1, 2, 3)]
    assert means[0] > means[1] > means[2]


def test_case_oracle_mapping_dipy(case: ph.RegistrationCase):
    pytest.importorskip("dipy")
    c = case
    m = oracle_mapping(c)
    e = c.endpoint_error_of_mapping(m, prealign=c.prealign)
    assert e["max"] < 1e-9
    assert c.endpoint_error_of_mapping(m)["max"] < 1e-6  # prealign read from the map
    with pytest.raises(ValueError, match="prealign"):
        c.endpoint_error_of_mapping(m, prealign=np.eye(4))
    warped = m.transform(c.moving_clean)
    b = c.brain_mask
    assert np.abs(warped - c.static_clean)[b].mean() / c.static_clean[b].mean() < 0.06


def test_case_other_moving_grid_deterministic():
    c1 = ph.make_registration_case(seed=5, moving_voxel_size=(2.5, 2.5, 3.0), affine=False,
                                   mean_displacement_mm=1.5)
    assert c1.moving.shape == (78, 93, 63)
    np.testing.assert_allclose(c1.prealign, np.eye(4))
    vox = ph.world_to_vox(c1.true_pull_points(), c1.moving_affine)
    warped = ndi.map_coordinates(c1.moving_clean, vox, order=1, mode="nearest")
    b = c1.brain_mask
    assert np.abs(warped - c1.static_clean)[b].mean() / c1.static_clean[b].mean() < 0.08
    c2 = ph.make_registration_case(seed=5, moving_voxel_size=(2.5, 2.5, 3.0), affine=False,
                                   mean_displacement_mm=1.5)
    np.testing.assert_array_equal(c1.moving, c2.moving)


def test_b0_like_noise_and_bias():
    t = ph.load_template_tissues(2.0)
    clean = ph.b0_like(t.csf, t.gm, t.wm, t.scalp, noise=0, bias=0)
    noisy = ph.b0_like(t.csf, t.gm, t.wm, t.scalp, rng=0, noise=0.04, bias=0,
                       grid2world=t.affine)
    wm = t.wm > 0.95
    sd = (noisy - clean)[wm].std()
    assert abs(clean[wm].mean() / sd - 25) < 4
    bias = ph.bias_field(t.shape, t.affine, 0.2, rng=0)
    assert np.exp(-0.2) - 1e-5 <= bias.min() and bias.max() <= np.exp(0.2) + 1e-5
    with pytest.raises(ValueError, match="grid2world"):
        ph.b0_like(t.csf, t.gm, t.wm, bias=0.1)


def test_dice():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    assert ph.dice(a, a) == 1.0
    assert ph.dice(a, ~a) == 0.0
    assert ph.dice(np.array([1, 2, 2]), np.array([1, 2, 0]), labels=2) == pytest.approx(2 / 3)


# ------------------------------------------------------------------ demo BIDS dataset
def test_demo_dataset_bids(tmp_path):
    bids = pytest.importorskip("bids")
    from synflow.data import demo

    root = demo.make_demo_dataset(tmp_path / "ds", n_participants=3, seed=0)
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["Name"] and desc["BIDSVersion"]
    layout = bids.BIDSLayout(str(root))
    files = layout.get(suffix="dwi", extension=[".nii.gz", ".nii"], return_type="filename")
    assert len(files) >= 4  # one participant has two series
    assert sorted(layout.get_subjects()) == ["01", "02", "03"]
    for f in files:
        bval = layout.get_bval(f)
        n = nib.load(f).shape[3]
        assert len(np.loadtxt(bval).ravel()) == n
        assert np.loadtxt(layout.get_bvec(f)).shape == (3, n)
        meta = layout.get_metadata(f)
        assert "PhaseEncodingDirection" in meta and "TotalReadoutTime" in meta
    # truth: pull points of the truth give 0 error; identity gives a large one
    sub = "01"
    truth = demo.load_truth(root / "sourcedata" / "truth", sub)
    e = demo.demo_registration_error(root / "sourcedata" / "truth", sub, truth.pull_points())
    assert e["mean"] < 1e-9
    ref = ph.load_template_tissues(2.0)
    e0 = demo.demo_registration_error(root / "sourcedata" / "truth", sub,
                                      ph.grid_world_points(ref.shape, ref.affine))
    assert e0["mean"] > 3
    # the native b0 pulled through the true map matches the template b0
    f = root / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    img = nib.load(f)
    vox = ph.world_to_vox(truth.pull_points(), img.affine)
    warped = ndi.map_coordinates(np.asarray(img.dataobj[..., 0], np.float32), vox, order=1)
    tpl = nib.load(str(get_template("b0"))).get_fdata()
    m = ref.brain_mask
    assert np.corrcoef(warped[m], tpl[m])[0, 1] > 0.9
    with pytest.raises(ValueError, match="run"):
        demo.load_truth(root / "sourcedata" / "truth", "02")
    assert demo.load_truth(root / "sourcedata" / "truth", "sub-02", run=2).affine.shape == (4, 4)


@pytest.mark.slow
@pytest.mark.needs_dipy
def test_case_with_real_dipy_syn(case: ph.RegistrationCase):
    """A real DIPY SyN run lands well below the affine-only error (conventions check)."""
    pytest.importorskip("dipy")
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    c = case
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=[20, 10, 5])
    m = sdr.optimize(c.static, c.moving, static_grid2world=c.static_affine,
                     moving_grid2world=c.moving_affine, prealign=c.prealign)
    e_aff = c.endpoint_error_of_affine(c.prealign)
    e_syn = c.endpoint_error_of_mapping(m, prealign=c.prealign)
    print(f"affine-only EPE {e_aff['mean']:.2f} mm, DIPY SyN EPE {e_syn['mean']:.2f} mm")
    assert e_syn["mean"] < 0.5 * e_aff["mean"]


def test_template_tissues_other_voxel_size():
    t = ph.load_template_tissues(3.0)
    assert t.shape == (65, 77, 63)
    np.testing.assert_allclose(np.diag(t.affine)[:3], [3, 3, 3])
    t2 = ph.load_template_tissues(2.0)
    # same field-of-view centre (world mm)
    c2 = t2.affine[:3, :3] @ ((np.array(t2.shape) - 1) / 2) + t2.affine[:3, 3]
    c3 = t.affine[:3, :3] @ ((np.array(t.shape) - 1) / 2) + t.affine[:3, 3]
    np.testing.assert_allclose(c2, c3, atol=1e-9)
    assert abs(t.brain_mask.sum() * 27 - t2.brain_mask.sum() * 8) < 0.03 * t2.brain_mask.sum() * 8
    assert (t.csf + t.gm + t.wm + t.scalp).max() <= 1 + 1e-5
