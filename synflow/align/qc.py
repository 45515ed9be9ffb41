"""Quality-control numbers for a registration (NumPy/SciPy only).

* :func:`jacobian_determinant` -- local volume change of a displacement field;
* :func:`folding_fraction` -- percentage of voxels where the map folds (det <= 0);
* :func:`local_cc` -- mean local normalised cross-correlation of two images;
* :func:`inverse_consistency_error` -- how far ``backward`` composed with ``forward`` is from
  the identity, in mm.

Fields follow the engine conventions: displacement fields are ``grid + (3,)`` arrays in mm
(world RAS), sampled on the voxel grid whose voxel -> world affine is ``grid2world``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from synflow.align.affine_checks import check_affine

__all__ = [
    "folding_fraction",
    "inverse_consistency_error",
    "jacobian_determinant",
    "local_cc",
]


def _check_field(disp: np.ndarray, name: str) -> np.ndarray:
    disp = np.asarray(disp)
    if disp.ndim != 4 or disp.shape[-1] != 3:
        raise ValueError(f"{name} must be a 3-D displacement field of shape (X, Y, Z, 3), "
                         f"got shape {disp.shape}")
    if min(disp.shape[:3]) < 2:
        raise ValueError(f"{name} needs at least 2 voxels along each axis, got {disp.shape}")
    return disp


def _check_affine(aff: np.ndarray | None, name: str) -> np.ndarray:
    """A 4x4 voxel -> world matrix (None = identity), by the one rule of ``affine_checks``."""
    return np.eye(4) if aff is None else check_affine(aff, name, 3)


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...], name: str = "mask"
                ) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {mask.shape}")
    return mask.astype(bool, copy=False)


def jacobian_determinant(disp_mm: np.ndarray, grid2world: np.ndarray | None) -> np.ndarray:
    """Jacobian determinant of the map ``x -> x + u(x)``, in world coordinates.

    Parameters
    ----------
    disp_mm : ndarray, shape (X, Y, Z, 3)
        Displacement ``u`` in mm (world RAS), sampled on the voxel grid.
    grid2world : ndarray, shape (4, 4) or None
        Voxel -> world (mm) affine of that grid (None: identity, i.e. 1 mm voxels).

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        ``det(I + du/dx)`` with ``du/dx = (du/di) A^-1`` (``A`` the linear part of
        ``grid2world``). Derivatives along voxel axes are central differences
        (one-sided at the grid border, :func:`numpy.gradient`). 1 = no volume change,
        < 1 shrinks, > 1 grows, <= 0 folds.
    """
    disp = _check_field(disp_mm, "disp_mm")
    aff = _check_affine(grid2world, "grid2world")
    ainv = np.linalg.inv(aff[:3, :3])
    u = disp.astype(np.float64, copy=False)
    # J[..., c, r] = d u_c / d x_r (world) = sum_a d u_c / d i_a * ainv[a, r]
    jac = np.empty(disp.shape[:3] + (3, 3), dtype=np.float64)
    for c in range(3):
        grads = np.gradient(u[..., c], axis=(0, 1, 2))
        for r in range(3):
            jac[..., c, r] = grads[0] * ainv[0, r] + grads[1] * ainv[1, r] + grads[2] * ainv[2, r]
        del grads
    jac[..., 0, 0] += 1.0
    jac[..., 1, 1] += 1.0
    jac[..., 2, 2] += 1.0
    det = (
        jac[..., 0, 0] * (jac[..., 1, 1] * jac[..., 2, 2] - jac[..., 1, 2] * jac[..., 2, 1])
        - jac[..., 0, 1] * (jac[..., 1, 0] * jac[..., 2, 2] - jac[..., 1, 2] * jac[..., 2, 0])
        + jac[..., 0, 2] * (jac[..., 1, 0] * jac[..., 2, 1] - jac[..., 1, 1] * jac[..., 2, 0])
    )
    return det.astype(np.float32)


def folding_fraction(jac: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Percentage (0-100) of voxels in ``mask`` whose Jacobian determinant is <= 0.

    Parameters
    ----------
    jac : ndarray, shape (X, Y, Z)
        Jacobian determinant (e.g. from :func:`jacobian_determinant`).
    mask : ndarray of bool, same shape, optional
        Voxels to count (default: all). An empty mask raises :class:`ValueError`.
    """
    jac = np.asarray(jac)
    if jac.ndim != 3:
        raise ValueError(f"jac must be a 3-D array, got shape {jac.shape}")
    m = _check_mask(mask, jac.shape)
    vals = jac if m is None else jac[m]
    if vals.size == 0:
        raise ValueError("mask selects no voxel")
    if not np.all(np.isfinite(vals)):
        raise ValueError("jac contains non-finite values")
    return float(100.0 * np.count_nonzero(vals <= 0) / vals.size)


