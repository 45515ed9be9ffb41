"""ITK/ANTs export of SyN mappings (synflow.io.itk), checked by applying the written files
with nitransforms (and antspyx when installed) and comparing with DiffeomorphicMap.transform.
"""

import os
import warnings
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from scipy.io import loadmat
from scipy.ndimage import map_coordinates

from synflow.io.itk import (
    bake_displacement,
    itk_transform_chain,
    write_itk_affine,
    write_itk_composite,
    write_itk_displacement,
    write_itk_transforms,
)

pytest.importorskip("dipy")
nt = pytest.importorskip("nitransforms")
import nitransforms.io.itk  # noqa: E402
import nitransforms.linear  # noqa: E402
import nitransforms.manip  # noqa: E402
import nitransforms.nonlinear  # noqa: E402
import nitransforms.resampling  # noqa: E402, F401
from _oblique import apply, oblique_case, rot, world  # noqa: E402

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# nitransforms warns when a chain loaded from an .h5 has no reference; we always pass one.
pytestmark = pytest.mark.filterwarnings("ignore:Reference space not set:UserWarning")


# ----------------------------------------------------------------------------- case


@pytest.fixture(scope="module")
def case():
    """SyN of two oblique volumes on different grids, with a non-trivial prealign P."""
    c = oblique_case()
    assert np.allclose(c["map"].prealign, np.linalg.inv(c["P"]))
    return c


@pytest.fixture(params=["dipy", "synflow"])
def mapping(request, case, tmp_path):
    """The DIPY map, and the same map as synflow's class (via a mapping-file round trip)."""
    if request.param == "dipy":
        return case["map"]
    from synflow.align._public import read_mapping, write_mapping

    write_mapping(case["map"], tmp_path / "map.nii.gz")
    return read_mapping(tmp_path / "map.nii.gz")


def _sample(data, affine, x):
    """DIPY-style trilinear sampling (zero padding) of ``data`` at world points ``x``."""
    ijk = apply(np.linalg.inv(affine), x)
    if data.ndim == 3:
        return map_coordinates(data, np.moveaxis(ijk, -1, 0), order=1, mode="grid-constant")
    return np.stack([_sample(data[..., c], affine, x) for c in range(3)], -1)


def _inside(affine, shape, x, margin=1.0):
    ijk = apply(np.linalg.inv(affine), x)
    return np.all((ijk >= margin) & (ijk <= np.array(shape) - 1 - margin), axis=-1)


def _interior(case, direction):
    """Output voxels whose whole pull chain stays >= 1 voxel inside every sampled grid
    (interpolation conventions at the border differ between DIPY, ITK and scipy)."""
    m, p, s_img, m_img = case["map"], case["P"], case["static"], case["moving"]
    if direction == "forward":  # out[x] = moving(P (x + b(x))), x on the static grid
        x = world(s_img.shape, s_img.affine)
        y = apply(p, x + _sample(m.get_forward_field(), m.disp_grid2world, x))
        return _inside(m_img.affine, m_img.shape, y)
    x = world(m_img.shape, m_img.affine)  # out[x] = static(z + f(z)), z = inv(P) x
    z = apply(np.linalg.inv(p), x)
    y = z + _sample(m.get_backward_field(), m.disp_grid2world, z)
    return _inside(s_img.affine, s_img.shape, z) & _inside(s_img.affine, s_img.shape, y)


def _expected(case, mapping, direction):
    if direction == "forward":
        return mapping.transform(case["moving"].get_fdata(dtype=np.float32)), case["moving"], \
            case["static"]
    return mapping.transform_inverse(case["static"].get_fdata(dtype=np.float32)), \
        case["static"], case["moving"]


def _load_separate(files):
    xfms = []
    for f in files:
        if str(f).endswith(".mat"):
            xfms.append(nt.linear.load(str(f), fmt="itk"))
        else:
            xfms.append(nt.nonlinear.load(str(f), fmt="itk"))
    return nt.manip.TransformChain(xfms)


# ------------------------------------------------------------------------- DIPY math
def test_dipy_pull_formulas(case):
    """The formulas the export relies on: transform = moving(P (x + b(x))), etc."""
    m, p = case["map"], case["P"]
    s_img, m_img = case["static"], case["moving"]
    x = world(s_img.shape, s_img.affine)
    y = apply(p, x + _sample(m.get_forward_field(), m.disp_grid2world, x))
    ref = _sample(m_img.get_fdata(dtype=np.float32), m_img.affine, y)
    assert np.abs(m.transform(m_img.get_fdata(dtype=np.float32)) - ref).max() < 1e-5
    x = world(m_img.shape, m_img.affine)
    z = apply(np.linalg.inv(p), x)
    y = z + _sample(m.get_backward_field(), m.disp_grid2world, z)
    ref = _sample(s_img.get_fdata(dtype=np.float32), s_img.affine, y)
    assert np.abs(m.transform_inverse(s_img.get_fdata(dtype=np.float32)) - ref).max() < 1e-5


