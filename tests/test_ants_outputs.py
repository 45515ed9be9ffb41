"""ANTs applies the BIDS App's own transform files as synflow does.

One small participant run, then ``antsApplyTransforms`` (the program, from antspyx's
library) with the derivative files exactly as a user would pass them:

* ``..._from-dwiref_to-REF_mode-image_xfm.h5`` on the native mean b0 gives the App's
  ``space-REF_desc-b0_dwiref`` image;
* the inverse ``..._from-REF_to-dwiref_mode-image_xfm.h5`` on the reference gives
  synflow's ``transform_inverse`` of it (read back from the DIPY-layout mapping);
* ``..._desc-affine_xfm.txt`` on the b0 gives the affine pre-alignment alone.

antspyx pins numpy < 2.4, so these run in the separate environment that ``.ci/run``
makes (``SYNFLOW_REQUIRE_ANTS=1`` there, so they cannot skip); elsewhere they skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synflow.cli._testing import CHEAP_CLI, make_small_bids, make_small_reference

if os.environ.get("SYNFLOW_REQUIRE_ANTS") == "1":
    import ants  # noqa: F401
else:
    pytest.importorskip("ants")
from ants.internal import get_lib_fn  # noqa: E402


def _apply(tmp: Path, ref: Path, src: Path, transforms: list[tuple[Path, bool]]) -> np.ndarray:
    out = tmp / f"ants_{len(list(tmp.glob('ants_*')))}.nii.gz"
    args = ["-d", "3", "-i", str(src), "-r", str(ref), "-o", str(out), "-n", "Linear",
            "--float", "1", "-v", "0"]
    for fname, invert in transforms:
        args += ["-t", f"[{fname},1]" if invert else str(fname)]
    assert get_lib_fn("antsApplyTransforms")(args) == 0, args
    return np.asarray(nib.load(out).dataobj, dtype=np.float32)


def _pulled_from_inside(warp, src_shape: tuple[int, ...], margin: int = 2) -> np.ndarray:
    """Output voxels whose pull point lies >= ``margin`` voxels inside the source grid.

    ``warp`` is the synflow resampling under test (e.g. ``mapping.transform``); at the edge
    of the field of view DIPY pads partially with zeros and ITK does not, so compare only
    where both interpolate real data.
    """
    inside = np.zeros(src_shape, dtype=np.float32)
    inside[tuple(slice(margin, s - margin) for s in src_shape)] = 1
    return warp(inside, interpolation="nearest") > 0.5


def _close(out: np.ndarray, expected: np.ndarray, where: np.ndarray) -> None:
    assert where.mean() > 0.3
    scale = float(np.abs(expected).max())
    assert np.abs(out - expected)[where].max() <= 1e-5 * scale  # float32 round-off


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    from synflow.cli.run import main

    root = tmp_path_factory.mktemp("ants_app")
    bids = make_small_bids(root / "bids", subjects=("01",), seed=5)
    ref = make_small_reference(root / "ref4mm.nii.gz")
    out = root / "out"
    code = main([str(bids), str(out), "participant", "-w", str(root / "work"), "--reference",
                 str(ref), "--reference-space", "Small", "--no-reports", *CHEAP_CLI])
    assert code == 0
    dwi = out / "sub-01" / "dwi"
    return {"dir": dwi, "ref": ref, "tmp": root}


def _one(dwi: Path, pattern: str) -> Path:
    hits = sorted(dwi.glob(pattern))
    assert len(hits) == 1, (pattern, [p.name for p in dwi.iterdir()])
    return hits[0]


def test_ants_forward_composite_matches_app_output(run):
    from synflow.align import read_mapping

    dwi = run["dir"]
    b0 = _one(dwi, "sub-01_desc-b0_dwiref.nii.gz")
    xfm = _one(dwi, "sub-01_from-dwiref_to-Small_mode-image_xfm.h5")
    app = np.asarray(nib.load(_one(dwi, "sub-01_space-Small_desc-b0_dwiref.nii.gz")).dataobj,
                     dtype=np.float32)
    mapping = read_mapping(_one(dwi, "*desc-dipy_xfm.nii.gz"))
    out = _apply(run["tmp"], run["ref"], b0, [(xfm, False)])
    _close(out, app, _pulled_from_inside(mapping.transform, nib.load(b0).shape))


def test_ants_inverse_composite_matches_synflow(run):
    from synflow.align import read_mapping

    dwi = run["dir"]
    b0 = _one(dwi, "sub-01_desc-b0_dwiref.nii.gz")
    inv = _one(dwi, "sub-01_from-Small_to-dwiref_mode-image_xfm.h5")
    mapping = read_mapping(_one(dwi, "*desc-dipy_xfm.nii.gz"))
    ref = np.asarray(nib.load(run["ref"]).dataobj, dtype=np.float32)
    expected = mapping.transform_inverse(ref)
    out = _apply(run["tmp"], b0, run["ref"], [(inv, False)])
    assert out.shape == expected.shape
    _close(out, expected, _pulled_from_inside(mapping.transform_inverse, ref.shape))


def test_ants_affine_txt_matches_prealign(run):
    from synflow.align import read_mapping
    from synflow.align.imaffine import AffineMap

    dwi = run["dir"]
    b0 = _one(dwi, "sub-01_desc-b0_dwiref.nii.gz")
    txt = _one(dwi, "sub-01_from-dwiref_to-Small_mode-image_desc-affine_xfm.txt")
    ref_img, b0_img = nib.load(run["ref"]), nib.load(b0)
    mapping = read_mapping(_one(dwi, "*desc-dipy_xfm.nii.gz"))
    # the App's affine maps reference-world points to b0-world points (DIPY's prealign);
    # a SyN result stores its inverse (is_inverse=True, as DIPY)
    assert mapping.is_inverse
    amap = AffineMap(np.linalg.inv(mapping.prealign), ref_img.shape, ref_img.affine,
                     b0_img.shape, b0_img.affine)
    b0_data = np.asarray(b0_img.dataobj, dtype=np.float32)
    ref_data = np.asarray(ref_img.dataobj, dtype=np.float32)
    out = _apply(run["tmp"], run["ref"], b0, [(txt, False)])
    _close(out, amap.transform(b0_data), _pulled_from_inside(amap.transform, b0_img.shape))
    out = _apply(run["tmp"], b0, run["ref"], [(txt, True)])
    _close(out, amap.transform_inverse(ref_data),
           _pulled_from_inside(amap.transform_inverse, ref_img.shape))
