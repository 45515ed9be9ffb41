"""Samplers of the affine engine: resampling on grids, sample points, interpolation kernels.

Everything works in **voxel coordinates** of the image being sampled (index units, axis
order of the array); world (mm) coordinates are handled by the callers.

* :func:`resample_linear` / :func:`resample_nearest` -- a whole output grid
  ``out[i] = image(comp . i)`` (``comp``: output voxel -> image voxel), DIPY's rules
  (k-linear with zero padding; nearest with x.5 rounding down);
* :class:`LinearSampler` / :class:`NearestSampler` -- scattered points (the metric's
  samples), float32, the linear one with the exact derivative of its interpolant;
* :func:`sample_grid` -- the metric's sample points: every voxel (dense) or DIPY's
  jittered regular grid (sparse);
* :func:`cubic_bspline_weights` -- the Parzen-window kernel and its derivative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.ndimage as ndi

from synflow._parallel import run_slabs

__all__ = [
    "LinearSampler",
    "NearestSampler",
    "cubic_bspline_weights",
    "nearest_index",
    "resample_linear",
    "resample_nearest",
    "sample_grid",
]



def resample_linear(image: np.ndarray, shape: Sequence[int], comp: np.ndarray) -> np.ndarray:
    """``out[i] = image(comp . i)`` (voxel -> voxel), k-linear with zero padding, float64.

    Equal to ``map_coordinates(order=1, mode='grid-constant', cval=0)`` (DIPY's rule) to
    float64 rounding.  3-D images use :func:`_trilinear_3d` (as fast as DIPY's Cython kernel);
    2-D images use SciPy's ``affine_transform``.
    """
    img = np.ascontiguousarray(image, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    dim = len(shape)
    if dim == 3:
        return _trilinear_3d(img, shape, np.asarray(comp, dtype=np.float64))
    out = np.empty(shape, dtype=np.float64)
    mat = comp[:dim, :dim]

    def slab(a: int, b: int) -> None:
        off = comp[:dim, dim] + mat[:, 0] * a
        ndi.affine_transform(img, mat, offset=off, output_shape=(b - a,) + shape[1:],
                             output=out[a:b], order=1, mode="grid-constant", cval=0.0,
                             prefilter=False)

    run_slabs(slab, shape[0], min_slab=4, max_slabs=8)
    return out


#: Output planes interpolated together: arrays of a few hundred kB stay in cache.
_PLANES = 2


def _trilinear_3d(img: np.ndarray, shape: tuple[int, ...], comp: np.ndarray) -> np.ndarray:
    """Trilinear pull of a float64 volume, zero padding, whole-array gathers.

    The image gets a one-voxel zero border, so after clamping every coordinate to
    ``[-1, n]`` all 8 corners of every sample are valid indices (points further out land on
    the zero border with weight 1, i.e. 0, exactly as ``grid-constant`` gives).
    """
    n = np.array(img.shape)
    padded = np.zeros(tuple(n + 2))
    padded[1:-1, 1:-1, 1:-1] = img
    flat = padded.ravel()
    s0, s1 = padded.shape[1] * padded.shape[2], padded.shape[2]
    out = np.empty(shape, dtype=np.float64)
    mat, shift = comp[:3, :3], comp[:3, 3]
    j = np.arange(shape[1], dtype=np.float64)[:, None]
    k = np.arange(shape[2], dtype=np.float64)[None, :]
    plane = [shift[r] + mat[r, 1] * j + mat[r, 2] * k for r in range(3)]

    def block(a: int, b: int) -> None:
        i = np.arange(a, b, dtype=np.float64)[:, None, None]
        base, weights = 0, []
        for r, stride in enumerate((s0, s1, 1)):
            x = np.clip(mat[r, 0] * i + plane[r], -1.0, float(n[r])) + 1.0
            cell = np.minimum(np.floor(x).astype(np.intp), n[r])
            weights.append(x - cell)
            base = base + cell * stride
        wx, wy, wz = weights
        vz = 1 - wz

        def line(o: int) -> np.ndarray:  # along the last axis; flat[o:][base] = flat[base + o]
            lo = flat[o:].take(base)
            hi = flat[o + 1:].take(base)
            lo *= vz
            hi *= wz
            lo += hi
            return lo

        y0 = line(0)
        y0 += (line(s1) - y0) * wy
        y1 = line(s0)
        y1 += (line(s0 + s1) - y1) * wy
        y1 -= y0
        y1 *= wx
        y1 += y0
        out[a:b] = y1

    def slab(a: int, b: int) -> None:
        for lo in range(a, b, _PLANES):
            block(lo, min(lo + _PLANES, b))

    run_slabs(slab, shape[0], min_slab=4, max_slabs=8)
    return out


def nearest_index(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """DIPY's NN rule on one axis: inside iff ``0 <= x <= n-1``; fractions > 0.5 round up."""
    inside = (x >= 0) & (x <= n - 1)
    idx = np.ceil(x - 0.5)
    np.clip(idx, 0, n - 1, out=idx)
    return idx.astype(np.intp), inside


def resample_nearest(image: np.ndarray, shape: Sequence[int], comp: np.ndarray) -> np.ndarray:
    """``out[i] = image(round(comp . i))`` with DIPY's nearest-neighbour rule; keeps dtype."""
    img = np.asarray(image)
    shape = tuple(int(s) for s in shape)
    dim = len(shape)
    out = np.zeros(shape, dtype=img.dtype)
    flat_img = np.ascontiguousarray(img).ravel()
    strides = np.array([int(np.prod(img.shape[a + 1:])) for a in range(dim)], dtype=np.intp)
    axes = [np.arange(s, dtype=np.float64) for s in shape]

    def slab(a: int, b: int) -> None:
        grids = np.meshgrid(axes[0][a:b], *axes[1:], indexing="ij")
        flat = np.zeros(grids[0].shape, dtype=np.intp)
        ok = np.ones(grids[0].shape, dtype=bool)
        for p in range(dim):
            x = comp[p, dim] + sum(comp[p, q] * grids[q] for q in range(dim))
            idx, inside = nearest_index(x, img.shape[p])
            flat += idx * strides[p]
            ok &= inside
        vals = flat_img[flat]
        out[a:b] = np.where(ok, vals, np.zeros((), dtype=img.dtype))

    run_slabs(slab, shape[0], min_slab=4, max_slabs=8)
    return out


class LinearSampler:
    """Zero-padded k-linear sampler of a float32 image at voxel coordinates.

    The image is padded with two zero layers on each side of every axis; coordinates are
    clipped to ``[-2, n]`` so that every lookup is in bounds and anything outside
    ``(-1, n)`` interpolates to exactly 0 with a zero derivative (DIPY's rule).  Also
    returns the exact derivative of the interpolant with respect to the voxel coordinates.
    """

    def __init__(self, image: np.ndarray) -> None:
        img = np.asarray(image, dtype=np.float32)
        self.dim = img.ndim
        self.shape = img.shape
        pad = np.zeros(tuple(n + 4 for n in img.shape), dtype=np.float32)
        pad[tuple(slice(2, n + 2) for n in img.shape)] = img
        self.flat = pad.ravel()
        self.strides = [s // pad.itemsize for s in pad.strides]
        self.hi = [float(n + 2) for n in img.shape]

    def __call__(self, q: Sequence[np.ndarray], grad: bool
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """Values ``(n,)`` and, if ``grad``, voxel-space derivatives ``(dim, n)`` at ``q``."""
        fr = []
        base = None
        for p in range(self.dim):
            x = q[p] + np.float32(2.0)
            np.clip(x, 0.0, self.hi[p], out=x)
            i = x.astype(np.intp)
            x -= i
            fr.append(x)
            i *= self.strides[p]
            base = i if base is None else base + i
        if self.dim == 3:
            return self._trilinear(base, fr, grad)
        return self._bilinear(base, fr, grad)

    def _trilinear(self, base: np.ndarray, fr: list[np.ndarray], grad: bool
                   ) -> tuple[np.ndarray, np.ndarray | None]:
        take = self.flat.take
        s0, s1 = self.strides[0], self.strides[1]
        fx, fy, fz = fr
        v000 = take(base)
        v001 = take(base + 1)
        b = base + s1
        v010 = take(b)
        v011 = take(b + 1)
        b = base + s0
        v100 = take(b)
        v101 = take(b + 1)
        b += s1
        v110 = take(b)
        v111 = take(b + 1)
        d00 = v001 - v000
        d01 = v011 - v010
        d10 = v101 - v100
        d11 = v111 - v110
        a00 = v000 + fz * d00
        a01 = v010 + fz * d01
        a10 = v100 + fz * d10
        a11 = v110 + fz * d11
        e0 = a01 - a00
        e1 = a11 - a10
        b0 = a00 + fy * e0
        b1 = a10 + fy * e1
        g = np.empty((3, fx.size), dtype=np.float32)
        g0 = np.subtract(b1, b0, out=g[0])
        val = b0 + fx * g0
        if not grad:
            return val, None
        e1 -= e0
        e1 *= fx
        np.add(e0, e1, out=g[1])
        d01 -= d00
        d01 *= fy
        d00 += d01  # c0
        d11 -= d10
        d11 *= fy
        d10 += d11  # c1
        d10 -= d00
        d10 *= fx
        np.add(d00, d10, out=g[2])
        return val, g

    def _bilinear(self, base: np.ndarray, fr: list[np.ndarray], grad: bool
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        take = self.flat.take
        s0 = self.strides[0]
        fx, fy = fr
        v00 = take(base)
        v01 = take(base + 1)
        v10 = take(base + s0)
        v11 = take(base + s0 + 1)
        d0 = v01 - v00
        d1 = v11 - v10
        a0 = v00 + fy * d0
        a1 = v10 + fy * d1
        g = np.empty((2, fx.size), dtype=np.float32)
        g0 = np.subtract(a1, a0, out=g[0])
        val = a0 + fx * g0
        if not grad:
            return val, None
        np.add(d0, fx * (d1 - d0), out=g[1])
        return val, g


class NearestSampler:
    """DIPY-rule nearest-neighbour lookup of a boolean mask at voxel coordinates."""

    def __init__(self, mask: np.ndarray) -> None:
        m = np.asarray(mask) != 0
        self.shape = m.shape
        self.flat = np.ascontiguousarray(m).ravel()
        self.strides = [int(np.prod(m.shape[a + 1:])) for a in range(m.ndim)]

    def __call__(self, q: Sequence[np.ndarray]) -> np.ndarray:
        flat = None
        ok = None
        for p, n in enumerate(self.shape):
            idx, inside = nearest_index(q[p], n)
            idx *= self.strides[p]
            flat = idx if flat is None else flat + idx
            ok = inside if ok is None else ok & inside
        return self.flat.take(flat) & ok


def cubic_bspline_weights(t: np.ndarray, derivative: bool) -> list[tuple[int, np.ndarray]]:
    """Cubic B-spline Parzen weights ``beta(o - t)`` (or ``beta'``) for bin offsets ``o``.

    Returns ``(o, weights)`` pairs; ``o`` in ``-2..2``.  Exact for any ``t``: uses the
    4-term closed form when ``0 <= t <= 1`` and the piecewise definition otherwise.
    """
    if t.size == 0 or (float(t.min()) >= 0.0 and float(t.max()) <= 1.0):
        u = 1.0 - t
        t2 = t * t
        u2 = u * u
        if not derivative:
            return [(-1, u2 * u * np.float32(1 / 6)),
                    (0, np.float32(2 / 3) - t2 + np.float32(0.5) * t2 * t),
                    (1, np.float32(2 / 3) - u2 + np.float32(0.5) * u2 * u),
                    (2, t2 * t * np.float32(1 / 6))]
        return [(-1, np.float32(0.5) * u2),
                (0, t * (np.float32(2.0) - np.float32(1.5) * t)),
                (1, u * (np.float32(1.5) * u - np.float32(2.0))),
                (2, np.float32(-0.5) * t2)]
    out = []
    for o in range(-2, 3):
        x = np.float32(o) - t
        ax = np.abs(x)
        if not derivative:
            inner = (np.float32(4.0) - np.float32(6.0) * x * x + np.float32(3.0) * x * x * ax)
            outer = (np.float32(2.0) - ax) ** 3
            w = np.where(ax < 1, inner / np.float32(6.0),
                         np.where(ax < 2, outer / np.float32(6.0), np.float32(0.0)))
        else:
            inner = np.float32(-2.0) * x + np.float32(1.5) * x * ax
            outer = -np.sign(x) * np.float32(0.5) * (np.float32(2.0) - ax) ** 2
            w = np.where(ax < 1, inner, np.where(ax < 2, outer, np.float32(0.0)))
        out.append((o, w.astype(np.float32)))
    return out


def sample_grid(static: np.ndarray, smask: np.ndarray | None,
                sampling_proportion: float | None) -> tuple[list[np.ndarray], np.ndarray]:
    """Sample points of the MI metric on ``static`` (voxel coordinates) and their values.

    ``sampling_proportion=None``: every voxel of ``static`` (inside ``smask`` if given).
    A float ``p``: every ``ceil(1/p)``-th voxel in C order plus N(0, 0.25^2)-voxel jitter
    (``default_rng(1234)``, as DIPY), kept if its nearest voxel is inside ``smask``;
    values are interpolated linearly.  Returns ``(coords, values)``: ``dim`` float32
    arrays of voxel coordinates and the float32 static values there.
    """
    if sampling_proportion is None:
        if smask is None:
            vox = [a.ravel() for a in np.indices(static.shape, dtype=np.float32)]
            return vox, static.ravel()
        nz = np.nonzero(smask)
        return [a.astype(np.float32) for a in nz], static[nz]
    k = int(math.ceil(1.0 / float(sampling_proportion)))
    lin = np.arange(0, static.size, k)
    rng = np.random.default_rng(1234)
    idx = np.unravel_index(lin, static.shape)
    vox = [(a + rng.normal(0.0, 0.25, size=a.size)).astype(np.float32) for a in idx]
    if smask is not None:
        keep = NearestSampler(smask)(vox)
        vox = [a[keep] for a in vox]
    svals, _ = LinearSampler(static)(vox, grad=False)
    return vox, svals