# ---------------------------------------------------------------------------- affine
@pytest.mark.parametrize("ext", [".txt", ".tfm", ".mat"])
def test_affine_roundtrip_nitransforms(tmp_path, ext):
    mat = rot(0, 12) @ rot(2, -7)
    mat[:3, :3] *= [1.1, 0.9, 1.05]
    mat[:3, 3] = [4.5, -3.25, 10.0]
    fname = write_itk_affine(mat, tmp_path / f"aff{ext}")
    loaded = nt.linear.load(str(fname), fmt="itk")
    np.testing.assert_allclose(loaded.matrix, mat, atol=1e-12)
    if ext == ".mat":  # same bytes of parameters as nitransforms' own ITK writer
        nt.io.itk.ITKLinearTransform.from_ras(mat).to_filename(str(tmp_path / "nt.mat"))
        ours, theirs = loadmat(fname), loadmat(tmp_path / "nt.mat")
        np.testing.assert_allclose(ours["AffineTransform_double_3_3"],
                                   theirs["AffineTransform_double_3_3"], atol=1e-12)
        np.testing.assert_array_equal(ours["fixed"].ravel(), [0, 0, 0])
    else:
        lines = Path(fname).read_text().splitlines()
        assert lines[0] == "#Insight Transform File V1.0"
        assert lines[2] == "Transform: AffineTransform_double_3_3"
        params = np.array(lines[3].split(":")[1].split(), float)
        np.testing.assert_array_equal(params[:9].reshape(3, 3), (LPS @ mat @ LPS)[:3, :3])


def test_affine_bad_input(tmp_path):
    with pytest.raises(ValueError, match="matrix_ras"):
        write_itk_affine(np.eye(3), tmp_path / "a.mat")
    with pytest.raises(ValueError, match="fname"):
        write_itk_affine(np.eye(4), tmp_path / "a.h5")


# ---------------------------------------------------------------------- displacement
def test_displacement_nifti(tmp_path, case):
    rng = np.random.default_rng(0)
    aff = case["static"].affine
    field = rng.normal(size=(5, 6, 7, 3)).astype(np.float32)
    fname = write_itk_displacement(field, aff, tmp_path / "warp.nii.gz")
    img = nib.load(fname)
    assert img.shape == (5, 6, 7, 1, 3)
    assert img.get_data_dtype() == np.float32
    assert img.header.get_intent()[0] == "vector" and int(img.header["intent_code"]) == 1007
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    data = np.asanyarray(img.dataobj)[:, :, :, 0, :]
    np.testing.assert_array_equal(data, field * np.array([-1, -1, 1], np.float32))  # LPS
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nitransforms warns on a bad intent
        xfm = nt.nonlinear.load(str(fname), fmt="itk")
    np.testing.assert_allclose(xfm._deltas, field, atol=1e-6)  # back to RAS
    with pytest.raises(ValueError, match="field_mm_ras"):
        write_itk_displacement(field[..., :2], aff, tmp_path / "w.nii.gz")


# ------------------------------------------------------------------------- composite
def test_composite_layout(tmp_path, case):
    m = case["map"]
    fname = write_itk_composite(m, tmp_path / "xfm.h5", "forward")
    with h5py.File(fname, "r") as h5:
        grp = h5["TransformGroup"]
        assert sorted(grp) == ["0", "1", "2"]
        assert grp["0/TransformType"][0] == b"CompositeTransform_double_3_3"
        assert grp["1/TransformType"][0] == b"AffineTransform_double_3_3"
        assert grp["2/TransformType"][0] == b"DisplacementFieldTransform_float_3_3"
        np.testing.assert_allclose(grp["1/TransformParameters"][()][:9].reshape(3, 3),
                                   (LPS @ case["P"] @ LPS)[:3, :3], atol=1e-12)
        fixed = grp["2/TransformFixedParameters"][()]
        assert fixed.dtype == np.float64 and fixed.shape == (18,)
        np.testing.assert_array_equal(fixed[:3], m.disp_shape)
        assert grp["2/TransformParameters"].shape == (np.prod(m.disp_shape) * 3,)
        assert grp["2/TransformParameters"].dtype == np.float32
    # nitransforms' reader gives back the field (RAS) on the static grid
    field_img = nt.io.itk.ITKCompositeH5.from_filename(fname)[1]
    np.testing.assert_allclose(field_img.affine, m.disp_grid2world, atol=1e-9)
    np.testing.assert_array_equal(field_img.get_fdata(), m.get_forward_field())
    with pytest.raises(ValueError, match="direction"):
        write_itk_composite(m, tmp_path / "x.h5", "backward")
    with pytest.raises(ValueError, match="fname"):
        write_itk_composite(m, tmp_path / "x.nii.gz")


