"""Brain masks of b0 volumes: a fast, DIPY-compatible ``median_otsu``.

Algorithm (whole-array NumPy, no per-voxel loops)
------------------------------------------------
DIPY runs ``scipy.ndimage.median_filter`` (size ``2r+1``, ``mode='reflect'``) ``numpass`` times,
then thresholds the result with Otsu (DIPY's own rule, see :mod:`.threshold`).  A 9x9x9
median costs 5-10 s per pass on a 2 mm head (~1 M voxels) in SciPy.  Here the median is
computed by **level counting**: for
integer codes ``q`` in ``[0, L)`` the median at ``x`` is ::

    m(x) = #{k : C_k(x) < h},   C_k(x) = #{y in window(x) : q(y) <= k},   h = (w**3 + 1) // 2

``C_k`` is a box sum of the indicator ``[q <= k]``: three separable sums of ``w`` shifted copies
(by one plane, one row, one voxel) of the flattened, reflect-padded slab, so every NumPy call is a
long contiguous uint8/uint16 add (~0.5 ms per level per million voxels).  Only levels present
in the volume, and only those inside each slab's own ``[min, max)`` range, are visited; the
cost is linear in the number of levels and nearly independent of the radius (``~log2(w)``
adds per axis).  Slabs along axis 0 run on threads (:func:`synflow._parallel.run_slabs`);
everything is integer arithmetic, so results do not depend on the slab cut or thread count.

What is exact
-------------
The median commutes with any monotone map ``g`` (``median(g(v)) = g(median(v))`` for an odd
window, reflect padding included), hence so does the repeated median.  This gives:

* :func:`multi_median` is **bit-identical to DIPY/SciPy** when the input has at most ``levels``
  (default 256) distinct values (codes = ranks of the distinct values).  Otherwise the input is
  first quantised once to ``levels`` equal-width bins over ``[min, max]`` (each bin represented by
  the mean of its values, a monotone map ``g``) and the result equals SciPy's repeated median of
  ``g(input)`` exactly, i.e. ``g(DIPY's result)``: every output voxel lies in the same bin as DIPY's
  value (error < one bin width, no accumulation over passes).
* :func:`median_otsu` is **exact for floating-point input** (DIPY's usual case: ``get_fdata`` or a
  4-D mean): the mask is identical to DIPY's.  The exact minimum and maximum of the filtered
  volume are found by bisection over the input values (each probe is a 1-level run on
  ``[v <= t]``), the exact 256-bin Otsu histogram of the filtered volume is the repeated median of
  the input coded by those bin edges, the threshold follows with DIPY's arithmetic, and
  the mask is the repeated median of ``[v > t]``.  The filtered volume itself is never needed.
  Integer input is exact in the same way (DIPY's Otsu uses 256 equal bins for every dtype).
  DIPY switches to scikit-image's Otsu when scikit-image is installed (threshold half a bin
  higher); synflow does not, so its mask never depends on what else is installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from .._parallel import run_tasks
from ._median import _median_pass, median_filter_codes
from .threshold import check_real_image, otsu, otsu_from_edges

__all__ = ["applymask", "bounding_box", "crop", "median_filter_codes", "median_otsu",
           "multi_median", "otsu"]
# ``otsu`` is re-exported as in ``dipy.segment.mask`` (there it is scikit-image's
# ``threshold_otsu`` when scikit-image is installed; here always DIPY's own rule).


# --------------------------------------------------------------------------------------------
# Public DIPY-compatible functions
# --------------------------------------------------------------------------------------------
def _check_numeric(arr: np.ndarray, name: str) -> np.ndarray:
    return check_real_image(arr, name, empty_prefix="",
                            fix="; replace them (e.g. np.nan_to_num) before masking")


def _check_radius_passes(median_radius: int, numpass: int) -> tuple[int, int]:
    try:
        r = int(median_radius)
        n = int(numpass)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"median_radius and numpass must be integers, got {median_radius!r}, {numpass!r}"
        ) from exc
    if r != median_radius or r < 0:
        raise ValueError(f"median_radius must be an integer >= 0 (voxels), got {median_radius!r}")
    if n != numpass or n < 0:
        raise ValueError(f"numpass must be an integer >= 0, got {numpass!r}")
    return r, n


def multi_median(data: np.ndarray, median_radius: int, numpass: int, *,
                 levels: int = 256) -> np.ndarray:
    """Repeated median filter, as ``dipy.segment.mask.multi_median`` (input left untouched).

    Parameters
    ----------
    data : ndarray, 1-D to 3-D
        Volume (any units).  Must be finite.
    median_radius : int
        Radius in voxels; each pass is a median over a ``(2r+1)**ndim`` window with SciPy's
        ``mode='reflect'`` boundary.
    numpass : int
        Number of passes.
    levels : int
        Intensity resolution, 2..65536.  Exact (bit-identical to repeated
        ``scipy.ndimage.median_filter``) when ``data`` has at most ``levels`` distinct values;
        otherwise ``data`` is quantised once into ``levels`` equal bins over ``[min, max]`` (each
        represented by the mean of its values) and the result is the exact repeated median of
        that quantised volume -- every voxel falls in the same bin as the exact result.  Cost is
        linear in ``levels``.

    Returns
    -------
    ndarray, same shape and dtype as ``data`` (a new array).
    """
    r, n = _check_radius_passes(median_radius, numpass)
    data_in = np.asarray(data)
    arr = _check_numeric(data_in, "data")
    if arr.ndim < 1 or arr.ndim > 3:
        raise ValueError(f"data must be 1-D to 3-D, got shape {arr.shape}")
    levels = int(levels)
    if not 2 <= levels <= 65536:
        raise ValueError(f"levels must be in [2, 65536], got {levels}")
    if r == 0 or n == 0:
        return data_in.copy()
    codes, reps = _quantise(arr, levels)
    out = median_filter_codes(codes, r, n, nlev=reps.size)
    return reps[out].astype(data_in.dtype, copy=False)


def _quantise(arr: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Monotone coding of ``arr``: ``(codes, reps)`` with ``reps[codes]`` the quantised volume.

    At most ``levels`` distinct values: codes are their ranks and ``reps[codes] == arr``.
    Otherwise ``levels`` equal bins over ``[min, max]``; ``reps`` holds each bin's mean value
    (rounded for integer input), which increases with the bin, so the map is monotone.
    """
    uniq, inv = np.unique(arr, return_inverse=True)
    inv = inv.reshape(arr.shape)
    if uniq.size <= levels:
        code_of_uniq = np.arange(uniq.size)
        reps = uniq
    else:
        lo = float(uniq[0])
        hi = float(uniq[-1])
        code_of_uniq = np.clip(((uniq.astype(np.float64) - lo) / (hi - lo) * levels)
                               .astype(np.int64), 0, levels - 1)
        mult = np.bincount(inv.ravel(), minlength=uniq.size).astype(np.float64)
        counts = np.bincount(code_of_uniq, weights=mult, minlength=levels)
        sums = np.bincount(code_of_uniq, weights=mult * uniq.astype(np.float64),
                           minlength=levels)
        reps = sums / np.maximum(counts, 1.0)
        if np.issubdtype(arr.dtype, np.integer):
            reps = np.rint(reps)
        reps = reps.astype(arr.dtype)
    ctype = np.uint8 if reps.size <= 256 else np.uint16
    return code_of_uniq.astype(ctype)[inv], reps


