"""Grid geometry and sampling helpers shared by the phantom modules.

* :func:`grid_world_points` -- world mm of every voxel centre;
* :func:`world_to_vox` -- world mm -> voxel coordinates of a grid (for ``map_coordinates``);
* :func:`sample_image`, :func:`sample_field` -- interpolation of a scalar image / vector field
  (``scipy.ndimage.map_coordinates``, independent of synflow's engine);
* :func:`voxel_sizes` -- voxel sizes (mm) of a ``grid2world`` affine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from synflow.align.affine_checks import check_affine

__all__ = ["grid_world_points", "world_to_vox", "sample_image", "sample_field", "voxel_sizes"]


def _check_shape(shape: Any, name: str = "shape") -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"{name} must be 3 ints >= 2, got {shape}")
    return shape  # type: ignore[return-value]


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def grid_world_points(shape: tuple[int, int, int], grid2world: np.ndarray) -> np.ndarray:
    """World coordinates (RAS mm) of every voxel centre: float64 ``shape + (3,)``."""
    shape = _check_shape(shape)
    a = check_affine(grid2world, "grid2world")
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return (a[:3, :3] @ idx + a[:3, 3:]).T.reshape(shape + (3,))


def world_to_vox(points: np.ndarray, grid2world: np.ndarray) -> np.ndarray:
    """(..., 3) world mm -> (3, ...) voxel coordinates of the grid (for map_coordinates)."""
    inv = np.linalg.inv(grid2world)
    dt = points.dtype if points.dtype in (np.float32, np.float64) else np.float64
    flat = points.reshape(-1, 3)
    vox = inv[:3, :3].astype(dt) @ flat.T + inv[:3, 3:].astype(dt)
    return vox.reshape((3,) + points.shape[:-1])


def sample_image(img: np.ndarray, vox: np.ndarray, order: int = 1, mode: str = "nearest",
                 prefiltered: bool = False) -> np.ndarray:
    """Interpolate a scalar image at voxel coordinates ``vox`` (3, ...). float32."""
    return ndi.map_coordinates(img, vox, order=order, mode=mode, cval=0.0,
                               prefilter=not prefiltered, output=np.float32)


def sample_field(disp: np.ndarray, vox: np.ndarray, mode: str = "nearest") -> np.ndarray:
    """Trilinear interpolation of a vector field ``grid+(3,)`` at voxel coords (3, ...)."""
    out = np.empty(vox.shape[1:] + (3,), dtype=np.float32)
    for c in range(3):
        out[..., c] = ndi.map_coordinates(disp[..., c], vox, order=1, mode=mode, cval=0.0,
                                          output=np.float32)
    return out


def voxel_sizes(grid2world: np.ndarray) -> np.ndarray:
    """Voxel sizes (mm) along each voxel axis: the column norms of the linear part."""
    return np.sqrt((np.asarray(grid2world)[:3, :3] ** 2).sum(axis=0))