def test_chain_order(case):
    m, p = case["map"], case["P"]
    chain, ref, mov = itk_transform_chain(m, "forward")
    assert [c[0] for c in chain] == ["field", "affine"]
    np.testing.assert_allclose(chain[1][1], p, atol=1e-12)
    assert ref[0] == case["static"].shape and mov[0] == case["moving"].shape
    chain, ref, mov = itk_transform_chain(m, "inverse")
    assert [c[0] for c in chain] == ["affine", "field"]
    np.testing.assert_allclose(chain[0][1], np.linalg.inv(p), atol=1e-12)
    assert ref[0] == case["moving"].shape and mov[0] == case["static"].shape


def _flipped(m):
    """A DIPY map equal to ``m`` with ``is_inverse`` flipped (DIPY 1.12's ``inverse()``
    always sets ``is_inverse=True``, so it does not flip a SyN result)."""
    from dipy.align.imwarp import DiffeomorphicMap

    f = DiffeomorphicMap(3, m.disp_shape, disp_grid2world=m.disp_grid2world,
                         domain_shape=m.domain_shape, domain_grid2world=m.domain_grid2world,
                         codomain_shape=m.codomain_shape,
                         codomain_grid2world=m.codomain_grid2world, prealign=m.prealign)
    f.forward, f.backward, f.is_inverse = m.forward, m.backward, not m.is_inverse
    return f


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_flipped_map_nitransforms(tmp_path, case, direction):
    """is_inverse=False maps: 'forward' exports transform (= DIPY _warp_forward)."""
    flipped = _flipped(case["map"])
    other = "inverse" if direction == "forward" else "forward"
    expected, src, ref = _expected(case, case["map"], other)
    got = flipped.transform if direction == "forward" else flipped.transform_inverse
    np.testing.assert_array_equal(got(src.get_fdata(dtype=np.float32)), expected)
    fname = write_itk_composite(flipped, tmp_path / "xfm.h5", direction)
    chain = nt.manip.TransformChain.from_filename(str(fname), fmt="itk")
    out = np.asarray(nt.resampling.apply(chain, src, reference=ref, order=1).dataobj)
    assert np.abs(out - expected)[_interior(case, other)].max() < _TOL_NT[other]


# Forward: the field is sampled at its own grid nodes (exact in every tool).  Inverse: the
# field is sampled between nodes; nitransforms interpolates it with cubic B-splines where
# DIPY/ITK are trilinear (pull points differ by up to ~0.15 mm on this coarse field), hence
# the looser bound (image values ~[0, 1.4]); bake=True and ANTs are exact in both.
_TOL_NT = {"forward": 1e-5, "inverse": 1e-2}


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_composite_nitransforms(tmp_path, case, mapping, direction):
    expected, src, ref = _expected(case, mapping, direction)
    fname = write_itk_composite(mapping, tmp_path / "xfm.h5", direction)
    chain = nt.manip.TransformChain.from_filename(str(fname), fmt="itk")
    out = np.asarray(nt.resampling.apply(chain, src, reference=ref, order=1).dataobj)
    inside = _interior(case, direction)
    assert inside.mean() > 0.4
    assert np.abs(out - expected)[inside].max() < _TOL_NT[direction]


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_baked_composite_nitransforms(tmp_path, case, mapping, direction):
    expected, src, ref = _expected(case, mapping, direction)
    field, g2w = bake_displacement(mapping, direction)
    assert field.shape == ref.shape + (3,) and np.allclose(g2w, ref.affine)
    fname = write_itk_composite(mapping, tmp_path / "xfm.h5", direction, bake=True)
    chain = nt.manip.TransformChain.from_filename(str(fname), fmt="itk")
    assert len(chain) == 1
    out = np.asarray(nt.resampling.apply(chain, src, reference=ref, order=1).dataobj)
    assert np.abs(out - expected)[_interior(case, direction)].max() < 1e-5


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_separate_files_nitransforms(tmp_path, case, mapping, direction):
    expected, src, ref = _expected(case, mapping, direction)
    files = write_itk_transforms(mapping, tmp_path, direction)
    tag = "" if direction == "forward" else "Inverse"
    names = [f"{tag}Warp.nii.gz", f"{tag}Affine.mat"]
    assert [f.name for f in files] == (names if direction == "forward" else names[::-1])
    out = np.asarray(
        nt.resampling.apply(_load_separate(files), src, reference=ref, order=1).dataobj
    )
    inside = _interior(case, direction)
    assert np.abs(out - expected)[inside].max() < _TOL_NT[direction]
    # prefix form
    files = write_itk_transforms(mapping, tmp_path / "sub-01_", direction)
    assert all(f.name.startswith("sub-01_") and f.exists() for f in files)


