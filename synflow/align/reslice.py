"""Reslice a volume or series to a new voxel size (``dipy.align.reslice.reslice``).

DIPY resamples each volume with ``scipy.ndimage.affine_transform`` and the diagonal
matrix ``R = new_zooms / zooms`` (output voxel ``i`` samples input voxel ``R * i``).  That
transform is separable: along every axis it is the same 1-D operator, linear in the data
(plus ``cval`` where the sample falls outside, for ``mode='constant'``), and SciPy's 3-D
result is the tensor product of the three 1-D operators -- the spline prefilter is
separable and the interpolation weights are products of per-axis weights.

So each volume is prefiltered once with SciPy's own separable spline filter (``order >= 2``,
padding as SciPy pads), and each axis's interpolation is computed once, *exactly as SciPy
computes it*, by running SciPy's own 1-D ``affine_transform`` on the unit vectors; it is
stored as ``order + 1`` taps (index, weight) per output row.  A volume is then resliced by
``3 * (order + 1)`` gathers and multiply-adds of whole arrays, in float32 for float32 input
(float64 otherwise); the volumes of a series run on threads
(:func:`synflow._parallel.run_tasks`).  Results equal DIPY's to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from synflow._parallel import run_tasks
from synflow.align.affine_checks import check_affine

__all__ = ["reslice"]

_MODES = ("constant", "nearest", "reflect", "wrap", "mirror", "grid-constant",
          "grid-mirror", "grid-wrap")


#: Modes for which scipy pads the input before the spline prefilter (``_prepad_for_spline_filter``).
_PREPAD_MODES = ("nearest", "grid-constant")
_NPAD = 12


def _axis_taps(n_in: int, n_out: int, ratio: float, order: int, mode: str, cval: float,
               npad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SciPy's 1-D interpolation along one axis as taps: ``(idx, w, b)``.

    ``T(c)[r] = sum_k w[r, k] * c[idx[r, k]] + b[r]`` equals
    ``affine_transform(c, [ratio], offset=npad, output_shape=(n_out,), prefilter=False)``
    for any coefficient vector ``c`` of length ``n_in`` (computed on the unit vectors, so
    every boundary rule is SciPy's own); ``b`` holds ``cval`` outside the input.
    """
    kw = dict(matrix=np.array([ratio]), offset=float(npad), output_shape=(n_out,),
              order=order, mode=mode, prefilter=False)
    w = np.empty((n_out, n_in), dtype=np.float64)
    unit = np.zeros(n_in, dtype=np.float64)
    for j in range(n_in):
        unit[j] = 1.0
        w[:, j] = ndi.affine_transform(unit, cval=0.0, **kw)
        unit[j] = 0.0
    b = ndi.affine_transform(np.zeros(n_in, dtype=np.float64), cval=float(cval), **kw)
    ntap = max(1, int((w != 0).sum(axis=1).max()))
    idx = np.argsort(w == 0, axis=1, kind="stable")[:, :ntap]  # non-zero columns first
    return idx, np.take_along_axis(w, idx, axis=1), b


def _apply_taps(vol: np.ndarray, idx: np.ndarray, w: np.ndarray, b: np.ndarray,
                axis: int) -> np.ndarray:
    """``T`` along ``axis`` of a 3-D array: a few gathers and multiply-adds."""
    shape = [1, 1, 1]
    shape[axis] = -1
    out = np.take(vol, idx[:, 0], axis=axis)
    out *= w[:, 0].reshape(shape)
    for k in range(1, idx.shape[1]):
        tap = np.take(vol, idx[:, k], axis=axis)
        tap *= w[:, k].reshape(shape)
        out += tap
    if np.any(b):
        out += b.reshape(shape)
    return out


def _prefilter(vol: np.ndarray, order: int, mode: str, cval: float, work: type) -> np.ndarray:
    """SciPy's spline prefilter of ``affine_transform`` (padding included), in ``work``.

    (A NumPy recursive filter with a low-rank boundary correction was measured slower
    than SciPy's ``spline_filter1d`` on every axis, so SciPy's filter is used.)
    """
    if mode in _PREPAD_MODES:
        vol = np.pad(vol, _NPAD, mode="edge") if mode == "nearest" else np.pad(
            vol, _NPAD, mode="constant", constant_values=cval)
    out = np.asarray(vol, dtype=work)
    for ax in range(3):
        out = ndi.spline_filter1d(out, order, axis=ax, output=work, mode=mode)
    return out


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
    spline = int(order) > 1
    npad = _NPAD if spline and mode in _PREPAD_MODES else 0
    taps = []
    for ax in range(3):
        idx, w, b = _axis_taps(data.shape[ax] + 2 * npad, new_shape[ax], float(ratio[ax]),
                               int(order), mode, cval, npad)
        taps.append((idx, w.astype(work), b.astype(work)))
    # shrinking axes first keeps the intermediate arrays small
    axes = sorted(range(3), key=lambda ax: new_shape[ax] / data.shape[ax])

    def one(vol: np.ndarray) -> np.ndarray:
        out = _prefilter(vol, int(order), mode, cval, work) if spline else np.asarray(
            vol, dtype=work)
        for ax in axes:
            out = _apply_taps(out, *taps[ax], ax)
        return out

    out = np.empty(new_shape + data.shape[3:], dtype=data.dtype)
    dst = out[..., None] if data.ndim == 3 else out
    src = data[..., None] if data.ndim == 3 else data

    def task(t: int) -> None:
        res = one(src[..., t])
        if np.issubdtype(data.dtype, np.integer):  # scipy rounds half away from zero, clips
            res = np.where(res < 0, np.ceil(res - 0.5), np.floor(res + 0.5))
            info = np.iinfo(data.dtype)
            np.clip(res, info.min, info.max, out=res)
        dst[..., t] = res

    run_tasks([lambda t=t: task(t) for t in range(src.shape[3])])
    rx = np.eye(4)
    rx[:3, :3] = np.diag(ratio)
    return out, aff @ rx
