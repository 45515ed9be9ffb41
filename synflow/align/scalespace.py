"""Gaussian scale space used by SyN's multi-resolution pyramid (DIPY-compatible).

Level 0 is the input, min-max normalised to [0, 1].  Level ``l >= 1`` is smoothed with
``sigma_l = sigma_factor * (spacing_l / spacing_0 - 1)`` voxels and renormalised; its
*grid* has isotropic spacing ``2**l * min(spacing_0)`` and shape
``int(shape_0 * spacing_0 / spacing_l + 0.5)``, corner-aligned with the input grid
(``grid2world_l = grid2world_0 @ diag(scaling_l, 1)``).  As in DIPY the smoothed images
stay at full resolution: the registration samples them on the coarse grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from synflow._parallel import run_tasks


def _normalise(image: np.ndarray) -> np.ndarray:
    lo = float(image.min())
    hi = float(image.max())
    if hi > lo:
        out = image - np.float32(lo)
        out *= np.float32(1.0 / (hi - lo))
        return out
    return np.zeros_like(image)


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
    """

    def __init__(self, image: np.ndarray, num_levels: int, image_grid2world=None,
                 input_spacing=None, sigma_factor: float = 0.2, mask0: bool = False):
        image = np.asarray(image, dtype=np.float32)
        self.dim = image.ndim
        self.num_levels = int(num_levels)
        dim = self.dim
        g2w = np.eye(dim + 1) if image_grid2world is None else np.asarray(
            image_grid2world, dtype=np.float64)
        if input_spacing is None:
            input_spacing = np.sqrt((g2w[:dim, :dim] ** 2).sum(axis=0))
        spacing0 = np.asarray(input_spacing, dtype=np.float64)
        shape0 = np.array(image.shape, dtype=np.float64)
        mask = (image > 0) if mask0 else None

        self.images: list[np.ndarray] = []
        self.domain_shapes: list[np.ndarray] = []
        self.affines: list[np.ndarray] = []
        self.affines_inv: list[np.ndarray] = []
        self.spacings: list[np.ndarray] = []
        self.scalings: list[np.ndarray] = []
        self.sigmas: list[np.ndarray] = []

        min_spacing = spacing0.min()
        for level in range(self.num_levels):
            if level == 0:
                scaling = np.ones(dim)
                spacing = spacing0.copy()
                shape = image.shape
                sigmas = np.zeros(dim)
            else:
                spacing = np.full(dim, (2.0 ** level) * min_spacing)
                scaling = spacing / spacing0
                shape = tuple(int(v) for v in (shape0 * spacing0 / spacing + 0.5))
                # DIPY: negative sigmas (upsampled axes) mean "no smoothing".
                sigmas = np.maximum(sigma_factor * (scaling - 1.0), 0.0)
            affine = g2w @ np.diag(np.append(scaling, 1.0))
            self.domain_shapes.append(np.array(shape, dtype=np.int32))
            self.affines.append(affine)
            self.affines_inv.append(np.linalg.inv(affine))
            self.spacings.append(spacing)
            self.scalings.append(scaling)
            self.sigmas.append(sigmas)

        def smooth(level: int) -> np.ndarray:
            sig = self.sigmas[level]
            img = ndi.gaussian_filter(image, sig) if np.any(sig > 0) else image
            img = _normalise(img)
            if mask is not None:
                img = img * mask
            return img

        self.images = run_tasks([lambda lv=lv: smooth(lv) for lv in range(self.num_levels)])

    def get_image(self, level: int) -> np.ndarray:
        """Smoothed, normalised image of ``level`` (on the full-resolution grid)."""
        return self.images[level]

    def get_domain_shape(self, level: int) -> np.ndarray:
        return self.domain_shapes[level]

    def get_affine(self, level: int) -> np.ndarray:
        """Voxel-to-world matrix of the ``level`` grid."""
        return self.affines[level]

    def get_affine_inv(self, level: int) -> np.ndarray:
        return self.affines_inv[level]

    def get_spacing(self, level: int) -> np.ndarray:
        return self.spacings[level]

    def get_scaling(self, level: int) -> np.ndarray:
        return self.scalings[level]

    def get_sigmas(self, level: int) -> np.ndarray:
        return self.sigmas[level]

    def get_expand_factors(self, from_level: int, to_level: int) -> np.ndarray:
        """Ratio of grid spacings ``spacing[to] / spacing[from]`` (DIPY's expand factors)."""
        return self.spacings[to_level] / self.spacings[from_level]
