"""Sampling, composition and inversion of dense displacement fields.

These are the hot loops of SyN, written as whole-array NumPy/SciPy operations and
split into slabs that run on a small thread pool (``scipy.ndimage`` releases the GIL).

Conventions used in this module (internal, *voxel units*):

* a field on a grid of shape ``S`` is stored **component first**, ``(dim,) + S``,
  float32, in voxels of that grid: ``d[:, i, j, k]`` is the displacement of voxel
  ``(i, j, k)``, so the point it sends ``x`` to is ``x + d(x)``;
* coordinate arrays are ``(dim,) + out_shape`` voxel coordinates into the sampled array;
* fields are sampled with trilinear interpolation and **edge clamping** (a field is
  extended by its border values), images with trilinear interpolation and
  **zero padding**, exactly like DIPY's ``warp`` (``map_coordinates(order=1,
  mode='grid-constant')``).

Public objects (``DiffeomorphicMap``) convert to DIPY's layout, ``S + (dim,)`` in mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from synflow._parallel import run_slabs, run_tasks

#: Slabs thinner than this are not worth a thread hand-off.
_MIN_SLAB = 8
#: Points per slab of :func:`sample_field_cells` (its temporaries then stay in cache).
_CELL_SLAB = 32768


def _as_f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def sample_image(image: np.ndarray, coords: np.ndarray, order: int = 1,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Sample ``image`` at voxel ``coords`` with zero padding (DIPY's convention).

    Parameters
    ----------
    image : (X, Y[, Z]) array, sampled as float32 (linear) or its own dtype (nearest).
    coords : (dim,) + out_shape voxel coordinates into ``image``.
    order : 1 for trilinear (points in (-1, n) get partial weights, further out 0),
        0 for nearest neighbour with DIPY's rule: inside iff ``0 <= x <= n-1``,
        fractional parts > 0.5 round up and exactly 0.5 rounds down.
    """
    out_shape = coords.shape[1:]
    if order == 1:
        image = _as_f32(image)
        if out is None:
            out = np.empty(out_shape, dtype=np.float32)

        def work(a: int, b: int) -> None:
            ndi.map_coordinates(image, coords[:, a:b], output=out[a:b], order=1,
                                mode="grid-constant", cval=0.0, prefilter=False)

        run_slabs(work, out_shape[0], min_slab=_MIN_SLAB)
        return out
    if order != 0:
        raise ValueError(f"interpolation order must be 0 or 1, got {order}")
    if out is None:
        out = np.zeros(out_shape, dtype=image.dtype)
    flat = image.reshape(-1)
    strides = np.cumprod((1,) + image.shape[:0:-1])[::-1]

    def work_nn(a: int, b: int) -> None:
        c = coords[:, a:b]
        inside = np.ones(c.shape[1:], dtype=bool)
        index = np.zeros(c.shape[1:], dtype=np.intp)
        for axis, n in enumerate(image.shape):
            x = c[axis]
            inside &= (x >= 0) & (x <= n - 1)
            # ceil(x - 0.5): 0.5 rounds down, anything above rounds up.
            index += np.clip(np.ceil(x - 0.5), 0, n - 1).astype(np.intp) * strides[axis]
        vals = flat.take(index)
        vals[~inside] = 0
        out[a:b] = vals

    run_slabs(work_nn, out_shape[0], min_slab=_MIN_SLAB)
    return out


#: Zero border added by :func:`pad_image` (two voxels: a point in (-1, 0) needs pad[-1]).
PAD = 2


def pad_image(image: np.ndarray) -> np.ndarray:
    """Zero-pad a float32 image by :data:`PAD` voxels for :func:`sample_padded`."""
    return np.pad(_as_f32(image), PAD)