def local_cc(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, radius: int = 4
) -> float:
    """Mean local normalised cross-correlation of two images on the same grid.

    For every voxel, the Pearson correlation of ``a`` and ``b`` over the cubic window of side
    ``2 * radius + 1`` centred on it (box windows, :func:`scipy.ndimage.uniform_filter`,
    ``mode='nearest'``, float64 accumulators). Returns the mean over the voxels of ``mask``
    (default: all) whose window is not constant in either image. Unitless, in [-1, 1]; 1 means
    locally identical up to a linear intensity change.

    Raises :class:`ValueError` if no voxel of the mask has a usable window.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f"a and b must be 3-D images of the same shape, got {a.shape}, {b.shape}")
    if int(radius) != radius or radius < 1:
        raise ValueError(f"radius must be a positive integer, got {radius!r}")
    m = _check_mask(mask, a.shape)
    if m is not None and not m.any():
        raise ValueError("mask selects no voxel")
    af = a.astype(np.float64)
    bf = b.astype(np.float64)
    if not (np.all(np.isfinite(af)) and np.all(np.isfinite(bf))):
        raise ValueError("a and b must contain only finite values")
    # Standardise globally first: reduces cancellation in E[x^2] - E[x]^2.
    for arr in (af, bf):
        arr -= arr.mean()
        sd = arr.std()
        if sd > 0:
            arr /= sd
    size = 2 * int(radius) + 1

    def box(x: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(x, size=size, mode="nearest")

    ma = box(af)
    mb = box(bf)
    cov = box(af * bf) - ma * mb
    va = box(af * af) - ma * ma
    vb = box(bf * bf) - mb * mb
    del ma, mb
    eps = 1e-8
    valid = (va > eps) & (vb > eps)
    if m is not None:
        valid &= m
    if not valid.any():
        raise ValueError("local_cc: no voxel in the mask has a non-constant window in both images")
    cc = cov[valid] / np.sqrt(va[valid] * vb[valid])
    return float(np.clip(cc, -1.0, 1.0).mean())


def _compose(d1: np.ndarray, d2: np.ndarray, world2grid: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """c(x) = d1(x) + d2(x + d1(x)) on d1's grid (trilinear, zero padded).

    Returns ``(c, inside)``, ``inside`` False where ``x + d1(x)`` leaves the grid of ``d2``.
    """
    shape = d1.shape[:3]
    lin = world2grid[:3, :3]
    grid = np.indices(shape, dtype=np.float64)
    # voxel coordinate of x + d1(x): i + lin @ d1(x)  (grid2world o world2grid = identity)
    coords = grid + np.einsum("ab,...b->a...", lin, d1.astype(np.float64))
    del grid
    inside = np.ones(shape, dtype=bool)
    for ax in range(3):
        inside &= (coords[ax] >= 0) & (coords[ax] <= d2.shape[ax] - 1)
    out = np.empty(shape + (3,), dtype=np.float64)
    for c in range(3):
        out[..., c] = d1[..., c] + ndimage.map_coordinates(
            d2[..., c].astype(np.float64), coords, order=1, mode="grid-constant", cval=0.0
        )
    return out, inside


def inverse_consistency_error(
    mapping: Any, mask: np.ndarray | None = None, symmetric: bool = True
) -> tuple[float, float, float]:
    """Inverse-consistency error of a diffeomorphic map: (mean, 95th percentile, max) in mm.

    Composes the map's two displacement fields with DIPY's rule
    ``c(x) = d1(x) + d2(x + d1(x))`` (trilinear, world mm): ``backward`` then ``forward``
    (DIPY's ``compute_inversion_error``) and, if ``symmetric``, also ``forward`` then
    ``backward``. For an exact inverse pair ``c = 0``; the error at a voxel is ``|c(x)|``.

    Parameters
    ----------
    mapping : DiffeomorphicMap-like
        Needs ``forward`` and ``backward`` (``(X, Y, Z, 3)`` fields in mm on the same grid)
        and ``disp_grid2world`` (4x4 or None = identity). Works for DIPY's and synflow's.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels of the displacement grid to include (default: all).
    symmetric : bool
        Pool both compositions (default) or use only DIPY's backward-then-forward.

    Returns
    -------
    (mean, p95, max) : tuple of float, in mm
        Over mask voxels whose composed sample stays inside the grid (unlike DIPY, voxels
        that leave the grid are excluded rather than counted as 0). Raises
        :class:`ValueError` if none remain.
    """
    for attr in ("forward", "backward"):
        if getattr(mapping, attr, None) is None:
            raise ValueError(f"mapping must have a '{attr}' displacement field")
    fwd = _check_field(mapping.forward, "mapping.forward")
    bwd = _check_field(mapping.backward, "mapping.backward")
    if fwd.shape != bwd.shape:
        raise ValueError(f"mapping.forward {fwd.shape} and mapping.backward {bwd.shape} must "
                         "be on the same grid")
    aff = _check_affine(getattr(mapping, "disp_grid2world", None), "mapping.disp_grid2world")
    w2g = np.linalg.inv(aff)
    m = _check_mask(mask, fwd.shape[:3])
    pairs = [(bwd, fwd)] + ([(fwd, bwd)] if symmetric else [])
    errs = []
    for d1, d2 in pairs:
        comp, inside = _compose(d1, d2, w2g)
        sel = inside if m is None else inside & m
        errs.append(np.sqrt(np.sum(comp[sel] ** 2, axis=-1)))
    err = np.concatenate(errs)
    if err.size == 0:
        raise ValueError("inverse_consistency_error: no voxel of the mask maps inside the grid")
    if not np.all(np.isfinite(err)):
        raise ValueError("mapping fields contain non-finite values")
    return float(err.mean()), float(np.percentile(err, 95)), float(err.max())
