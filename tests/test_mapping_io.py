"""write_mapping / read_mapping: DIPY-compatible layout plus self-describing metadata."""

import json

import nibabel as nib
import numpy as np
import pytest

from synflow.align._public import read_mapping, write_mapping

pytest.importorskip("dipy")
from _oblique import oblique_case  # noqa: E402


@pytest.fixture(scope="module")
def case():
    """SyN between oblique volumes on different grids, with a non-trivial prealign P."""
    return oblique_case()


@pytest.fixture(scope="module")
def synflow_map_class():
    try:
        from synflow.align.imwarp import DiffeomorphicMap
    except ImportError as err:
        pytest.skip(f"synflow.align.imwarp not available: {err}")
    return DiffeomorphicMap


@pytest.fixture(scope="module")
def sf_map(case, synflow_map_class):
    """The SyN result as synflow's DiffeomorphicMap (same fields, grids and prealign)."""
    return _copy(case["map"], synflow_map_class)


def _copy(m, cls, **overrides):
    attrs = {k: getattr(m, k) for k in ("disp_grid2world", "domain_shape", "domain_grid2world",
                                        "codomain_shape", "codomain_grid2world", "prealign")}
    attrs.update(overrides)
    new = cls(3, m.disp_shape, **attrs)
    new.forward, new.backward, new.is_inverse = m.forward, m.backward, m.is_inverse
    return new


def _warps(m, case):
    s = case["static"].get_fdata(dtype=np.float32)
    mv = case["moving"].get_fdata(dtype=np.float32)
    return m.transform(mv), m.transform_inverse(s)


def _assert_same_warps(a, b, case):
    for wa, wb in zip(_warps(a, case), _warps(b, case), strict=True):
        np.testing.assert_array_equal(wa, wb)


GRID_ATTRS = ("disp_grid2world", "domain_grid2world", "codomain_grid2world", "prealign")


# ------------------------------------------------------------------ synflow round trip
def test_roundtrip_filename_only(tmp_path, case, sf_map, synflow_map_class):
    m = sf_map
    fname = tmp_path / "map.nii.gz"
    write_mapping(m, fname)
    r = read_mapping(fname)
    assert isinstance(r, synflow_map_class)
    assert r.is_inverse is True
    for attr in ("disp_shape", "domain_shape", "codomain_shape") + GRID_ATTRS:
        np.testing.assert_array_equal(getattr(r, attr), getattr(m, attr), err_msg=attr)
    for attr in ("forward", "backward"):
        assert getattr(r, attr).dtype == np.float32
        np.testing.assert_array_equal(getattr(r, attr), getattr(m, attr))
    _assert_same_warps(r, m, case)  # bit-identical, both directions


def test_roundtrip_accepts_path_str_and_image(tmp_path, case, sf_map):
    m = sf_map
    fname = tmp_path / "map.nii"
    write_mapping(m, str(fname))
    for disp in (str(fname), fname, nib.load(fname)):  # DIPY crashes on an image
        _assert_same_warps(read_mapping(disp), m, case)


def test_roundtrip_is_inverse_false_and_no_prealign(tmp_path, case, sf_map, synflow_map_class):
    """DIPY's read_mapping forces is_inverse=True; synflow restores what was written."""
    f = _copy(sf_map, synflow_map_class, prealign=None)
    f.is_inverse = False
    write_mapping(f, tmp_path / "flip.nii.gz")
    r = read_mapping(tmp_path / "flip.nii.gz")
    assert r.is_inverse is False and r.prealign is None
    _assert_same_warps(r, f, case)


