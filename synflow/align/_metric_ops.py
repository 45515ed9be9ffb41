"""Field operations shared by the SyN metrics (``synflow.align.metrics``).

Conventions: "voxel" fields are component first, ``(dim,) + shape``, in voxels of the
grid; DIPY-layout fields are component last, ``shape + (dim,)``, in world units (mm).
With ``A`` the grid's linear part and ``ginv = (A^T A)^-1``, a world gradient is
``A^-T grad_v`` and a world step ``A u_v``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from synflow._parallel import run_tasks
from synflow.align import _multigrid


def smooth_components(field: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth each component (first axis) of ``field`` in place, ``sigma`` voxels.

    ``scipy.ndimage.gaussian_filter`` per component (reflect mode, truncate 4), the
    components on the thread pool.
    """
    if sigma <= 0:
        return field

    def one(c: int):
        return lambda: ndi.gaussian_filter(field[c], sigma, output=field[c])

    run_tasks([one(c) for c in range(field.shape[0])])
    return field


def apply_matrix(m: np.ndarray, field: np.ndarray) -> np.ndarray:
    """``m @ field`` per voxel for a component-first field (float32, new array)."""
    dim = field.shape[0]
    out = np.empty(field.shape, dtype=np.float32)
    diagonal = np.allclose(m, np.diag(np.diag(m)))
    for r in range(dim):
        if diagonal:
            np.multiply(field[r], np.float32(m[r, r]), out=out[r])
        else:
            out[r] = sum(np.float32(m[r, c]) * field[c] for c in range(dim))
    return out


def voxel_gradient(image: np.ndarray) -> np.ndarray:
    """Central-difference gradient (``numpy.gradient``), component first, float32."""
    return np.stack([g.astype(np.float32, copy=False) for g in np.gradient(image)])


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-voxel dot product of two component-first fields."""
    out = a[0] * b[0]
    for c in range(1, a.shape[0]):
        out += a[c] * b[c]
    return out


def sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive-definite matrix."""
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(w)) @ v.T


def sigma_sq_x_voxels(ginv: np.ndarray) -> float:
    """DIPY's demons ``sigma_x**2 = sum(h**2) / dim`` from ``ginv = (A^T A)^-1``."""
    return float(np.trace(np.linalg.inv(ginv))) / ginv.shape[0]


def world_gradient(image: np.ndarray, spacing, direction, dim: int) -> np.ndarray:
    """DIPY's metric gradient: voxel gradient / spacing, reoriented by ``direction``.

    Component last, float32 (DIPY's ``gradient_static``/``gradient_moving`` layout).
    """
    g = voxel_gradient(image)
    if spacing is not None:
        g /= np.asarray(spacing, dtype=np.float32).reshape((dim,) + (1,) * dim)
    if direction is not None:
        g = apply_matrix(np.asarray(direction, dtype=np.float64)[:dim, :dim], g)
    return np.ascontiguousarray(np.moveaxis(g, 0, -1))


def to_first(field_last: np.ndarray) -> np.ndarray:
    """Component-last field -> component-first float32 array (a copy)."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(field_last, dtype=np.float32), -1, 0))


def to_last(field_first: np.ndarray) -> np.ndarray:
    """Component-first field -> component-last array (a view)."""
    return np.moveaxis(field_first, 0, -1)


def gauss_newton_voxels(delta, sigma_sq, grad_v: np.ndarray, ginv: np.ndarray,
                        lam: float, depth: int, inner_iter: int) -> np.ndarray:
    """Gauss-Newton step in voxels: DIPY's world-unit solve, in a rotated world frame.

    The system is solved for ``d' = S u_v`` with ``S = (A^T A)^(1/2)`` (``A = Q S``, ``Q``
    a rotation: the data term ``g_v . u_v = (S^-1 g_v) . d'`` and the smoothness term are
    invariant under ``Q``), so the result equals DIPY's world step mapped to voxels.
    """
    m = sqrt_psd(ginv)
    g = apply_matrix(m, grad_v)
    d = np.zeros_like(g)
    _multigrid.v_cycle(depth, inner_iter, delta, sigma_sq, g, None, lam, d)
    return apply_matrix(m, d)


def gauss_newton_world(delta, sigma_sq, grad_last: np.ndarray, lam: float, depth: int,
                       inner_iter: int) -> tuple[np.ndarray, float]:
    """DIPY-layout Gauss-Newton step (world units, component last) and ``sum(delta**2)``."""
    g = to_first(grad_last)
    d = np.zeros_like(g)
    energy = _multigrid.v_cycle(depth, inner_iter, delta, sigma_sq, g, None, lam, d)
    return to_last(d), energy


def default_depth(shape) -> int:
    """V-cycle depth when the optimiser has not called ``set_levels_below``.

    DIPY's optimiser uses ``levels - level`` (pyramid levels at and below the current
    one); without it, halve while the coarse grid keeps >= 12 voxels on its shortest
    axis, which gives the same depths on a 3-level pyramid of a ~100-voxel image.
    """
    m, depth = min(int(s) for s in shape), 0
    while (m + 1) // 2 >= 12:
        m = (m + 1) // 2
        depth += 1
    return depth


def check_positive(name: str, cls: str, value, integer: bool = False, minimum=0) -> None:
    """Raise ``ValueError`` (naming ``cls`` and ``name``) unless ``value >= minimum``."""
    ok = np.isscalar(value) and np.isfinite(value) and value >= minimum
    if integer:
        ok = ok and int(value) == value
    if not ok:
        kind = "an integer" if integer else "a finite value"
        raise ValueError(f"{cls}: {name} must be {kind} >= {minimum}, got {value!r}")