def applymask(vol: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``vol * mask`` with ``mask`` broadcast over trailing axes of ``vol`` (as DIPY)."""
    mask = np.asarray(mask)
    mask = mask.reshape(mask.shape + (vol.ndim - mask.ndim) * (1,))
    return vol * mask


def _mean_volume(input_volume: np.ndarray, vol_idx: Sequence[int] | None) -> np.ndarray:
    vol = np.asarray(input_volume)
    if vol.ndim == 4:
        if vol_idx is None:
            raise ValueError("For 4D images, must provide vol_idx input")
        idx = np.atleast_1d(np.asarray(vol_idx))
        if idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"vol_idx must be a non-empty sequence of volume indices, "
                             f"got {vol_idx!r}")
        if idx.min() < -vol.shape[3] or idx.max() >= vol.shape[3]:
            raise ValueError(f"vol_idx {idx.tolist()} out of range for input_volume with "
                             f"{vol.shape[3]} volumes")
        return np.mean(vol[..., tuple(int(i) for i in idx)], axis=3)
    if vol.ndim != 3:
        raise ValueError(f"input_volume must be 3-D or 4-D, got shape {vol.shape}")
    return vol


def bounding_box(vol: np.ndarray) -> tuple[list[int], list[int]]:
    """Bounding box of the non-zero voxels of ``vol`` (DIPY's ``bounding_box``).

    Returns ``(mins, maxs)``, one entry per axis, in voxels: ``vol[mins[0]:maxs[0], ...]``
    holds every non-zero voxel (``maxs`` is exclusive).  An all-zero volume warns and
    returns zeros, as DIPY does.
    """
    vol = np.asarray(vol)
    if vol.ndim == 0:
        raise ValueError("vol must have at least one axis, got a scalar")
    nonzero = vol != 0
    mins, maxs = [], []
    for ax in range(vol.ndim):
        other = tuple(a for a in range(vol.ndim) if a != ax)
        hit = np.flatnonzero(nonzero.any(axis=other) if other else nonzero)
        if hit.size == 0:
            warnings.warn("No data found in volume to bound. Returning empty bounding box.",
                          stacklevel=2)
            return [0] * vol.ndim, [0] * vol.ndim
        mins.append(int(hit[0]))
        maxs.append(int(hit[-1]) + 1)
    return mins, maxs


def crop(vol: np.ndarray, mins: Sequence[int], maxs: Sequence[int]) -> np.ndarray:
    """``vol[mins[0]:maxs[0], mins[1]:maxs[1], ...]`` (DIPY's ``crop``; a view, voxels)."""
    return vol[tuple(slice(int(lo), int(hi)) for lo, hi in zip(mins, maxs, strict=False))]


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a non-empty boolean array, as slices."""
    mins, maxs = bounding_box(mask)
    return tuple(slice(lo, hi) for lo, hi in zip(mins, maxs, strict=True))


def _filtered_extreme(inv: np.ndarray, nuniq: int, r: int, n: int, upper: bool) -> int:
    """Index (into the sorted distinct input values ``u``) of min or max of the filtered volume.

    ``[f <= u_i] = multi_median([v <= u_i])`` exactly (the median commutes with monotone maps),
    so ``min f = u_i`` for the smallest ``i`` where that binary volume is non-empty (bisection;
    ``upper=True`` does the same for ``max f`` with ``[v >= u_j]``).  A true probe's set contains
    every later probe's set, so later probes only look inside its bounding box (``inner``); they
    run on ``inner`` grown by ``n * r`` voxels (``crop``), which makes them exact inside
    ``inner``: errors from the crop faces travel at most ``r`` voxels per pass.
    """
    w = (2 * r + 1,) * 3
    margin = n * r
    inner: tuple[slice, ...] = tuple(slice(0, s) for s in inv.shape)
    lo, hi = 0, nuniq - 1

    def probe(cut: int) -> tuple[slice, ...] | None:
        crop = tuple(slice(max(0, b.start - margin), min(s, b.stop + margin))
                     for b, s in zip(inner, inv.shape, strict=True))
        sub = inv[crop]
        codes = ((sub >= cut) if upper else (sub <= cut)).view(np.uint8)
        for _ in range(n):
            if not codes.any():
                return None
            if codes.all():
                break
            codes = _median_pass(codes, w, 2, threads=1)
        valid = codes[tuple(slice(b.start - c.start, b.stop - c.start)
                            for b, c in zip(inner, crop, strict=True))]
        if not valid.any():
            return None
        box = _bbox(valid)
        return tuple(slice(b.start + x.start, b.start + x.stop)
                     for b, x in zip(inner, box, strict=True))

    while lo < hi:
        mid = (lo + hi + 1) // 2 if upper else (lo + hi) // 2
        res = probe(mid)
        if res is not None:
            inner = res
            if upper:
                lo = mid
            else:
                hi = mid
        elif upper:
            hi = mid - 1
        else:
            lo = mid + 1
    return lo


def _filtered_range(inv: np.ndarray, nuniq: int, r: int, n: int) -> tuple[int, int]:
    """(index of min, index of max) of the filtered volume among the sorted distinct inputs."""
    i_min, i_max = run_tasks([
        lambda: _filtered_extreme(inv, nuniq, r, n, upper=False),
        lambda: _filtered_extreme(inv, nuniq, r, n, upper=True),
    ])
    return i_min, i_max


def _median_otsu_mask(b0: np.ndarray, r: int, n: int, nbins: int = 256) -> np.ndarray:
    """``multi_median(b0, r, n) > otsu(multi_median(b0, r, n))`` computed exactly (see module)."""
    uniq, inv = np.unique(b0, return_inverse=True)
    inv = inv.reshape(b0.shape).astype(np.int32 if uniq.size < 2**31 else np.int64, copy=False)
    if uniq.size < 2:
        raise ValueError(f"no threshold: input_volume is constant (every voxel equals {uniq[0]})")
    i_min, i_max = _filtered_range(inv, uniq.size, r, n) if (r > 0 and n > 0) else (
        0, uniq.size - 1)
    if i_min >= i_max:
        raise ValueError(
            "no threshold: the median-filtered volume is constant "
            f"(every voxel equals {uniq[i_min]}); try a smaller median_radius or numpass"
        )
    in_range = uniq[i_min: i_max + 1]
    # np.histogram of the filtered volume f: its min/max are uniq[i_min]/uniq[i_max], so the
    # edges and each value's bin are those of the histogram of the distinct values in range.
    vals = in_range.astype(np.float64) if np.issubdtype(b0.dtype, np.integer) else in_range
    per_bin, edges = np.histogram(vals, bins=nbins)
    code_in = np.repeat(np.arange(nbins), per_bin)  # np.histogram's own bin of each value
    nlev = nbins
    code_of_uniq = np.empty(uniq.size, dtype=np.int64)
    code_of_uniq[:i_min] = 0
    code_of_uniq[i_min: i_max + 1] = code_in
    code_of_uniq[i_max + 1:] = nlev - 1
    ctype = np.uint8 if nlev <= 256 else np.uint16
    fcodes = median_filter_codes(code_of_uniq.astype(ctype)[inv], r, n, nlev=nlev)
    counts = np.bincount(fcodes.ravel(), minlength=nlev)
    thresh = otsu_from_edges(counts, edges)
    # [f > t] = multi_median([v > t]); u_i > t  <=>  i > i_t
    cut = int(np.searchsorted(uniq, thresh, side="right"))  # first index with u > t
    above = (inv >= cut).astype(np.uint8)
    return median_filter_codes(above, r, n, nlev=2).astype(bool)


def median_otsu(input_volume: np.ndarray, vol_idx: Sequence[int] | None = None,
                median_radius: int = 4, numpass: int = 4, autocrop: bool = False,
                dilate: int | None = None,
                finalize_mask: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Brain mask of a b0 volume by repeated median filtering and Otsu thresholding.

    Same signature, defaults and meaning as ``dipy.segment.mask.median_otsu`` (DIPY 1.12),
    computed far faster (see the module docstring for what is exact: for floating-point input
    the mask is identical to DIPY's).

    Parameters
    ----------
    input_volume : ndarray, 3-D ``(i, j, k)`` or 4-D ``(i, j, k, t)``
        b0 (or DWI series); any intensity units, must be finite.
    vol_idx : sequence of int, optional
        Volumes (indices along axis 3) averaged for a 4-D input; required for 4-D input.
    median_radius : int
        Median filter radius in voxels (window ``2r+1`` per axis).
    numpass : int
        Number of median passes.
    autocrop : bool
        Deprecated (as in DIPY 1.11+): crop both outputs to the mask's bounding box.
    dilate : int, optional
        Iterations of a 6-connected binary dilation of the mask.
    finalize_mask : bool
        Keep the largest connected component and fill holes.

    Returns
    -------
    masked_volume : ndarray
        ``input_volume * mask`` (mask broadcast over volumes), same dtype as DIPY's.
    mask : ndarray of bool, 3-D
        Brain mask (``filtered > threshold``; strict inequality as DIPY).

    Raises
    ------
    ValueError
        Wrong dimensionality, missing ``vol_idx`` for 4-D input, non-finite voxels, constant
        input (no threshold), or an empty mask after thresholding.
    """
    r, n = _check_radius_passes(median_radius, numpass)
    vol = np.asarray(input_volume)
    if vol.ndim == 4 and vol.shape[3] == 0:
        raise ValueError(f"input_volume has no volumes (shape {vol.shape})")
    if vol.size == 0:
        raise ValueError(f"no threshold: input_volume is empty (shape {vol.shape})")
    b0 = _check_numeric(_mean_volume(vol, vol_idx),
                        "input_volume" if vol.ndim == 3 else "input_volume (mean over vol_idx)")
    mask = _median_otsu_mask(b0, r, n)
    if not mask.any():
        raise ValueError(
            "the mask of input_volume is empty after Otsu thresholding of the median-filtered "
            "volume; check the input intensities (is this a b0?)"
        )
    if dilate is not None:
        cross = ndi.generate_binary_structure(3, 1)
        mask = ndi.binary_dilation(mask, cross, iterations=int(dilate))
    if finalize_mask:
        mask = _remove_holes_and_islands(mask)
    if autocrop:
        warnings.warn("autocrop is deprecated since DIPY 1.11.0 and will be removed in 1.13.0",
                      DeprecationWarning, stacklevel=2)
        mins, maxs = bounding_box(mask)
        mask = crop(mask, mins, maxs)
        return applymask(crop(vol, mins, maxs), mask), mask
    return applymask(vol, mask), mask


def _remove_holes_and_islands(mask: np.ndarray) -> np.ndarray:
    """Largest connected component (default 3-D connectivity, as DIPY), then fill holes."""
    labels, nlab = ndi.label(mask)
    if nlab == 0:
        return mask
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    keep = labels == largest
    bg, nbg = ndi.label(~keep)
    if nbg == 0:
        return keep
    main_bg = np.argmax(np.bincount(bg.ravel())[1:]) + 1
    return bg != main_bg
