"""Build synflow's bundled 2 mm template from nilearn's copy of MNI152NLin2009aSym.

Run once (needs ``nilearn``, the ``template`` extra); the outputs are committed::

    python -m synflow.data.make_template

Inputs (inside nilearn's wheel, ``nilearn/datasets/data``):
``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz`` -- ICBM 2009a nonlinear
symmetric, 1 mm, 197x233x189, uint8, already skull-stripped (T1 is zero outside the brain).

Outputs (in ``synflow/data``), all on the same 2 mm grid (98x116x94, RAS, MNI world):

* ``tpl-MNI152NLin2009aSym_res-02_label-{GM,WM,CSF}_probseg.nii.gz`` -- tissue
  probabilities, uint8 with ``scl_slope = 1/255`` (so they load as floats in [0, 1]);
  GM + WM + CSF <= 1 voxel-wise. CSF = inside-brain fraction - GM - WM.
* ``tpl-MNI152NLin2009aSym_res-02_desc-brain_mask.nii.gz`` -- binary (inside-brain
  fraction >= 0.5, including ventricles and sulcal/peripheral CSF).
* ``tpl-MNI152NLin2009aSym_res-02_desc-head_mask.nii.gz`` -- binary synthetic head
  (brain outline smoothed and dilated by ~13 mm: CSF rim + skull + scalp). The source
  template is skull-stripped, so the head is synthetic: use it for b0-like contrast only.
* ``tpl-MNI152NLin2009aSym_res-02_desc-b0_dwiref.nii.gz`` -- b0/T2-like contrast,
  uint8 with ``scl_slope = 1/255`` (CSF 1.0 > GM 0.42 > WM 0.30 > scalp 0.12 > skull/background 0),
  lightly smoothed.

The 2 mm grid is a 2x2x2 block average of the 1 mm grid: 2 mm voxel j covers 1 mm voxels
2j and 2j+1, so its centre is at 1 mm voxel coordinate 2j + 0.5 and the affine is
``A_2mm = A_1mm @ [[2,0,0,0.5],[0,2,0,0.5],[0,0,2,0.5],[0,0,0,1]]``; world (MNI) coordinates are
preserved exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

SPACE = "MNI152NLin2009aSym"
PREFIX = f"tpl-{SPACE}_res-02"
#: b0-like contrast (relative to CSF = 1). Typical b0 (TE ~ 60-90 ms) ratios.
B0_CONTRAST = {"CSF": 1.0, "GM": 0.42, "WM": 0.30, "scalp": 0.12}
#: distances (mm) from the brain outline: skull shell (dark) then scalp (dim) up to the head edge.
SKULL_MM = 6.0
HEAD_MM = 13.0


def _nilearn_dir() -> Path:
    import nilearn

    return Path(os.path.dirname(nilearn.__file__)) / "datasets" / "data"


def _load(kind: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(_nilearn_dir() / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz")
    return np.asarray(img.dataobj, dtype=np.float32) / 255.0, img.affine


def _block2(a: np.ndarray) -> np.ndarray:
    """2x2x2 block average (crops a trailing odd voxel)."""
    n = [s // 2 for s in a.shape]
    a = a[: 2 * n[0], : 2 * n[1], : 2 * n[2]].astype(np.float32)
    return a.reshape(n[0], 2, n[1], 2, n[2], 2).mean(axis=(1, 3, 5))


def _to_u8(p: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)


def _save_u8(arr: np.ndarray, affine: np.ndarray, path: Path, prob: bool) -> None:
    img = nib.Nifti1Image(arr.astype(np.uint8), affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=4)  # 4 = MNI152
    img.header.set_sform(affine, code=4)
    if prob:
        img.header.set_slope_inter(1.0 / 255.0, 0.0)
    else:
        img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, str(path))


def build(out_dir: Path | None = None) -> dict[str, Path]:
    """Write the bundled template files into ``out_dir`` (default: this package folder)."""
    out_dir = Path(out_dir) if out_dir is not None else Path(__file__).parent
    t1, aff1 = _load("t1")
    gm, _ = _load("gm")
    wm, _ = _load("wm")

    # --- inside-brain mask at 1 mm: the T1 is skull-stripped; fill ventricles / holes.
    brain1 = ndi.binary_fill_holes((t1 > 0) | ((gm + wm) > 0.5))
    # --- synthetic head: smooth the brain outline (sigma 4 mm), dilate by distance.
    hull = ndi.gaussian_filter(brain1.astype(np.float32), 4.0) > 0.2
    hull = ndi.binary_fill_holes(hull)
    dist = ndi.distance_transform_edt(~hull).astype(np.float32)  # mm (1 mm voxels)
    head1 = hull | (dist <= HEAD_MM)
    scalp1 = (dist > SKULL_MM) & (dist <= HEAD_MM)

    # --- 2 mm block average (partial volumes).
    to2 = np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1.0]])
    aff2 = aff1 @ to2
    gm2 = _to_u8(_block2(gm)).astype(np.int32)
    wm2 = _to_u8(_block2(wm)).astype(np.int32)
    wm2 = np.minimum(wm2, 255 - gm2)
    brainf = _block2(brain1.astype(np.float32))
    brain2 = _to_u8(brainf).astype(np.int32)
    csf2 = np.clip(brain2 - gm2 - wm2, 0, 255)
    scalp2 = _block2(scalp1.astype(np.float32))
    head2 = _block2(head1.astype(np.float32)) >= 0.5
    mask2 = brainf >= 0.5

    c = B0_CONTRAST
    b0 = (
        c["CSF"] * csf2 / 255.0
        + c["GM"] * gm2 / 255.0
        + c["WM"] * wm2 / 255.0
        + c["scalp"] * scalp2
    ).astype(np.float32)
    b0 = ndi.gaussian_filter(b0, 0.5)
    b0[~ndi.binary_dilation(head2, iterations=1)] = 0.0
    b0 = b0 / b0.max()

    out = {
        "GM": out_dir / f"{PREFIX}_label-GM_probseg.nii.gz",
        "WM": out_dir / f"{PREFIX}_label-WM_probseg.nii.gz",
        "CSF": out_dir / f"{PREFIX}_label-CSF_probseg.nii.gz",
        "brainmask": out_dir / f"{PREFIX}_desc-brain_mask.nii.gz",
        "headmask": out_dir / f"{PREFIX}_desc-head_mask.nii.gz",
        "b0": out_dir / f"{PREFIX}_desc-b0_dwiref.nii.gz",
    }
    _save_u8(gm2, aff2, out["GM"], prob=True)
    _save_u8(wm2, aff2, out["WM"], prob=True)
    _save_u8(csf2, aff2, out["CSF"], prob=True)
    _save_u8(mask2, aff2, out["brainmask"], prob=False)
    _save_u8(head2, aff2, out["headmask"], prob=False)
    _save_u8(_to_u8(b0), aff2, out["b0"], prob=True)
    return out


if __name__ == "__main__":
    for k, p in build().items():
        print(f"{k:10s} {p.name}  {p.stat().st_size / 1024:.0f} KiB")