def _ants():
    """antspyx, or a skip; with SYNFLOW_REQUIRE_ANTS=1 (set by .ci/run in its ANTs
    environment) a missing antspyx is a failure, so the check can never skip silently."""
    if os.environ.get("SYNFLOW_REQUIRE_ANTS") == "1":
        import ants

        return ants
    return pytest.importorskip("ants")


def _ants_apply_transforms(tmp_path, ref, src, transforms):
    """Run antsApplyTransforms (the command-line program, from antspyx's library) with
    ``-t FILE`` / ``-t [FILE,1]`` for each ``(FILE, invert)``; returns the output array."""
    _ants()
    from ants.internal import get_lib_fn

    nib.save(src, tmp_path / "src.nii.gz")
    nib.save(ref, tmp_path / "ref.nii.gz")
    out = tmp_path / "out.nii.gz"
    args = ["-d", "3", "-i", str(tmp_path / "src.nii.gz"), "-r", str(tmp_path / "ref.nii.gz"),
            "-o", str(out), "-n", "Linear", "--float", "1", "-v", "0"]
    for fname, invert in transforms:
        args += ["-t", f"[{fname},1]" if invert else str(fname)]
    assert get_lib_fn("antsApplyTransforms")(args) == 0, args
    return np.asarray(nib.load(out).dataobj)


@pytest.mark.parametrize("ext", [".txt", ".mat"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_ants_apply_affine(tmp_path, case, ext, direction):
    """ANTs applies the affine file (the App's ``desc-affine_xfm.txt``) as AffineMap does,
    also inverted (``whichtoinvert``), on the oblique, anisotropic grids of ``case``."""
    from synflow.align.imaffine import AffineMap

    s_img, m_img, p = case["static"], case["moving"], case["P"]
    amap = AffineMap(p, s_img.shape, s_img.affine, m_img.shape, m_img.affine)
    if direction == "forward":  # moving onto the static grid
        src, ref = m_img, s_img
        expected = amap.transform(m_img.get_fdata(dtype=np.float32))
    else:
        src, ref = s_img, m_img
        expected = amap.transform_inverse(s_img.get_fdata(dtype=np.float32))
    fname = write_itk_affine(p, tmp_path / f"affine{ext}")
    out = _ants_apply_transforms(tmp_path, ref, src, [(fname, direction == "inverse")])
    # compare away from the border, where ITK and DIPY pad differently
    x = world(ref.shape, ref.affine)
    y = apply(p if direction == "forward" else np.linalg.inv(p), x)
    inside = _inside(src.affine, src.shape, y)
    assert inside.mean() > 0.4
    assert np.abs(out - expected)[inside].max() < 1e-5


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_ants_apply_transforms(tmp_path, case, mapping, direction):
    """antsApplyTransforms applies the composite .h5 (plain and baked) and the separate
    Warp.nii.gz + Affine.mat files exactly as ``mapping.transform``/``transform_inverse``."""
    expected, src, ref = _expected(case, mapping, direction)
    inside = _interior(case, direction)
    h5 = write_itk_composite(mapping, tmp_path / "xfm.h5", direction)
    baked = write_itk_composite(mapping, tmp_path / "baked.h5", direction, bake=True)
    files = write_itk_transforms(mapping, tmp_path, direction)
    for tlist in ([h5], [baked], files):
        out = _ants_apply_transforms(tmp_path, ref, src, [(f, False) for f in tlist])
        assert np.abs(out - expected)[inside].max() < 1e-5  # measured <= 1.1e-6
