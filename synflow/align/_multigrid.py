"""Multigrid solver of the regularised Gauss-Newton system of SSD and EM (DIPY's V-cycle).

DIPY's ``SSDMetric``/``EMMetric`` Gauss-Newton step solves, for a displacement ``d``
(one vector per voxel, in the units of the gradient's inverse),

    g (g . d) + s * lam * (nn * d - sum_neighbours d) = b,        b = delta * g

at every voxel (``g`` the image gradient, ``s`` the EM variance of the voxel's class, 1
for SSD, ``nn`` the number of face neighbours inside the grid), with Bruhn et al.'s
(2005) V-cycle: ``k`` Gauss-Seidel sweeps, the residual restricted by 2x block means to
a grid of ``ceil(n / 2)`` voxels per axis with ``lam / 4``, solved there recursively
(``n`` more levels), prolongated by ``new[i] = coarse(i / 2)`` (trilinear) and added,
then ``k`` more sweeps (see DIPY's ``metrics.v_cycle_3d`` and ``sumsqdiff.pyx``).

Here each sweep is a red-black Gauss-Seidel sweep on whole arrays: the voxels of one
parity of ``sum(index)`` are updated together (their face neighbours all have the other
parity), then the others.  DIPY sweeps in lexicographic order; both converge to the
same solution.  Voxels whose variance is infinite take the mean of their neighbours;
voxels whose variance is below 1e-9, or whose 2x2 / 3x3 system is near-singular
(determinant below 1e-9), take ``b / |g|**2`` (0 where ``|g|**2 < 1e-9``), as DIPY.

All fields are component first: ``grad`` and ``disp`` have shape ``(dim,) + shape``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from synflow.align import vector_fields as vf

_EPS = 1e-9


def downsample(a: np.ndarray) -> np.ndarray:
    """Means over 2x2(x2) blocks; ``ceil(n / 2)`` voxels per axis (DIPY's downsampling)."""
    out = np.asarray(a, dtype=np.float32)
    for axis in range(out.ndim):
        n = out.shape[axis]
        idx = [slice(None)] * out.ndim
        idx[axis] = slice(0, None, 2)
        even = out[tuple(idx)].copy()
        idx[axis] = slice(1, None, 2)
        odd = out[tuple(idx)]
        idx[axis] = slice(0, n // 2)
        head = even[tuple(idx)]
        head += odd
        head *= np.float32(0.5)
        out = even
    return out


def downsample_field(field: np.ndarray) -> np.ndarray:
    """:func:`downsample` of each component of a component-first field."""
    return np.stack([downsample(c) for c in field])


def neighbour_count(shape: tuple[int, ...]) -> np.ndarray:
    """Number of face neighbours of each voxel that lie inside the grid (float32)."""
    nn = np.zeros(shape, dtype=np.float32)
    for axis, n in enumerate(shape):
        per = np.full(n, 2.0, dtype=np.float32)
        per[0] -= 1
        per[-1] -= 1
        view = [1] * len(shape)
        view[axis] = n
        nn += per.reshape(view)
    return nn


def _cross_kernel(dim: int) -> np.ndarray:
    k = np.zeros((3,) * dim, dtype=np.float32)
    for axis in range(dim):
        for side in (0, 2):
            idx = [1] * dim
            idx[axis] = side
            k[tuple(idx)] = 1
    return k


def neighbour_sum(field: np.ndarray) -> np.ndarray:
    """Sum over the face neighbours inside the grid, per component (zero outside)."""
    kernel = _cross_kernel(field.ndim - 1)
    out = np.empty_like(field)
    for c in range(field.shape[0]):
        ndi.correlate(field[c], kernel, output=out[c], mode="constant", cval=0.0)
    return out


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = a[0] * b[0]
    for c in range(1, a.shape[0]):
        out += a[c] * b[c]
    return out


class _Level:
    """The per-voxel coefficients of one grid of the V-cycle.

    A Gauss-Seidel update of a voxel is ``d = a * S + c0 - qg * (g . S)`` with ``S`` the
    neighbour sum: ``(g g^T + tau I)^-1 (b + s lam S)`` written out by Sherman-Morrison,
    ``tau = s lam nn``.
    """

    def __init__(self, delta, sigma_sq, grad, target, lam: float):
        dim = grad.shape[0]
        shape = grad.shape[1:]
        self.grad = g = np.asarray(grad, dtype=np.float32)
        self.nn = nn = neighbour_count(shape)
        b = (g * np.asarray(delta, dtype=np.float32)) if target is None else \
            np.asarray(target, dtype=np.float32)
        nrm2 = _dot(g, g)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if sigma_sq is None:
                s = np.ones(shape, dtype=np.float32)
                infinite = np.zeros(shape, dtype=bool)
            else:
                s = np.asarray(sigma_sq, dtype=np.float32)
                infinite = np.isinf(s)
                s = np.where(infinite, np.float32(0), s)
            sl = s * np.float32(lam)
            tau = sl * nn
            det = tau ** (dim - 1) * (tau + nrm2)
            fixed = ~infinite & ((s < _EPS) | (det < _EPS))
            regular = ~infinite & ~fixed
            inv_tau = np.where(regular, 1.0 / np.where(regular, tau, 1), 0).astype(np.float32)
            w = np.where(regular, inv_tau / np.where(regular, tau + nrm2, 1), 0)
            gb = _dot(g, b)
            small = nrm2 < _EPS
            fix_coef = np.where(fixed & ~small, 1.0 / np.where(small, 1, nrm2), 0)
            self.a = np.where(fixed | (nn == 0), 0, 1.0 / np.maximum(nn, 1)).astype(np.float32)
            self.c0 = (inv_tau * b - (w * gb) * g + fix_coef * b).astype(np.float32)
            self.qg = ((w * sl) * g).astype(np.float32)
        # residual terms: r = b_r - g_r (g_r . d) - sl_r (nn d - S)
        self.b_r = np.where(infinite, np.float32(0), b).astype(np.float32)
        self.g_r = np.where(infinite, np.float32(0), g).astype(np.float32)
        self.sl_r = np.where(infinite, np.float32(lam), sl).astype(np.float32)
        red = np.indices(shape).sum(axis=0) % 2 == 0
        self.colours = (red, ~red)

    def sweep(self, disp: np.ndarray) -> None:
        """One red-black Gauss-Seidel sweep, in place."""
        for colour in self.colours:
            S = neighbour_sum(disp)
            gS = _dot(self.grad, S)
            for c in range(disp.shape[0]):
                new = self.a * S[c]
                new += self.c0[c]
                new -= self.qg[c] * gS
                np.copyto(disp[c], new, where=colour)

    def residual(self, disp: np.ndarray) -> np.ndarray:
        """``b - (g g^T + s lam L) d`` per voxel (``-lam L d`` where the variance is inf)."""
        S = neighbour_sum(disp)
        gd = _dot(self.g_r, disp)
        out = np.empty_like(disp)
        for c in range(disp.shape[0]):
            lap = self.nn * disp[c]
            lap -= S[c]
            out[c] = self.b_r[c] - self.g_r[c] * gd - self.sl_r * lap
        return out


def v_cycle(n: int, k: int, delta: np.ndarray, sigma_sq: np.ndarray | None,
            grad: np.ndarray, target: np.ndarray | None, lam: float,
            disp: np.ndarray) -> float:
    """DIPY's ``v_cycle_2d/3d``: refine ``disp`` (in place) and return ``sum(delta**2)``.

    ``n``: number of coarser grids below this one; ``k``: sweeps before and after the
    coarse-grid correction; ``delta``: the intensity difference (used for ``b = delta *
    grad`` when ``target`` is None); ``sigma_sq``: per-voxel variance (None = 1, SSD);
    ``lam``: the smoothness weight on this grid.
    """
    level = _Level(delta, sigma_sq, grad, target, lam)
    for _ in range(k):
        level.sweep(disp)
    if n > 0:
        sub_target = downsample_field(level.residual(disp))
        sub_sigma = None if sigma_sq is None else downsample(sigma_sq)
        sub_grad = downsample_field(grad)
        sub_disp = np.zeros_like(sub_target)
        v_cycle(n - 1, k, None, sub_sigma, sub_grad, sub_target, lam * 0.25, sub_disp)
        disp += vf.upsample_field_2x(sub_disp, disp.shape[1:])
        for _ in range(k):
            level.sweep(disp)
    d = np.asarray(delta, dtype=np.float32).ravel() if delta is not None else None
    return float(np.dot(d, d)) if d is not None else 0.0


def system_residual(delta, sigma_sq, grad, lam: float, disp: np.ndarray) -> np.ndarray:
    """Residual of the finest-grid system for ``disp`` (for tests and diagnostics)."""
    return _Level(delta, sigma_sq, grad, None, lam).residual(disp)