def test_roundtrip_disp_grid_differs_from_codomain(tmp_path, case, synflow_map_class):
    """DIPY's file affine only records the codomain grid; the metadata keeps the disp grid."""
    rng = np.random.default_rng(1)
    s_aff, m_aff = case["static"].affine, case["moving"].affine
    disp_aff = s_aff @ np.diag([2.0, 2.0, 2.0, 1.0])  # coarser grid, same origin
    disp_aff[:3, 3] += [1.0, -0.5, 0.25]
    m = synflow_map_class(3, (16, 15, 14), disp_grid2world=disp_aff,
                          domain_shape=case["moving"].shape, domain_grid2world=m_aff,
                          codomain_shape=case["static"].shape, codomain_grid2world=s_aff,
                          prealign=np.linalg.inv(case["P"]))
    m.forward = rng.normal(scale=0.5, size=(16, 15, 14, 3)).astype(np.float32)
    m.backward = rng.normal(scale=0.5, size=(16, 15, 14, 3)).astype(np.float32)
    m.is_inverse = True
    write_mapping(m, tmp_path / "m.nii.gz")
    r = read_mapping(tmp_path / "m.nii.gz")
    np.testing.assert_array_equal(r.disp_grid2world, disp_aff)
    _assert_same_warps(r, m, case)


def test_explicit_arguments_checked(tmp_path, case, sf_map):
    m, p = sf_map, case["P"]
    fname = tmp_path / "map.nii.gz"
    write_mapping(m, fname)
    nib.save(case["moving"], tmp_path / "moving.nii.gz")
    # DIPY-style call with agreeing arguments (images or paths): same map
    r = read_mapping(fname, tmp_path / "moving.nii.gz", case["static"], prealign=np.linalg.inv(p))
    _assert_same_warps(r, m, case)
    with pytest.raises(ValueError, match="domain_img"):  # static passed as moving
        read_mapping(fname, case["static"], case["static"])
    with pytest.raises(ValueError, match="codomain_img"):
        read_mapping(fname, codomain_img=nib.Nifti1Image(case["static"].get_fdata(),
                                                          case["moving"].affine))
    # the prealign trap: DIPY wants the map's .prealign = inv(P), not P
    with pytest.raises(ValueError, match="INVERSE"):
        read_mapping(fname, case["moving"], case["static"], prealign=p)
    with pytest.raises(FileNotFoundError, match="domain_img"):
        read_mapping(fname, tmp_path / "nope.nii.gz")


def test_metadata_content(tmp_path, case):
    m = case["map"]
    fname = tmp_path / "map.nii.gz"
    write_mapping(m, fname)
    img = nib.load(fname)
    assert img.shape == tuple(m.disp_shape) + (3, 2)
    assert img.get_data_dtype() == np.float32
    # DIPY's convention: the NIfTI affine is the INVERSE of the static grid2world
    np.testing.assert_allclose(img.affine, m.codomain_world2grid, rtol=1e-6, atol=1e-6)
    (ext,) = [e for e in img.header.extensions if e.get_code() == 6]
    meta = json.loads(ext.get_content().decode().rstrip("\x00"))["synflow_mapping"]
    assert meta["is_inverse"] is True and "synflow_version" in meta
    np.testing.assert_array_equal(meta["prealign"], m.prealign)  # float64, exact
    np.testing.assert_array_equal(meta["codomain_grid2world"], m.codomain_grid2world)


# ----------------------------------------------------------------------- DIPY interop
def test_synflow_file_read_by_dipy(tmp_path, case):
    from dipy.align import read_mapping as dipy_read
    from dipy.align import write_mapping as dipy_write

    m, p = case["map"], case["P"]
    ours, theirs = tmp_path / "ours.nii.gz", tmp_path / "dipy.nii.gz"
    write_mapping(m, ours)
    dipy_write(m, str(theirs))
    a, b = nib.load(ours), nib.load(theirs)
    np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())  # same layout and values
    np.testing.assert_array_equal(a.affine, b.affine)  # same (inverted) affine
    nib.save(case["moving"], tmp_path / "moving.nii.gz")
    nib.save(case["static"], tmp_path / "static.nii.gz")
    args = (str(tmp_path / "moving.nii.gz"), str(tmp_path / "static.nii.gz"))
    from_ours = dipy_read(str(ours), *args, prealign=np.linalg.inv(p))
    from_theirs = dipy_read(str(theirs), *args, prealign=np.linalg.inv(p))
    _assert_same_warps(from_ours, from_theirs, case)  # DIPY ignores the extension
    # DIPY's round trip is exact for SyN output when given inv(P) ...
    for wa, wb in zip(_warps(from_ours, case), _warps(m, case), strict=True):
        np.testing.assert_allclose(wa, wb, atol=1e-5)
    # ... and silently wrong when given P (the trap synflow's reader catches)
    trap = dipy_read(str(ours), *args, prealign=p)
    assert np.abs(_warps(trap, case)[0] - _warps(m, case)[0]).max() > 0.05


