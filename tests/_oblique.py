"""An oblique, anisotropic registration case shared by the mapping and ITK/ANTs tests.

Two volumes of smooth blobs on different oblique grids (static 2 mm isotropic, moving
2.2 x 2.0 x 2.4 mm), related by a known prealign ``P`` (static world -> moving world, RAS mm)
and a smooth sinusoidal deformation, registered with DIPY's own SyN (a short schedule), so
the files under test come from the reference implementation.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np


def rot(axis: int, deg: float) -> np.ndarray:
    """4x4 rotation by ``deg`` degrees about world ``axis``."""
    t = np.deg2rad(deg)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(4)
    r[i, i] = r[j, j] = np.cos(t)
    r[i, j], r[j, i] = -np.sin(t), np.sin(t)
    return r


def grid(shape, zooms, rotation, center) -> np.ndarray:
    """voxel -> world matrix of a grid with ``zooms`` (mm), ``rotation``, centred on ``center``."""
    a = rotation.copy()
    a[:3, :3] = rotation[:3, :3] @ np.diag(zooms)
    a[:3, 3] = center - a[:3, :3] @ ((np.array(shape) - 1) / 2)
    return a


def world(shape, affine) -> np.ndarray:
    """World coordinates (mm) of every voxel centre, ``shape + (3,)``."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def apply(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply the 4x4 ``a`` to points ``x`` (..., 3)."""
    return x @ a[:3, :3].T + a[:3, 3]


def blobs(x: np.ndarray) -> np.ndarray:
    """Five Gaussian blobs evaluated at world points ``x`` (float32)."""
    centers = [(0, 0, 0), (12, -8, 5), (-10, 10, -6), (6, 12, 10), (-8, -12, 8)]
    out = 0.0
    for c, w, s in zip(centers, (1.0, 0.8, 0.6, 0.9, 0.7), (14, 7, 8, 6, 7), strict=True):
        out = out + w * np.exp(-np.sum((x - np.array(c)) ** 2, -1) / (2 * s**2))
    return out.astype(np.float32)


def oblique_case() -> dict:
    """``{"map": DIPY DiffeomorphicMap, "P": prealign, "static": img, "moving": img}``."""
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    sshape, mshape = (32, 30, 28), (28, 32, 26)
    s_aff = grid(sshape, (2.0, 2.0, 2.0), rot(2, 10) @ rot(0, -5), np.array([1.0, -2.0, 3.0]))
    m_aff = grid(mshape, (2.2, 2.0, 2.4), rot(1, 8) @ rot(2, -6), np.array([-2.0, 1.0, 0.0]))
    p = rot(2, 6) @ rot(0, 4)  # static world -> moving world, as given to optimize
    p[:3, 3] = [3.0, -2.0, 1.5]
    static = blobs(world(sshape, s_aff))
    u = apply(np.linalg.inv(p), world(mshape, m_aff))
    moving = blobs(u + 2.0 * np.sin(u[..., [1, 2, 0]] / 9.0))
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3, radius=2), level_iters=[5, 5, 0])
    mapping = sdr.optimize(static, moving, static_grid2world=s_aff, moving_grid2world=m_aff,
                           prealign=p)
    return {"map": mapping, "P": p,
            "static": nib.Nifti1Image(static, s_aff), "moving": nib.Nifti1Image(moving, m_aff)}