def sample_padded(padded: np.ndarray, coords: np.ndarray,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Trilinear sample of a :func:`pad_image` result at coordinates of the *padded* grid.

    Identical to ``sample_image(image, coords - PAD)`` (zero padding), but scipy's
    edge-clamping mode is about a third faster than its constant mode, and the zero
    border makes clamping equivalent.  Add ``PAD`` to the coordinates through the
    sampling matrix, where it costs nothing.
    """
    out_shape = coords.shape[1:]
    if out is None:
        out = np.empty(out_shape, dtype=np.float32)

    def work(a: int, b: int) -> None:
        ndi.map_coordinates(padded, coords[:, a:b], output=out[a:b], order=1,
                            mode="nearest", prefilter=False)

    run_slabs(work, out_shape[0], min_slab=_MIN_SLAB)
    return out


def sample_field(field: np.ndarray, coords: np.ndarray,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Trilinear sample of a component-first ``field`` at voxel ``coords``, edge-clamped.

    Returns ``(dim,) + coords.shape[1:]`` float32.
    """
    dim = field.shape[0]
    out_shape = coords.shape[1:]
    if out is None:
        out = np.empty((dim,) + out_shape, dtype=np.float32)

    def work(a: int, b: int) -> None:
        c = coords[:, a:b]
        for comp in range(dim):
            ndi.map_coordinates(field[comp], c, output=out[comp, a:b], order=1,
                                mode="nearest", prefilter=False)

    run_slabs(work, out_shape[0], min_slab=_MIN_SLAB)
    return out


def grid_points(shape: tuple[int, ...], displacement: np.ndarray | None = None,
                scale: float = 1.0) -> np.ndarray:
    """Voxel coordinates ``x + scale * displacement(x)`` of every voxel of ``shape``.

    Returns a new ``(dim,) + shape`` float32 array.
    """
    dim = len(shape)
    pts = np.empty((dim,) + tuple(shape), dtype=np.float32)
    for axis in range(dim):
        ramp = np.arange(shape[axis], dtype=np.float32).reshape(
            [-1 if a == axis else 1 for a in range(dim)])
        if displacement is None:
            pts[axis] = ramp
        elif scale == 1.0:
            np.add(displacement[axis], ramp, out=pts[axis])
        else:
            np.multiply(displacement[axis], np.float32(scale), out=pts[axis])
            pts[axis] += ramp
    return pts


def affine_points(matrix: np.ndarray, shape: tuple[int, ...],
                  displacement: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
    """Coordinates ``M @ (x + displacement(x))`` for every voxel ``x`` of ``shape``.

    ``matrix`` is a ``(dim+1, dim+1)`` homogeneous matrix; ``displacement`` a component-first
    field in voxels of the ``shape`` grid (or None).  Returns ``(dim,) + shape`` float32.
    The affine part is built from broadcast 1-D ramps, so it costs one pass per output axis.
    ``dtype=np.float64`` keeps full precision (for resampling on grids with large offsets).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    dim = len(shape)
    lin = matrix[:dim, :dim]
    ramps = [np.arange(n, dtype=np.float64).reshape([-1 if a == ax else 1 for a in range(dim)])
             for ax, n in enumerate(shape)]
    out = np.empty((dim,) + tuple(shape), dtype=dtype)
    for r in range(dim):
        base = matrix[r, dim]
        acc = None
        for c in range(dim):
            if lin[r, c] != 0.0:
                term = (lin[r, c] * ramps[c]).astype(dtype)
                acc = term if acc is None else acc + term
        if acc is None:
            acc = np.zeros((1,) * dim, dtype=dtype)
        out[r] = acc + dtype(base)
        if displacement is not None:
            for c in range(dim):
                if lin[r, c] != 0.0:
                    out[r] += dtype(lin[r, c]) * displacement[c]
    return out


def compose(d1: np.ndarray, d2: np.ndarray, t: float = 1.0) -> np.ndarray:
    """Compose two fields on the same grid: ``c(x) = d1(x) + t * d2(x + d1(x))``.

    In maps: ``id + c = (id + t*d2) o (id + d1)`` (apply ``d1`` first).  Voxel units,
    component first; ``d2`` is sampled trilinearly with edge clamping.
    """
    pts = grid_points(d1.shape[1:], d1)
    out = sample_field(d2, pts)
    if t != 1.0:
        out *= np.float32(t)
    out += d1
    return out


def _central_difference(a: np.ndarray, axis: int, out: np.ndarray) -> np.ndarray:
    """``np.gradient(a, axis=axis)`` (central inside, one-sided at the ends) into ``out``."""
    n = a.shape[axis]

    def sl(start, stop):
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(start, stop)
        return tuple(idx)

    np.subtract(a[sl(2, n)], a[sl(0, n - 2)], out=out[sl(1, n - 1)])
    out[sl(1, n - 1)] *= np.float32(0.5)
    np.subtract(a[sl(1, 2)], a[sl(0, 1)], out=out[sl(0, 1)])
    np.subtract(a[sl(n - 1, n)], a[sl(n - 2, n - 1)], out=out[sl(n - 1, n)])
    return out


def compose_small(step: np.ndarray, field: np.ndarray, diffusion: float = 0.0) -> np.ndarray:
    """``c(x) = step(x) + field(x + step(x))`` for a sub-voxel ``step``, by Taylor expansion.

    ``field(x + s) = field(x) + Dfield(x) s + O(|s|^2 |D^2 field|)``.  For the steps SyN
    takes (``|s| <= step_length <= 1`` voxel, smooth fields) the remainder is smaller than
    the error trilinear interpolation itself makes, and it needs no gather: nine
    finite differences instead of three trilinear samplings.  Voxel units, component first.

    ``diffusion`` (voxels^2) then smooths the result with a 3-tap binomial kernel
    ``[d/2, 1 - d, d/2]`` along each axis (variance ``d`` per axis, edges replicated).
    """
    dim = field.shape[0]
    if min(field.shape[1:]) < 2:
        return compose(step, field)
    out = np.add(field, step)
    kernel = np.array([diffusion / 2, 1.0 - diffusion, diffusion / 2], dtype=np.float64)

    def one(c: int):
        def work() -> None:
            buf = np.empty(field.shape[1:], dtype=np.float32)
            for k in range(dim):
                _central_difference(field[c], k, buf)
                buf *= step[k]
                out[c] += buf
            if diffusion > 0:
                for k in range(dim):
                    ndi.correlate1d(out[c], kernel, axis=k, output=buf, mode="nearest")
                    out[c] = buf
        return work

    run_tasks([one(c) for c in range(dim)])
    return out


def upsample_field_2x(field: np.ndarray, new_shape: tuple[int, ...]) -> np.ndarray:
    """``new[i] = field(i / 2)`` (trilinear, edge-clamped), separably, values unchanged.

    The exact resampling SyN needs between pyramid levels whose spacings differ by 2 and
    whose grids share their first voxel; voxel units are *not* rescaled here.
    """
    out = field
    for axis in range(1, field.ndim):
        n_new = new_shape[axis - 1]
        n_old = out.shape[axis]
        shape = list(out.shape)
        shape[axis] = n_new
        res = np.empty(shape, dtype=np.float32)

        def sl(arr, start, stop, step=1, _axis=axis):
            idx = [slice(None)] * arr.ndim
            idx[_axis] = slice(start, stop, step)
            return arr[tuple(idx)]

        n_even = (n_new + 1) // 2  # new indices 0, 2, 4, ... -> old 0, 1, 2, ...
        n_odd = n_new // 2  # new indices 1, 3, ... -> old 0.5, 1.5, ...
        idx_e = np.minimum(np.arange(n_even), n_old - 1)
        even = np.take(out, idx_e, axis=axis)
        sl(res, 0, None, 2)[...] = even
        lo = np.minimum(np.arange(n_odd), n_old - 1)
        hi = np.minimum(np.arange(n_odd) + 1, n_old - 1)
        sl(res, 1, None, 2)[...] = 0.5 * (np.take(out, lo, axis=axis) + np.take(out, hi, axis=axis))
        out = res
    return out


def invert(d: np.ndarray, max_iter: int = 20, tol: float = 1e-3,
           start: np.ndarray | None = None, multigrid: bool = True) -> np.ndarray:
    """Invert a displacement field by fixed-point iteration.

    Finds ``p`` with ``p(x) + d(x + p(x)) = 0``, i.e. ``id + p = (id + d)^-1`` (voxel units,
    component first).  Iterates ``p <- p - q`` with the residual ``q = p + d(x + p)``; the
    update is halved whenever the mean residual grows, which keeps it stable where the
    field is stiff.  Stops after ``max_iter`` iterations or when the mean residual norm
    (voxels) is at most ``tol``.

    Without a ``start``, and when the grid is large, the first guess comes from inverting
    the field subsampled by 2 (recursively) and upsampling that inverse: the fine grid
    then needs two or three iterations instead of five or six.
    """
    shape = d.shape[1:]
    if start is not None:
        p = start.astype(np.float32, copy=True)
    elif multigrid and min(shape) >= 24:
        coarse = d[(slice(None),) + (slice(None, None, 2),) * len(shape)] * np.float32(0.5)
        p_coarse = invert(np.ascontiguousarray(coarse), max_iter, tol * 2, multigrid=True)
        p = upsample_field_2x(p_coarse, shape)
        p *= np.float32(2.0)
    else:
        p = -d
    prev = None
    step = np.float32(1.0)
    for _ in range(max_iter):
        q = sample_field(d, grid_points(shape, p))
        q += p
        err = float(np.sqrt(np.einsum("i...,i...->...", q, q)).mean())
        if prev is not None and err > prev:
            step = np.float32(step * 0.5)
        # The residual is never wasted: the update is applied before deciding to stop.
        if step == 1.0:
            p -= q
        else:
            p -= step * q
        if err <= tol:
            break
        # Linear convergence: the residual after this update is about rate * err.
        if prev is not None and err < prev and (err / prev) * err <= tol:
            break
        prev = err
    return p


def field_norm_max(d: np.ndarray) -> float:
    """Largest Euclidean norm of a component-first field."""
    return float(np.sqrt(np.einsum("i...,i...->...", d, d).max()))


def _axis_lerp(a: np.ndarray, axis: int, scale: float, offset: float, n_out: int) -> np.ndarray:
    """``out[.., i, ..] = a(scale * i + offset)`` along ``axis``, linear, zero outside.

    Exactly DIPY's partial-weight rule: a neighbour outside ``[0, n-1]`` contributes 0.
    """
    n = a.shape[axis]
    x = scale * np.arange(n_out, dtype=np.float64) + offset
    k = np.floor(x)
    f = (x - k).astype(a.dtype)
    k = k.astype(np.intp)
    w_lo = np.where((k >= 0) & (k <= n - 1), 1 - f, 0).astype(a.dtype)
    w_hi = np.where((k >= -1) & (k <= n - 2), f, 0).astype(a.dtype)
    bshape = [1] * a.ndim
    bshape[axis] = n_out
    lo = np.take(a, np.clip(k, 0, n - 1), axis=axis)
    lo *= w_lo.reshape(bshape)
    hi = np.take(a, np.clip(k + 1, 0, n - 1), axis=axis)
    hi *= w_hi.reshape(bshape)
    lo += hi
    return lo


def _lerp(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.ndarray:
    """``a + f * (b - a)``, in place in ``a`` and ``b`` (no temporaries)."""
    b -= a
    b *= f
    a += b
    return a


def sample_field_cells(field: np.ndarray, coords, zero_outside: bool = False,
                       add: np.ndarray | None = None,
                       out_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Trilinear sample of a component-first ``field`` at ``coords``, no boundary rule.

    Exact wherever ``0 <= x <= n - 1`` on every axis; elsewhere the nearest boundary
    cell is *extrapolated* linearly, unless ``zero_outside``: then every point not
    strictly inside (``0 <= x < n - 1`` on every axis, DIPY's composition rule) is 0.
    (On a field zero-padded by one voxel, that rule gives DIPY's partial weights.)
    ``add`` (same shape as the result) is added before the zeroing.  ``coords`` may
    also be a function ``coords(a, b)`` returning the coordinates of output rows
    ``a:b`` (then ``out_shape`` is required), so they are built slab by slab.  One
    set of cell indices and weights serves every component and the eight corners are
    read with ``np.take`` on offset views: about three times faster than
    ``map_coordinates`` per component.  Returns ``(dim,) + coords.shape[1:]`` float32.
    """
    field = _as_f32(field)
    dim = field.shape[0]
    shape = field.shape[1:]
    if min(shape) < 2:
        raise ValueError(f"field grid {shape} needs at least 2 voxels per axis")
    strides = [int(np.prod(shape[ax + 1:])) for ax in range(dim)]
    if out_shape is None:
        out_shape = coords.shape[1:]
    out_shape = tuple(out_shape)
    out = np.empty((dim,) + out_shape, dtype=np.float32)
    flats = [np.ascontiguousarray(field[c]).ravel() for c in range(dim)]

    def work(a: int, b: int) -> None:
        base = np.zeros((b - a,) + out_shape[1:], dtype=np.intp)
        fracs = []
        inside = np.ones(base.shape, dtype=bool) if zero_outside else None
        slab = coords(a, b) if callable(coords) else coords[:, a:b]
        for ax in range(dim):
            x = slab[ax]
            if zero_outside:
                inside &= (x >= 0) & (x < shape[ax] - 1)
            cell = np.clip(np.floor(x), 0, shape[ax] - 2)
            fracs.append((x - cell).astype(np.float32, copy=False))
            idx = cell.astype(np.intp)
            idx *= strides[ax]
            base += idx

        def corner(flat: np.ndarray, ax: int, off: int) -> np.ndarray:
            if ax == dim:
                return flat[off:].take(base)
            return _lerp(corner(flat, ax + 1, off), corner(flat, ax + 1, off + strides[ax]),
                         fracs[ax])

        for c in range(dim):
            value = corner(flats[c], 0, 0)
            if add is not None:
                value += add[c, a:b]
            if zero_outside:
                value *= inside
            out[c, a:b] = value

    # Slabs of ~_CELL_SLAB points keep each temporary in cache (~25% faster than 8 slabs).
    n_slabs = max(1, min(out_shape[0], int(np.prod(out_shape)) // _CELL_SLAB))
    run_slabs(work, out_shape[0], min_slab=1, max_slabs=n_slabs)
    return out


def sample_field_affine(field: np.ndarray, matrix: np.ndarray,
                        out_shape: tuple[int, ...]) -> np.ndarray:
    """Component-first ``field`` sampled trilinearly at ``matrix @ i``, zero padded.

    ``out[:, i] = field(matrix @ i)`` for every voxel ``i`` of ``out_shape``; points
    outside get DIPY's partial weights (neighbours outside the grid count as 0), the
    rule of DIPY's ``simplify_warp_function``.  An axis-aligned ``matrix`` (diagonal
    linear part) is done separably, one 1-D interpolation per axis; any other matrix
    with ``map_coordinates`` at float64 coordinates.  Returns ``(dim,) + out_shape``
    float32.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    dim = field.shape[0]
    lin = matrix[:dim, :dim]
    out_shape = tuple(int(s) for s in out_shape)
    if np.count_nonzero(lin - np.diag(np.diag(lin))) == 0:
        out = _as_f32(field)
        for ax in range(dim):
            out = _axis_lerp(out, ax + 1, lin[ax, ax], matrix[ax, dim], out_shape[ax])
        return out
    # Zero-pad by one voxel: the cell rule then gives DIPY's partial weights in (-1, n).
    pad = np.eye(dim + 1)
    pad[:dim, dim] = 1.0
    to_padded = pad @ matrix
    padded = np.pad(_as_f32(field), [(0, 0)] + [(1, 1)] * dim)

    def points(a: int, b: int) -> np.ndarray:  # float64 coordinates of output rows a:b
        rows = np.eye(dim + 1)
        rows[0, dim] = a
        return affine_points(to_padded @ rows, (b - a,) + out_shape[1:], dtype=np.float64)

    return sample_field_cells(padded, points, zero_outside=True, out_shape=out_shape)


def compose_inside(d1: np.ndarray, d2: np.ndarray, premult: np.ndarray | None = None
                   ) -> np.ndarray:
    """DIPY's ``compose_vector_fields``: ``c(i) = d1(i) + d2(i + B d1(i))``, 0 outside.

    ``d1`` on grid ``S1``, ``d2`` on grid ``S2`` (component first, float32, any units);
    ``B = premult`` (``(dim, dim)`` or homogeneous; only its linear part is used) turns
    ``d1``'s units into voxels of ``d2``'s grid (None = identity).  ``d2`` is sampled
    trilinearly; where ``i + B d1(i)`` is not strictly inside ``d2``'s grid
    (``0 <= x < n - 1`` on every axis, DIPY's rule) the result is the zero vector.
    """
    dim = d1.shape[0]
    shape = d1.shape[1:]
    lin = np.eye(dim) if premult is None else np.asarray(premult, dtype=np.float64)[:dim, :dim]

    def points(a: int, b: int) -> np.ndarray:  # i + B d1(i) for rows a:b
        pts = grid_points((b - a,) + shape[1:])
        pts[0] += np.float32(a)
        for r in range(dim):
            for c in range(dim):
                if lin[r, c] == 1.0:
                    pts[r] += d1[c, a:b]
                elif lin[r, c] != 0.0:
                    pts[r] += np.float32(lin[r, c]) * d1[c, a:b]
        return pts

    return sample_field_cells(d2, points, zero_outside=True, add=d1, out_shape=shape)