def test_dipy_file_read_by_synflow(tmp_path, case, synflow_map_class):
    from dipy.align import read_mapping as dipy_read
    from dipy.align import write_mapping as dipy_write

    m, p = case["map"], case["P"]
    fname = tmp_path / "dipy.nii.gz"
    dipy_write(m, str(fname))
    with pytest.raises(ValueError, match="domain_img"):
        read_mapping(fname)  # no metadata: DIPY's explicit arguments are required
    nib.save(case["moving"], tmp_path / "moving.nii.gz")
    nib.save(case["static"], tmp_path / "static.nii.gz")
    args = (tmp_path / "moving.nii.gz", tmp_path / "static.nii.gz")
    r = read_mapping(fname, *args, prealign=np.linalg.inv(p))
    d = dipy_read(str(fname), *map(str, args), prealign=np.linalg.inv(p))
    assert isinstance(r, synflow_map_class) and r.is_inverse is True
    np.testing.assert_array_equal(r.disp_grid2world, d.disp_grid2world)
    for wa, wb in zip(_warps(r, case), _warps(d, case), strict=True):
        np.testing.assert_allclose(wa, wb, atol=1e-5)  # synflow vs DIPY engine
    # DIPY's meaning is kept, trap included: P instead of inv(P) gives a different warp
    trap = read_mapping(fname, *args, prealign=p)
    assert np.abs(_warps(trap, case)[0] - _warps(r, case)[0]).max() > 0.05


# ------------------------------------------------------------------------- bad input
def test_bad_input(tmp_path, case, sf_map):
    m = sf_map
    with pytest.raises(FileNotFoundError, match="disp"):
        read_mapping(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), bad)
    with pytest.raises(ValueError, match=r"\(X, Y, Z, 3, 2\)"):
        read_mapping(bad, case["moving"], case["static"])
    with pytest.raises(ValueError, match="disp"):
        read_mapping(np.zeros((4, 4, 4, 3, 2)))
    with pytest.raises(ValueError, match="fname"):
        write_mapping(m, tmp_path / "map.h5")

    class Empty:
        disp_shape = (4, 4, 4)
        forward = backward = None

    with pytest.raises(ValueError, match="mapping.forward"):
        write_mapping(Empty(), tmp_path / "e.nii.gz")


def _as_4d(img, n=3):
    data = np.stack([img.get_fdata(dtype=np.float32) * (1 + k) for k in range(n)], -1)
    return nib.Nifti1Image(data, img.affine)


def test_images_in_tutorial_order_recognised_by_grid(tmp_path, case, sf_map):
    """DIPY's 3-D tutorial calls read_mapping(f, static_4d_series, moving_b0)."""
    m = sf_map
    fname = tmp_path / "map.nii.gz"
    write_mapping(m, fname)
    nib.save(_as_4d(case["static"]), tmp_path / "static_4d.nii.gz")
    nib.save(case["moving"], tmp_path / "moving.nii.gz")
    with pytest.warns(UserWarning, match="order") as record:
        r = read_mapping(fname, tmp_path / "static_4d.nii.gz", tmp_path / "moving.nii.gz")
    assert sum(issubclass(w.category, UserWarning) for w in record) == 1
    _assert_same_warps(r, m, case)
    # documented order, 4-D moving: no warning, same map
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r2 = read_mapping(fname, _as_4d(case["moving"]), case["static"])
    _assert_same_warps(r2, m, case)


def test_images_on_neither_grid_name_both(tmp_path, case, sf_map):
    fname = tmp_path / "map.nii.gz"
    write_mapping(sf_map, fname)
    shifted = case["moving"].affine.copy()
    shifted[:3, 3] += 5.0
    bad = nib.Nifti1Image(case["moving"].get_fdata(), shifted)
    with pytest.raises(ValueError, match="(?s)domain.*moving.*codomain.*static") as err:
        read_mapping(fname, bad, case["static"])
    assert str(tuple(case["moving"].shape)) in str(err.value)
    assert str(tuple(case["static"].shape)) in str(err.value)
