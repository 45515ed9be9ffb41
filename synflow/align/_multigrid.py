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
in 3-D, voxels whose variance is below 1e-9 take ``b / |g|**2`` (0 where ``|g|**2 <
1e-9``) and voxels whose 3x3 system has a pivot below 1e-9 the mean of their neighbours
(DIPY keeps the value last solved for, a neighbour's: with ``b / |g|**2`` instead, a
few huge values dominate the normalised SyN step and EM registers worse); in 2-D, a
near-singular 2x2 system (determinant below 1e-9) gives ``b / |g|**2``, as DIPY.

All fields are component first: ``grad`` and ``disp`` have shape ``(dim,) + shape``.
"""

from __future__ import annotations

import itertools

import numpy as np

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


def _add_shifted(out: np.ndarray, a: np.ndarray, axis: int, shift: int) -> None:
    """``out[i] += a[i + shift]`` along ``axis`` where both indices are inside."""
    n_out, n_a = out.shape[axis], a.shape[axis]
    lo = max(0, -shift)
    hi = min(n_out, n_a - shift)
    if hi <= lo:
        return
    so = [slice(None)] * out.ndim
    sa = [slice(None)] * a.ndim
    so[axis] = slice(lo, hi)
    sa[axis] = slice(lo + shift, hi + shift)
    out[tuple(so)] += a[tuple(sa)]


def neighbour_sum(field: np.ndarray) -> np.ndarray:
    """Sum over the face neighbours inside the grid, per component (zero outside)."""
    out = np.zeros_like(field)
    for axis in range(1, field.ndim):
        _add_shifted(out, field, axis, -1)
        _add_shifted(out, field, axis, 1)
    return out


def _parities(dim: int):
    return list(itertools.product((0, 1), repeat=dim))


def _split(a: np.ndarray, dim: int) -> dict:
    """The ``2**dim`` parity sub-lattices ``a[..., p0::2, p1::2, ...]`` (copies)."""
    lead = (slice(None),) * (a.ndim - dim)
    return {p: np.ascontiguousarray(a[lead + tuple(slice(q, None, 2) for q in p)])
            for p in _parities(dim)}


def _merge(blocks: dict, out: np.ndarray, dim: int) -> None:
    lead = (slice(None),) * (out.ndim - dim)
    for p, b in blocks.items():
        out[lead + tuple(slice(q, None, 2) for q in p)] = b


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = a[0] * b[0]
    for c in range(1, a.shape[0]):
        out += a[c] * b[c]
    return out


def _singular(g: np.ndarray, tau: np.ndarray, nrm2: np.ndarray) -> np.ndarray:
    """DIPY's near-singularity tests of ``g g^T + tau I`` (pivots below 1e-9)."""
    if g.shape[0] == 2:
        return tau * (tau + nrm2) < _EPS
    a = g[0] * g[0] + tau
    g01 = g[0] * g[0] + g[1] * g[1]
    sub_det = tau * (tau + g01)  # a (g1^2 + tau) - (g0 g1)^2
    f = np.where(sub_det > 0, tau * (tau + nrm2) / np.where(sub_det > 0, tau + g01, 1), 0)
    return (a < _EPS) | (sub_det < _EPS) | (f < _EPS)


