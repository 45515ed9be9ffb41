"""Synthetic subjects: template anatomy deformed, then moved into a native world.

* :class:`SyntheticSubject`, :func:`make_subject` -- a subject and its exact template <-> native
  point maps, tissue maps and clean b0 on any native grid;
* :func:`native_grid` -- an axis-aligned native grid centred on the subject's brain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from synflow.align.affine_checks import check_affine
from synflow.data.phantom.contrast import b0_like
from synflow.data.phantom.deformations import random_affine, random_diffeomorphism
from synflow.data.phantom.grid import (
    _rng,
    grid_world_points,
    sample_field,
    sample_image,
    world_to_vox,
)
from synflow.data.phantom.template import brain_centre, load_template_tissues

__all__ = ["SyntheticSubject", "make_subject", "native_grid"]

@dataclass
class SyntheticSubject:
    """A synthetic subject: template anatomy deformed then moved into a native world.

    The subject's anatomy at native world point ``y`` (mm) is the template anatomy at
    ``t = w + inverse(w)``, ``w = to_native^-1 y``: ``to_native`` (4x4) maps template (MNI)
    world -> native world, ``forward``/``inverse`` are displacements (mm) on the template
    2 mm grid (``template_affine``) with ``x + forward(x)`` the inverse of ``x + inverse(x)``.
    The true pull map from the template grid into the native world is therefore
    ``pull(x) = to_native @ (x + forward(x))``.
    """

    forward: np.ndarray
    inverse: np.ndarray
    to_native: np.ndarray
    template_affine: np.ndarray
    info: dict = field(default_factory=dict)

    def template_point_of(self, native_points_mm: np.ndarray) -> np.ndarray:
        """Template-world point (mm) whose anatomy appears at native world ``native_points_mm``."""
        pinv = np.linalg.inv(self.to_native)
        w = np.asarray(native_points_mm, dtype=np.float32) @ pinv[:3, :3].T.astype(
            np.float32) + pinv[:3, 3].astype(np.float32)
        vox = world_to_vox(w, self.template_affine).astype(np.float32)
        return w + sample_field(self.inverse, vox)

    def native_point_of(self, template_points_mm: np.ndarray) -> np.ndarray:
        """Native world point (mm) showing the anatomy of template-world ``template_points_mm``."""
        t = np.asarray(template_points_mm, dtype=np.float32)
        vox = world_to_vox(t, self.template_affine).astype(np.float32)
        y = (t + sample_field(self.forward, vox)).astype(np.float64)
        p = self.to_native
        return y @ p[:3, :3].T + p[:3, 3]

    def tissues_on(self, shape: tuple[int, int, int], grid2world: np.ndarray,
                   skull_stripped: bool = False,
                   world_motion: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Tissue maps (CSF, GM, WM, scalp; float32 [0, 1]) on a native grid (trilinear).

        ``world_motion`` (4x4, native world -> native world): the image at native point ``y``
        shows the anatomy at ``world_motion @ y`` (head moved by its inverse).
        """
        tis = load_template_tissues(2.0)
        pts = grid_world_points(shape, grid2world)
        if world_motion is not None:
            mo = check_affine(world_motion, "world_motion")
            pts = pts @ mo[:3, :3].T + mo[:3, 3]
        t = self.template_point_of(pts)
        vox = world_to_vox(t, tis.affine).astype(np.float32)
        out = {k: sample_image(getattr(tis, k.lower()), vox, order=1, mode="nearest")
               for k in ("CSF", "GM", "WM", "scalp")}
        if skull_stripped:
            out["scalp"][:] = 0
        return out

    def b0_clean_on(self, shape: tuple[int, int, int], grid2world: np.ndarray,
                    scale: float = 1000.0, skull_stripped: bool = False) -> np.ndarray:
        """Noise-free b0 (:func:`b0_like` contrast x ``scale``) on a native grid (cubic)."""
        tis = load_template_tissues(2.0)
        scalp = np.zeros_like(tis.scalp) if skull_stripped else tis.scalp
        clean = b0_like(tis.csf, tis.gm, tis.wm, scalp, noise=0.0, bias=0.0, scale=scale)
        t = self.template_point_of(grid_world_points(shape, grid2world))
        vox = world_to_vox(t, tis.affine).astype(np.float32)
        coeffs = ndi.spline_filter(clean, order=3, mode="nearest", output=np.float32)
        return np.maximum(sample_image(coeffs, vox, order=3, mode="nearest", prefiltered=True), 0)


def make_subject(
    rng: np.random.Generator | int | None = None,
    mean_displacement_mm: float = 2.5,
    smoothness_mm: float = 12.0,
    max_rotation_deg: float = 6.0,
    max_translation_mm: float = 8.0,
    max_scale: float = 0.05,
    max_shear: float = 0.0,
    native_origin_mm: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0),
) -> SyntheticSubject:
    """Random :class:`SyntheticSubject`: a diffeomorphism of the template (mean displacement
    over the brain ``mean_displacement_mm``) and a template->native affine about the brain
    centre (:func:`random_affine`), followed by a translation ``native_origin_mm`` so the
    native world has the brain centre near ``brain_centre_MNI + native_origin_mm``."""
    rng = _rng(rng)
    tis = load_template_tissues(2.0)
    deform = random_diffeomorphism(tis.shape, tis.affine, mean_displacement_mm,
                                   smoothness_mm, rng=rng, mask=tis.brain_mask)
    a = random_affine(rng, max_rotation_deg, max_translation_mm, max_scale, max_shear,
                      center_mm=brain_centre(tis))
    a[:3, 3] += np.asarray(native_origin_mm, dtype=np.float64)
    return SyntheticSubject(forward=deform.forward, inverse=deform.inverse, to_native=a,
                            template_affine=tis.affine.copy(), info=deform.diagnostics())


def native_grid(subject: SyntheticSubject, voxel_size: Any, shape: tuple[int, int, int],
                offset_mm: Any = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Axis-aligned grid affine (voxel -> native world mm) of ``shape`` and ``voxel_size``
    centred on the subject's brain centre (+ ``offset_mm``)."""
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    c = subject.to_native[:3, :3] @ brain_centre(load_template_tissues(2.0)) \
        + subject.to_native[:3, 3] + np.asarray(offset_mm, dtype=np.float64)
    aff = np.diag(list(vs) + [1.0])
    aff[:3, 3] = np.round(c - vs * (np.array(shape) - 1) / 2.0, 2)
    return aff

