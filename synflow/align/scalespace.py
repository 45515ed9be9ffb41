"""Gaussian scale spaces of the multi-resolution pyramids (DIPY's ``dipy.align.scalespace``).

Two level geometries share one implementation (smoothing, normalisation, bookkeeping):

* :class:`ScaleSpace` (SyN, and the affine with ``ss_sigma_factor``): level ``l >= 1``
  is smoothed with ``sigma_l = sigma_factor * (spacing_l / spacing_0 - 1)`` voxels (no
  smoothing along axes where that is negative); its *grid* has isotropic spacing
  ``2**l * min(spacing_0)`` and shape ``int(shape_0 * spacing_0 / spacing_l + 0.5)``;
* :class:`IsotropicScaleSpace` (the affine's default): given shrink ``factors`` and
  ``sigmas`` (full-resolution voxels), one per level, coarsest first as in DIPY; along
  each axis the shrink factor ``<= factor`` that makes the coarse voxels most isotropic is
  chosen, the grid shape is ``int(shape_0 / shrink)``.

Level 0 is the input, never smoothed.  Every level is min-max normalised to [0, 1]
(float32 output) and, with ``mask0``, multiplied by ``input > 0``.  Grids are
corner-aligned with the input grid (``grid2world_l = grid2world_0 @ diag(scaling_l, 1)``).
As in DIPY the smoothed images stay at full resolution: the registration samples them
on the coarse grid.  ``work_dtype`` is the precision of smoothing and normalisation
(float32 for SyN's pyramid, float64 as DIPY for the affine).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from synflow._parallel import run_tasks

__all__ = ["IsotropicScaleSpace", "ScaleSpace"]


def _normalise(image: np.ndarray) -> np.ndarray:
    """Min-max normalisation to [0, 1] as float32 (zeros for a constant image)."""
    lo = float(image.min())
    hi = float(image.max())
    if not hi > lo:
        return np.zeros(image.shape, dtype=np.float32)
    if image.dtype == np.float64:
        return ((image - lo) / (hi - lo)).astype(np.float32)
    out = image - np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return out


class ScaleSpace:
    """Multi-resolution Gaussian scale space of one image.

    Parameters
    ----------
    image : array, 2-D or 3-D.
    num_levels : number of levels (level 0 = finest).
    image_grid2world : (dim+1, dim+1) voxel-to-world (mm) matrix, or None for identity.
    input_spacing : voxel size in mm; derived from ``image_grid2world`` when None.
    sigma_factor : scale-space smoothing factor (DIPY's ``ss_sigma_factor``).
    mask0 : multiply every level by ``image > 0`` (DIPY's option).
    work_dtype : float32 (default) or float64, precision of smoothing and normalisation.
    """

    def __init__(self, image: np.ndarray, num_levels: int, image_grid2world=None,
                 input_spacing=None, sigma_factor: float = 0.2, mask0: bool = False, *,
                 work_dtype: type = np.float32):
        self.sigma_factor = sigma_factor
        self._build(image, int(num_levels), image_grid2world, input_spacing, mask0, work_dtype)

    def _level_geometry(self, level: int, shape0: np.ndarray, spacing0: np.ndarray
                        ) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
        """``(shape, spacing, scaling, sigmas)`` of ``level`` >= 1."""
        spacing = np.full(self.dim, (2.0 ** level) * spacing0.min())
        scaling = spacing / spacing0
        shape = tuple(int(v) for v in (shape0 * spacing0 / spacing + 0.5))
        # DIPY: negative sigmas (upsampled axes) mean "no smoothing".
        sigmas = np.maximum(self.sigma_factor * (scaling - 1.0), 0.0)
        return shape, spacing, scaling, sigmas

    def _level0_sigmas(self) -> np.ndarray:
        return np.zeros(self.dim)

    def _build(self, image, num_levels, image_grid2world, input_spacing, mask0, work_dtype):
        image = np.asarray(image, dtype=work_dtype)
        self.dim = dim = image.ndim
        self.num_levels = num_levels
        g2w = np.eye(dim + 1) if image_grid2world is None else np.asarray(
            image_grid2world, dtype=np.float64)
        if input_spacing is None:
            input_spacing = np.sqrt((g2w[:dim, :dim] ** 2).sum(axis=0))
        spacing0 = np.asarray(input_spacing, dtype=np.float64)
        shape0 = np.array(image.shape, dtype=np.float64)
        mask = (image > 0) if mask0 else None

        self.domain_shapes: list[np.ndarray] = []
        self.affines: list[np.ndarray] = []
        self.affines_inv: list[np.ndarray] = []
        self.spacings: list[np.ndarray] = []
        self.scalings: list[np.ndarray] = []
        self.sigmas: list[np.ndarray] = []
        for level in range(num_levels):
            if level == 0:
                shape, spacing, scaling = image.shape, spacing0.copy(), np.ones(dim)
                sigmas = self._level0_sigmas()
            else:
                shape, spacing, scaling, sigmas = self._level_geometry(level, shape0, spacing0)
            affine = g2w @ np.diag(np.append(scaling, 1.0))
            self.domain_shapes.append(np.array(shape, dtype=np.int32))
            self.affines.append(affine)
            self.affines_inv.append(np.linalg.inv(affine))
            self.spacings.append(spacing)
            self.scalings.append(scaling)
            self.sigmas.append(sigmas)

        def smooth(level: int) -> np.ndarray:
            sig = self.sigmas[level]
            img = ndi.gaussian_filter(image, sig) if level > 0 and np.any(sig > 0) else image
            img = _normalise(img)
            if mask is not None:
                img = img * mask
            return img

        self.images = run_tasks([lambda lv=lv: smooth(lv) for lv in range(num_levels)])

    def _check_level(self, level: int) -> int:
        if not 0 <= level < self.num_levels:
            raise ValueError(f"Invalid pyramid level: {level}")
        return level

    def get_image(self, level: int) -> np.ndarray:
        """Smoothed, normalised image of ``level`` (on the full-resolution grid)."""
        return self.images[self._check_level(level)]

    def get_domain_shape(self, level: int) -> np.ndarray:
        """Shape of the ``level`` sampling grid (voxels)."""
        return self.domain_shapes[self._check_level(level)]

    def get_affine(self, level: int) -> np.ndarray:
        """Voxel-to-world (mm) matrix of the ``level`` grid."""
        return self.affines[self._check_level(level)]

    def get_affine_inv(self, level: int) -> np.ndarray:
        """World (mm)-to-voxel matrix of the ``level`` grid."""
        return self.affines_inv[self._check_level(level)]

    def get_spacing(self, level: int) -> np.ndarray:
        """Voxel size (mm) of the ``level`` grid."""
        return self.spacings[self._check_level(level)]

    def get_scaling(self, level: int) -> np.ndarray:
        """``level`` voxel = ``scaling`` x input voxel, per axis."""
        return self.scalings[self._check_level(level)]

    def get_sigmas(self, level: int) -> np.ndarray:
        """Gaussian sigmas (input voxels) used for ``level``."""
        return self.sigmas[self._check_level(level)]

    def get_expand_factors(self, from_level: int, to_level: int) -> np.ndarray:
        """Ratio of grid spacings ``spacing[to] / spacing[from]`` (DIPY's expand factors)."""
        return self.spacings[to_level] / self.spacings[from_level]


class IsotropicScaleSpace(ScaleSpace):
    """DIPY's ``IsotropicScaleSpace``: explicit shrink ``factors`` and ``sigmas`` per level.

    Parameters
    ----------
    image : array, 2-D or 3-D.
    factors : integer shrink factor per level, **coarsest first** (e.g. ``[4, 2, 1]``).
    sigmas : Gaussian sigma per level in input voxels, coarsest first (e.g. ``[3, 1, 0]``).
    image_grid2world, input_spacing, mask0, work_dtype : as :class:`ScaleSpace`
        (``work_dtype`` defaults to float64 here, as DIPY).
    """

    def __init__(self, image: np.ndarray, factors: Sequence[int], sigmas: Sequence[float],
                 image_grid2world=None, input_spacing=None, mask0: bool = False, *,
                 work_dtype: type = np.float64):
        if len(factors) != len(sigmas):
            raise ValueError("sigmas and factors must have the same length, got "
                             f"{len(sigmas)} and {len(factors)}")
        self.factors = [int(f) for f in factors]
        self.level_sigmas = [float(s) for s in sigmas]
        self._build(image, len(self.factors), image_grid2world, input_spacing, mask0,
                    work_dtype)

    def _level0_sigmas(self) -> np.ndarray:
        return np.ones(self.dim) * self.level_sigmas[self.num_levels - 1]

    def _level_geometry(self, level: int, shape0: np.ndarray, spacing0: np.ndarray
                        ) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
        nl = self.num_levels
        factor = self.factors[nl - 1 - level]
        shrink = np.full(self.dim, float(factor))
        new_spacing = spacing0 * factor
        k = int(np.argmin(spacing0))
        for j in range(self.dim):
            if j == k:
                continue
            min_diff = abs(new_spacing[j] - new_spacing[k])
            for f in range(1, factor):
                diff = abs(spacing0[j] * f - new_spacing[k])
                if diff < min_diff:
                    shrink[j] = f
                    new_spacing[j] = spacing0[j] * f
                    min_diff = diff
        shape = tuple(int(s) for s in (shape0 / shrink).astype(np.int32))
        sigmas = np.ones(self.dim) * self.level_sigmas[nl - 1 - level]
        return shape, new_spacing, shrink, sigmas
