"""The bundled template's tissue maps as the phantom's anatomy.

* :class:`TemplateTissues`, :func:`load_template_tissues` -- CSF/GM/WM/scalp probabilities and
  brain/head masks of the bundled 2 mm MNI152NLin2009aSym-derived template (or resampled);
* :func:`tissue_labels` -- hard labels (0 background, 1 CSF, 2 GM, 3 WM), see :data:`TISSUE_LABELS`;
* :func:`brain_centre` -- centre of mass of the brain mask (world mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from synflow.data import get_template
from synflow.data.phantom.grid import sample_image, voxel_sizes

__all__ = ["TISSUE_LABELS", "TemplateTissues", "load_template_tissues", "tissue_labels",
           "brain_centre"]

#: Label values of ``static_labels`` / ``moving_labels``.
TISSUE_LABELS: dict[str, int] = {"background": 0, "CSF": 1, "GM": 2, "WM": 3}


#: distance (mm) from the brain outline beyond which the head is scalp (closer: dark skull).
_SKULL_MM = 6.0



@dataclass
class TemplateTissues:
    """Template tissue maps on one grid (float32 probabilities in [0, 1], bool masks).

    ``affine`` maps voxel -> MNI152NLin2009aSym RAS mm.
    """

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    scalp: np.ndarray
    brain_mask: np.ndarray
    head_mask: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.csf.shape  # type: ignore[return-value]


_TISSUE_CACHE: dict[float, TemplateTissues] = {}


def _load_f32(kind: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(get_template(kind)))
    return np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32), img.affine


def load_template_tissues(voxel_size: float = 2.0) -> TemplateTissues:
    """Load the bundled template tissue maps, optionally resampled to ``voxel_size`` mm.

    At 2 mm (default) these are the bundled files (98x116x94). Other voxel sizes resample
    the 2 mm maps smoothly (cubic B-spline, clipped to [0, 1]) on an isotropic grid of
    exactly ``voxel_size`` centred on the same field of view, e.g. 1 mm -> 196x232x188
    (the original 1 mm MNI grid, origin (-98, -134, -72)), 3 mm -> 65x77x63. The scalp map
    is derived from the head and brain masks (head voxels farther than 6 mm from the
    smoothed brain outline), partial-volumed.
    Results are cached (treat the arrays as read-only).
    """
    voxel_size = float(voxel_size)
    if not np.isfinite(voxel_size) or not 0.5 <= voxel_size <= 4.0:
        raise ValueError(f"voxel_size must be in [0.5, 4] mm, got {voxel_size}")
    if voxel_size in _TISSUE_CACHE:
        return _TISSUE_CACHE[voxel_size]
    csf, aff = _load_f32("CSF")
    gm, _ = _load_f32("GM")
    wm, _ = _load_f32("WM")
    brain = _load_f32("brainmask")[0] > 0.5
    head = _load_f32("headmask")[0] > 0.5
    hull = ndi.binary_fill_holes(ndi.gaussian_filter(brain.astype(np.float32), 2.0) > 0.2)
    dist = ndi.distance_transform_edt(~hull, sampling=voxel_sizes(aff))
    scalp = ndi.gaussian_filter((head & (dist > _SKULL_MM)).astype(np.float32), 0.5)
    scalp = np.minimum(scalp, 1.0 - (csf + gm + wm)).clip(0, 1).astype(np.float32)
    if voxel_size != 2.0:
        vs0 = voxel_sizes(aff)
        shape0 = np.array(csf.shape)
        new_shape = tuple(int(s) for s in np.round(shape0 * vs0 / voxel_size))
        # exact voxel size; new voxel k sits at old voxel coordinate f * k + o, grid centred
        # on the template field of view (1 mm: 196x232x188, the original 1 mm MNI grid)
        f = voxel_size / vs0
        o = (shape0 - 1) / 2.0 - f * (np.array(new_shape) - 1) / 2.0
        scale = np.diag(list(f) + [1.0])
        scale[:3, 3] = o
        new_aff = aff @ scale
        vox = np.indices(new_shape, dtype=np.float32)
        vox = vox * f.reshape(3, 1, 1, 1).astype(np.float32) + o.reshape(3, 1, 1, 1).astype(
            np.float32)

        def rs(a: np.ndarray, order: int) -> np.ndarray:
            return sample_image(a, vox, order=order, mode="nearest").clip(0, 1)

        csf, gm, wm, scalp = (rs(a, 3) for a in (csf, gm, wm, scalp))
        tot = csf + gm + wm + scalp
        over = tot > 1
        if over.any():
            for a in (csf, gm, wm, scalp):
                a[over] /= tot[over]
        brain = rs(brain.astype(np.float32), 1) >= 0.5
        head = rs(head.astype(np.float32), 1) >= 0.5
        aff = new_aff
    out = TemplateTissues(csf=csf, gm=gm, wm=wm, scalp=scalp, brain_mask=brain,
                          head_mask=head, affine=np.asarray(aff, dtype=np.float64))
    _TISSUE_CACHE[voxel_size] = out
    return out


def tissue_labels(csf: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Hard labels = argmax of (1-sum, CSF, GM, WM): int32 (0 background, 1 CSF, 2 GM, 3 WM).

    int32 so DIPY's ``transform(..., interpolation="nearest")`` accepts them.
    """
    bg = 1.0 - (csf + gm + wm)
    return np.argmax(np.stack([bg, csf, gm, wm]), axis=0).astype(np.int32)


def brain_centre(t: TemplateTissues) -> np.ndarray:
    """Centre of mass of the brain mask, world mm."""
    com = np.array(ndi.center_of_mass(t.brain_mask.astype(np.float32)))
    return t.affine[:3, :3] @ com + t.affine[:3, 3]

