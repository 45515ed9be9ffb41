"""The bundled example files: DIPY-tutorial-like b0 pair and the small DWI series.

* :class:`TutorialPair`, :func:`make_tutorial_pair` -- two b0 volumes of different subjects;
* :func:`save_int16` -- write a float image as an int16 NIfTI (mm units, qform = sform);
* :func:`write_bundled_examples` -- regenerate the files of ``get_fnames("b0_pair")`` and
  ``get_fnames("small_dwi")`` (``python -m synflow.data.phantom``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from synflow.data import DATA_DIR
from synflow.data.phantom.contrast import B0_CONTRAST, add_rician_noise, bias_field
from synflow.data.phantom.deformations import random_affine
from synflow.data.phantom.dwi import make_small_dwi
from synflow.data.phantom.grid import grid_world_points
from synflow.data.phantom.subjects import SyntheticSubject, make_subject, native_grid

__all__ = ["TutorialPair", "make_tutorial_pair", "save_int16", "write_bundled_examples"]

@dataclass
class TutorialPair:
    """Two b0 volumes of different synthetic subjects, like DIPY's SyN tutorial data.

    ``prealign`` (what the tutorial passes to ``optimize``) = ``true_affine`` with a small
    error; ``true_affine = moving.to_native @ inv(static.to_native)`` (static-world ->
    moving-world, affine parts only). The exact answer: static voxel at world ``x`` shows the
    anatomy at moving world ``true_pull_points()[voxel]``.
    """

    static: np.ndarray
    static_affine: np.ndarray
    moving: np.ndarray
    moving_affine: np.ndarray
    prealign: np.ndarray
    true_affine: np.ndarray
    static_subject: SyntheticSubject
    moving_subject: SyntheticSubject

    def true_pull_points(self) -> np.ndarray:
        """Moving-world mm (float64, static grid + (3,)) showing each static voxel's anatomy."""
        x = grid_world_points(self.static.shape, self.static_affine)
        return self.moving_subject.native_point_of(self.static_subject.template_point_of(x))

    def save(self, out_dir: str | Path) -> tuple[Path, Path, Path]:
        """Write ``tutorial_static_b0.nii.gz``, ``tutorial_moving_b0.nii.gz`` (int16) and
        ``tutorial_prealign.txt`` (4x4, static-world -> moving-world) into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = (out / "tutorial_static_b0.nii.gz", out / "tutorial_moving_b0.nii.gz",
                 out / "tutorial_prealign.txt")
        for arr, aff, pth in ((self.static, self.static_affine, paths[0]),
                              (self.moving, self.moving_affine, paths[1])):
            save_int16(arr, aff, pth)
        np.savetxt(paths[2], self.prealign, fmt="%.8f",
                   header="prealign: static-world -> moving-world (RAS mm), DIPY convention")
        return paths


def save_int16(arr: np.ndarray, aff: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(np.clip(np.rint(arr), 0, 32767).astype(np.int16), aff)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=1)
    nib.save(img, str(path))


def make_tutorial_pair(seed: int = 2026) -> TutorialPair:
    """The bundled tutorial pair (``get_fnames("b0_pair")``), regenerated deterministically.

    Static: subject A, 2 mm isotropic, 81x106x76 (like Stanford HARDI's b0), head with skull.
    Moving: subject B (another deformation, ~2.5 mm mean), 2.5 x 2.5 x 3 mm, 80x96x60,
    rotated up to ~10 degrees and shifted ~10 mm. Rician noise (SNR 25 in WM), bias fields.
    ``prealign`` = true affine composed with a 1 degree / 1.5 mm error.
    """
    rng = np.random.default_rng(seed)
    subj_s = make_subject(rng, 2.5, max_rotation_deg=3.0, max_translation_mm=4.0,
                          native_origin_mm=(0.0, 17.0, -10.0))
    subj_m = make_subject(rng, 2.5, max_rotation_deg=10.0, max_translation_mm=10.0,
                          native_origin_mm=(2.0, 10.0, 0.0))
    s_shape, m_shape = (81, 106, 76), (80, 96, 60)
    s_aff = native_grid(subj_s, 2.0, s_shape, offset_mm=(0.0, -4.0, 8.0))
    m_aff = native_grid(subj_m, (2.5, 2.5, 3.0), m_shape)
    wm_signal = 1000.0 * B0_CONTRAST["WM"]
    imgs = []
    for subj, shp, aff in ((subj_s, s_shape, s_aff), (subj_m, m_shape, m_aff)):
        clean = subj.b0_clean_on(shp, aff)
        img = clean * bias_field(shp, aff, 0.2, rng)
        imgs.append(add_rician_noise(img, 0.04 * wm_signal, rng))
    true_aff = subj_m.to_native @ np.linalg.inv(subj_s.to_native)
    err = random_affine(rng, 1.0, 1.5, 0.0, 0.0, center_mm=s_aff[:3, :3] @ (
        (np.array(s_shape) - 1) / 2) + s_aff[:3, 3])
    prealign = true_aff @ err
    return TutorialPair(static=imgs[0], static_affine=s_aff, moving=imgs[1],
                        moving_affine=m_aff, prealign=prealign, true_affine=true_aff,
                        static_subject=subj_s, moving_subject=subj_m)


def write_bundled_examples(out_dir: str | Path | None = None) -> dict[str, Path]:
    """(Re)write the bundled example files (tutorial pair, small DWI) into ``out_dir``
    (default: the ``synflow/data`` folder). Deterministic. Run: ``python -m
    synflow.data.phantom``."""
    out = Path(out_dir) if out_dir is not None else DATA_DIR
    st, mv, pre = make_tutorial_pair().save(out)
    data, aff, bvals, bvecs = make_small_dwi()
    dwi = out / "small_dwi.nii.gz"
    save_int16(data, aff, dwi)
    bval = out / "small_dwi.bval"
    bvec = out / "small_dwi.bvec"
    np.savetxt(bval, bvals[None], fmt="%d")
    np.savetxt(bvec, bvecs.T, fmt="%.6f")
    return {"tutorial_static": st, "tutorial_moving": mv, "tutorial_prealign": pre,
            "small_dwi": dwi, "small_dwi_bval": bval, "small_dwi_bvec": bvec}