class _Level:
    """The per-voxel coefficients of one grid of the V-cycle.

    A Gauss-Seidel update of a voxel is ``d = a * S + c0 - qg * (g . S)`` with ``S`` the
    neighbour sum: ``(g g^T + tau I)^-1 (b + s lam S)`` written out by Sherman-Morrison,
    ``tau = s lam nn``.
    """

    def __init__(self, delta, sigma_sq, grad, target, lam: float):
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
            singular = ~infinite & _singular(g, tau, nrm2)
            if g.shape[0] == 3:
                # DIPY 3-D: variance < 1e-9 -> b / |g|^2; a singular solve keeps a value
                # computed for a neighbouring voxel: here, the neighbours' mean.
                fixed = ~infinite & (s < _EPS)
                singular &= ~fixed
            else:
                fixed, singular = singular, np.zeros_like(singular)
            regular = ~infinite & ~fixed & ~singular
            inv_tau = np.where(regular, 1.0 / np.where(regular, tau, 1), 0).astype(np.float32)
            w = np.where(regular, inv_tau / np.where(regular, tau + nrm2, 1), 0)
            gb = _dot(g, b)
            small = nrm2 < _EPS
            fix_coef = np.where(fixed & ~small, 1.0 / np.where(small, 1, nrm2), 0)
            self.a = np.where(fixed | (nn == 0), 0, 1.0 / np.maximum(nn, 1)).astype(np.float32)
            self.c0 = (inv_tau * b - (w * gb) * g + fix_coef * b).astype(np.float32)
            self.qg = ((w * sl) * g).astype(np.float32)
        # residual terms: r = b_r - g_r (g_r . d) - sl_r (nn d - S)
        if infinite.any():
            self.b_r = np.where(infinite, np.float32(0), b).astype(np.float32)
            self.g_r = np.where(infinite, np.float32(0), g).astype(np.float32)
            self.sl_r = np.where(infinite, np.float32(lam), sl).astype(np.float32)
        else:  # no copies (memory)
            self.b_r, self.g_r, self.sl_r = b, g, sl
        self._blocks = None

    def smooth(self, disp: np.ndarray, sweeps: int) -> None:
        """``sweeps`` red-black Gauss-Seidel sweeps on ``disp``, in place.

        Works on the parity sub-lattices: a voxel's face neighbours along ``axis`` are in
        the sub-lattice whose parity differs in that axis only, at index ``a`` and
        ``a - 1`` (even parity) or ``a`` and ``a + 1`` (odd parity).
        """
        if sweeps <= 0:
            return
        dim = disp.shape[0]
        if self._blocks is None:
            self._blocks = {name: _split(getattr(self, name), dim)
                            for name in ("a", "c0", "qg", "grad")}
            self.a = self.c0 = self.qg = None  # only the sub-lattice copies are used
        blk = self._blocks
        d = _split(disp, dim)
        colours = [[p for p in _parities(dim) if sum(p) % 2 == c] for c in (0, 1)]
        for _ in range(sweeps):
            for colour in colours:
                for p in colour:
                    S = np.zeros_like(d[p])
                    for axis in range(dim):
                        q = list(p)
                        q[axis] = 1 - p[axis]
                        partner = d[tuple(q)]
                        _add_shifted(S, partner, axis + 1, 0)
                        _add_shifted(S, partner, axis + 1, -1 if p[axis] == 0 else 1)
                    gS = _dot(blk["grad"][p], S)
                    out = d[p]
                    for c in range(dim):
                        np.multiply(blk["a"][p], S[c], out=out[c])
                        out[c] += blk["c0"][p][c]
                        out[c] -= blk["qg"][p][c] * gS
        _merge(d, disp, dim)

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
    level.smooth(disp, k)
    if n > 0:
        sub_target = downsample_field(level.residual(disp))
        sub_sigma = None if sigma_sq is None else downsample(sigma_sq)
        sub_grad = downsample_field(grad)
        sub_disp = np.zeros_like(sub_target)
        v_cycle(n - 1, k, None, sub_sigma, sub_grad, sub_target, lam * 0.25, sub_disp)
        disp += vf.upsample_field_2x(sub_disp, disp.shape[1:])
        level.smooth(disp, k)
    d = np.asarray(delta, dtype=np.float32).ravel() if delta is not None else None
    return float(np.dot(d, d)) if d is not None else 0.0


def system_residual(delta, sigma_sq, grad, lam: float, disp: np.ndarray) -> np.ndarray:
    """Residual of the finest-grid system for ``disp`` (for tests and diagnostics)."""
    return _Level(delta, sigma_sq, grad, None, lam).residual(disp)
