"""Reslice a volume or series to a new voxel size (``dipy.align.reslice.reslice``).

DIPY resamples each volume with ``scipy.ndimage.affine_transform`` and the diagonal
matrix ``R = new_zooms / zooms`` (output voxel ``i`` samples input voxel ``R * i``).  That
whole operation -- SciPy's pre-padding (``'nearest'``, ``'grid-constant'``), its spline
prefilter and its interpolation with its boundary rules -- is linear in the data and in
``cval`` jointly, and with ``cval = 0`` it is the tensor product of three 1-D operators, one
per axis (the prefilter is separable, the interpolation weights are products of per-axis
weights, and "outside" is decided axis by axis).

Fast path (finite data): each axis's operator is a dense ``(n_out, n_in)`` matrix computed
*exactly as SciPy computes it*, by running SciPy's own 1-D ``affine_transform``
(``prefilter=True``) on the unit vectors (cached per ``(n_in, n_out, ratio, order, mode)``);
the three matrices are applied with BLAS matrix products to the whole series at once (the
volume index rides along as extra columns), in float32 for float32 input (float64
otherwise).  The ``cval`` term is ``cval`` times the operator applied to a zero volume with
``cval = 1``, which is ``1 - (1 - g_i) (x) (1 - g_j) (x) (1 - g_k)`` from the 1-D terms ``g``
(SciPy substitutes ``cval`` for every out-of-bounds tap and the weights sum to one).

Orders 0 and 1 have at most two non-zero weights per row: those operators are applied as
CSR products (one multiply-add pass per weight).  The outermost axis of the series' layout
is cut into slabs run on threads (BLAS on one thread inside them: nested BLAS threads were
measured several times slower on a loaded 2-core machine), each slab carried through all
three operators.  Weights below ``1e-24`` of their row's largest are dropped (they change
nothing and would be subnormal floats, ~100x slower in BLAS).

Data with NaN or inf are resliced by DIPY's own computation (SciPy per volume, volumes on
threads): how far a NaN spreads is decided by SciPy's per-volume filters, which a product
with zero weights would not reproduce.  Results equal DIPY's to float rounding.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sps
from scipy import ndimage as ndi

from synflow._parallel import run_slabs, run_tasks
from synflow.align.affine_checks import check_affine

__all__ = ["reslice"]

_MODES = ("constant", "nearest", "reflect", "wrap", "mirror", "grid-constant",
          "grid-mirror", "grid-wrap")


@functools.lru_cache(maxsize=32)
def _axis_matrix(n_in: int, n_out: int, ratio: float, order: int, mode: str) -> np.ndarray:
    """SciPy's whole 1-D operation along one axis as a dense ``(n_out, n_in)`` float64 matrix.

    Column ``j`` is ``affine_transform(e_j, [ratio], output_shape=(n_out,), order=order,
    mode=mode, cval=0, prefilter=True)`` -- SciPy's own pre-padding, spline prefilter,
    interpolation and boundary rules, applied to the unit vector ``e_j``.  Read-only (cached).
    """
    kw = dict(matrix=np.array([ratio]), output_shape=(n_out,), order=order, mode=mode,
              cval=0.0, prefilter=True)
    mat = np.empty((n_out, n_in), dtype=np.float64)
    unit = np.zeros(n_in, dtype=np.float64)
    for j in range(n_in):
        unit[j] = 1.0
        mat[:, j] = ndi.affine_transform(unit, **kw)
        unit[j] = 0.0
    # the prefilter's weights decay geometrically: those far below rounding of the row's
    # largest weight change nothing but would be subnormal floats (~100x slower BLAS)
    mat[np.abs(mat) < _TINY * np.abs(mat).max(axis=1, keepdims=True)] = 0.0
    mat.flags.writeable = False
    return mat


def _cval_term(shape_in: Sequence[int], shape_out: Sequence[int], ratio: np.ndarray,
               order: int, mode: str, cval: float) -> np.ndarray | None:
    """The 3-D operator applied to a zero volume with ``cval`` (``None`` when it is zero).

    Per axis, ``g`` is the 1-D operator on zeros with ``cval = 1`` (the weight SciPy gives
    to out-of-bounds taps, 1 outside the input); in 3-D a tap is in bounds only when it is
    in bounds on every axis, so the term is ``cval * (1 - (1-g_i)(x)(1-g_j)(x)(1-g_k))``.
    """
    if cval == 0 or mode not in ("constant", "grid-constant"):
        return None
    inside = []
    for n_in, n_out, r in zip(shape_in, shape_out, ratio, strict=True):
        g = ndi.affine_transform(np.zeros(n_in, dtype=np.float64), np.array([float(r)]),
                                 output_shape=(int(n_out),), order=order, mode=mode,
                                 cval=1.0, prefilter=True)
        inside.append(1.0 - g)
    term = 1.0 - np.einsum("i,j,k->ijk", *inside)
    return None if not np.any(term) else cval * term


def _axis_operator(n_in: int, n_out: int, ratio: float, order: int, mode: str,
                   work: type) -> np.ndarray | sps.csr_array:
    """One axis's operator in ``work``: a dense matrix, or a CSR matrix when sparse.

    Orders 0 and 1 have at most two non-zero weights per row (no prefilter): only those
    weights are used (which also keeps SciPy's order-0 selection exact); higher orders are
    dense (the prefilter is global) and go to BLAS.
    """
    mat = _axis_matrix(n_in, n_out, ratio, order, mode).astype(work)
    if int((mat != 0).sum(axis=1).max()) > _MAX_TAPS:
        return mat
    return sps.csr_array(mat)


#: Weights below this fraction of their row's largest are dropped (see _axis_matrix).
_TINY = 1e-24

#: Sparse products on rows shorter than this run on the transposed array (one call).
_SHORT_ROWS = 256

#: Rows with more non-zero weights than this are applied as a dense matrix product.
_MAX_TAPS = 4


def _apply_axis(x: np.ndarray, op: np.ndarray | sps.csr_array, axis: int) -> np.ndarray:
    """One axis's operator along axis ``axis`` of the C-contiguous ``x``, on slabs/threads.

    ``x`` is viewed as ``(pre, n, post)``: ``out[p] = op @ x[p]``.  Dense operators: serial
    BLAS per slab of ``pre`` (or per block of columns when ``pre`` is 1; strided views are
    BLAS-able); sparse ones: SciPy's CSR products (one multiply-add pass per weight).
    """
    shape = x.shape
    n_out = op.shape[0]
    pre, post = int(np.prod(shape[:axis])), int(np.prod(shape[axis + 1:]))
    x3 = x.reshape(pre, shape[axis], post)
    out = np.empty((pre, n_out, post), dtype=x.dtype)
    if sps.issparse(op):
        if post < _SHORT_ROWS:  # short rows: one product on the transposed array
            flat = np.ascontiguousarray(x3.transpose(1, 0, 2)).reshape(shape[axis], -1)
            out[...] = (op @ flat).reshape(n_out, pre, post).transpose(1, 0, 2)
        elif pre == 1:  # slabs of output rows, each reads only its input rows
            def rows(a: int, b: int) -> None:
                out[0, a:b] = op[a:b] @ x3[0]

            run_slabs(rows, n_out, max_slabs=8)
        else:
            def sparse(a: int, b: int) -> None:
                for p in range(a, b):
                    out[p] = op @ x3[p]

            run_slabs(sparse, pre, max_slabs=16)
    elif pre > 1:
        run_slabs(lambda a, b: np.matmul(op, x3[a:b], out=out[a:b]), pre, max_slabs=16)
    else:
        run_slabs(lambda a, b: np.matmul(op, x3[0, :, a:b], out=out[0, :, a:b]), post,
                  min_slab=4096, max_slabs=8)
    return out.reshape(shape[:axis] + (n_out,) + shape[axis + 1:])


def _serial_blas():
    """Context: BLAS on one thread (synflow's threads split the work; nested BLAS threads
    on a loaded machine were measured ~10x slower for these mid-sized products)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _reslice_dense(data: np.ndarray, new_shape: tuple[int, ...], ratio: np.ndarray,
                   order: int, mode: str, cval: float, work: type) -> np.ndarray:
    """The fast path: the three axis operators on the whole series, in ``work``.

    The series is taken in whichever layout is contiguous (C: volumes last; F: transposed,
    volumes first), so no volume is ever copied out of a strided view.  The outermost
    axis of that layout is cut into slabs run on threads, each slab carried through all
    three operators (small intermediates, no page faults on big fresh arrays): in F layout
    the slabs are volumes; in C layout they are output rows of axis 0 -- computed per slab
    from the rows they need when sparse, by one column-blocked product when dense.
    """
    series = data if data.ndim == 4 else data[..., None]
    fortran = not series.flags.c_contiguous and series.flags.f_contiguous
    x = series.T if fortran else series
    x = np.ascontiguousarray(x, dtype=work)  # C-contiguous either way
    sp = (3, 2, 1) if fortran else (0, 1, 2)  # position of spatial axis 0, 1, 2 in x
    ops = [_axis_operator(data.shape[ax], new_shape[ax], float(ratio[ax]), order, mode, work)
           for ax in range(3)]
    rest = [2, 1, 0] if fortran else [1, 2]  # axes applied per slab, outermost first
    with _serial_blas():
        first = fortran or not sps.issparse(ops[0])  # slabs start from x's own rows
        if not fortran and first:
            x = _apply_axis(x, ops[0], 0)
        n_slab = x.shape[0] if first else new_shape[0]
        res = np.empty((n_slab,) + tuple(new_shape[ax] for ax in rest) if fortran else
                       tuple(new_shape) + (x.shape[3],), dtype=work)

        def slab(a: int, b: int) -> None:
            if first:
                z = x[a:b]
            else:
                z = (ops[0][a:b] @ x.reshape(x.shape[0], -1)).reshape((b - a,) + x.shape[1:])
            for ax in rest:
                z = _apply_axis(z, ops[ax], sp[ax])
            res[a:b] = z

        run_slabs(slab, n_slab, max_slabs=32)
    res = res.T if fortran else res
    term = _cval_term(data.shape[:3], new_shape, ratio, order, mode, cval)
    if term is not None:
        res += term.astype(work)[..., None]
    return res if data.ndim == 4 else res[..., 0]


def _reslice_scipy(data: np.ndarray, new_shape: tuple[int, ...], ratio: np.ndarray,
                   order: int, mode: str, cval: float) -> np.ndarray:
    """DIPY's own computation (SciPy's ``affine_transform`` per volume), volumes on threads.

    Used for data with NaN or inf, whose spread SciPy's per-volume filters decide.
    """
    src = data[..., None] if data.ndim == 3 else data
    res = np.empty(new_shape + src.shape[3:], dtype=data.dtype)

    def task(t: int) -> None:
        res[..., t] = ndi.affine_transform(src[..., t], np.diag(ratio), output_shape=new_shape,
                                           order=order, mode=mode, cval=cval)

    run_tasks([lambda t=t: task(t) for t in range(src.shape[3])])
    return res if data.ndim == 4 else res[..., 0]


def _to_dtype(res: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``res`` in ``dtype``; integers rounded half away from zero and clipped, as SciPy."""
    if not np.issubdtype(dtype, np.integer):
        return res if res.dtype == dtype else res.astype(dtype)
    res = np.where(res < 0, np.ceil(res - 0.5), np.floor(res + 0.5))
    info = np.iinfo(dtype)
    np.clip(res, info.min, info.max, out=res)
    return res.astype(dtype)


def _check_zooms(z: Sequence[float], name: str) -> np.ndarray:
    try:
        arr = np.array(z, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be 3 voxel sizes (mm), got {z!r}") from exc
    if arr.size != 3 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be 3 positive voxel sizes (mm), got {z!r}")
    return arr


def _check_options(order: int, mode: str, num_processes: int) -> None:
    if int(order) != order or not 0 <= order <= 5:
        raise ValueError(f"order must be an integer in 0..5, got {order!r}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if num_processes is None or int(num_processes) == 0:
        raise ValueError(f"num_processes must be a non-zero integer, got {num_processes!r}")


def reslice(data: np.ndarray, affine: np.ndarray, zooms: Sequence[float],
            new_zooms: Sequence[float], order: int = 1, mode: str = "constant",
            cval: float = 0, num_processes: int = 1,
            new_shape: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reslice ``data`` to the voxel size ``new_zooms`` (DIPY's ``reslice``, same meaning).

    Parameters
    ----------
    data : ndarray, shape ``(I, J, K)`` or ``(I, J, K, N)``
        A volume or a series of volumes (resliced volume by volume).
    affine : (4, 4) array
        Voxel -> world (mm) of ``data``.
    zooms, new_zooms : 3 floats
        Current and new voxel sizes (mm) along ``i, j, k``.
    order : int, 0..5
        Spline order (0 nearest, 1 trilinear, 3 cubic ...), as ``scipy.ndimage``.
    mode : str
        Boundary mode of ``scipy.ndimage`` (``'constant'``, ``'nearest'``, ``'reflect'``,
        ``'wrap'``, ...).
    cval : float
        Value outside the input for ``mode='constant'``.
    num_processes : int
        Accepted for DIPY compatibility (0 raises ``ValueError`` as in DIPY); volumes run
        on synflow's threads (``synflow._parallel``), whatever its value.
    new_shape : 3 ints, optional
        Output grid shape; default ``round(zooms / new_zooms * data.shape[:3])``.

    Returns
    -------
    data2 : ndarray, shape ``new_shape`` (+ ``(N,)``), ``data``'s dtype
        Output voxel ``i`` is the interpolated value at input voxel ``R * i``,
        ``R = new_zooms / zooms`` (the grids share voxel ``(0, 0, 0)``'s centre).
    affine2 : (4, 4) array
        ``affine @ diag(R, 1)``.
    """
    data = np.asarray(data)
    if data.ndim not in (3, 4):
        raise ValueError(f"dimension of data should be 3 or 4 but you provided {data.ndim}")
    aff = check_affine(affine, "affine", dim=3, invertible=False)
    zooms_a, new_a = _check_zooms(zooms, "zooms"), _check_zooms(new_zooms, "new_zooms")
    _check_options(order, mode, num_processes)
    ratio = new_a / zooms_a
    if new_shape is None:
        new_shape = tuple(int(s) for s in np.round(zooms_a / new_a * np.array(data.shape[:3])))
    else:
        new_shape = tuple(int(s) for s in new_shape)
        if len(new_shape) != 3 or min(new_shape) < 1:
            raise ValueError(f"new_shape must be 3 positive integers, got {new_shape!r}")
    # float32 data is resliced in float32; float64 and integer data in float64 (integer
    # outputs are rounded half away from zero, as scipy.ndimage does)
    work = np.float32 if data.dtype == np.float32 else np.float64
    finite = np.issubdtype(data.dtype, np.integer) or bool(np.isfinite(data.sum()))
    if finite:
        out = _to_dtype(_reslice_dense(data, new_shape, ratio, int(order), mode, float(cval),
                                       work), data.dtype)
    else:
        out = _reslice_scipy(data, new_shape, ratio, int(order), mode, float(cval))
    rx = np.eye(4)
    rx[:3, :3] = np.diag(ratio)
    return out, aff @ rx
