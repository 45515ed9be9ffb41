"""Histogram thresholds (NumPy only).

:func:`otsu` is ``dipy.segment.threshold.otsu`` (DIPY 1.12), bit for bit: ``np.histogram(image,
nbins)`` over ``[min, max]`` for every dtype (integer images too), the between-class variance
evaluated on the *right bin edges* in float64, and the *left edge* of the maximising bin returned.

DIPY's ``median_otsu`` calls that function only when scikit-image is not installed; with
scikit-image present it calls ``skimage.filters.threshold_otsu`` instead, which returns the bin
*centre* (half a bin higher) and uses one bin per integer value for integer images.  A DIPY
mask therefore depends on whether scikit-image happens to be installed (a few boundary voxels
per volume).  synflow always uses DIPY's own rule so that its masks do not depend on the
environment; :func:`threshold_otsu` gives scikit-image's rule for those who need it.

Only difference from both: a constant (or empty, or non-finite) image raises ``ValueError``
instead of returning a meaningless value, because no threshold separates anything.
"""

from __future__ import annotations

import numpy as np

__all__ = ["otsu", "otsu_from_edges", "threshold_otsu", "otsu_from_histogram"]


def otsu_from_edges(counts: np.ndarray, edges: np.ndarray) -> float:
    """Otsu threshold of a histogram with DIPY's exact arithmetic (``dipy.segment.threshold``).

    Parameters
    ----------
    counts : 1-D array, length ``n``
        Voxel count of each bin, as from ``np.histogram``.
    edges : 1-D array, length ``n + 1``
        Bin edges (image units), as from ``np.histogram``.

    Returns
    -------
    threshold : scalar of ``edges.dtype``
        ``edges[i]`` (the left edge of bin ``i``) for the split ``i`` maximising the
        between-class variance computed on the right edges; voxels ``> threshold`` are
        foreground.
    """
    counts = np.asarray(counts)
    edges = np.asarray(edges)
    if counts.ndim != 1 or edges.shape != (counts.size + 1,) or counts.size < 2:
        raise ValueError(
            "counts must be a 1-D array of n >= 2 bins and edges a 1-D array of n + 1 edges, "
            f"got shapes {counts.shape} and {edges.shape}"
        )
    if np.count_nonzero(counts) < 2:
        raise ValueError("no threshold: the histogram has fewer than two non-empty bins")
    hist = counts.astype(float)
    weight1 = np.cumsum(hist)
    weight2 = np.cumsum(hist[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):  # empty end bins, as in DIPY
        mean1 = np.cumsum(hist * edges[1:]) / weight1
        mean2 = (np.cumsum((hist * edges[1:])[::-1]) / weight2[::-1])[::-1]
        variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return edges[:-1][int(np.argmax(variance12))]


def otsu_from_histogram(counts: np.ndarray, bin_centers: np.ndarray) -> float:
    """Otsu threshold of a histogram, with scikit-image's exact arithmetic.

    Parameters
    ----------
    counts : 1-D array
        Voxel count of each bin (cast to ``float32`` as scikit-image does).
    bin_centers : 1-D array
        Intensity at the centre of each bin (same units as the image).

    Returns
    -------
    threshold : scalar of ``bin_centers.dtype``
        ``bin_centers[i]`` for the split ``i`` maximising the between-class variance; voxels
        with intensity ``> threshold`` are foreground.
    """
    counts = np.asarray(counts)
    bin_centers = np.asarray(bin_centers)
    if counts.ndim != 1 or counts.shape != bin_centers.shape or counts.size == 0:
        raise ValueError(
            "counts and bin_centers must be non-empty 1-D arrays of the same length, got "
            f"shapes {counts.shape} and {bin_centers.shape}"
        )
    if counts[0] == 0 or counts[-1] == 0:  # trim empty ends, as scikit-image does
        nz = np.flatnonzero(counts > 0)
        if nz.size == 0:
            raise ValueError("no threshold: the histogram is empty")
        counts = counts[nz[0]: nz[-1] + 1]
        bin_centers = bin_centers[nz[0]: nz[-1] + 1]
    counts = counts.astype("float32", copy=False)
    if counts.size < 2:
        raise ValueError("no threshold: the histogram has a single non-empty bin")
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * bin_centers) / weight1
    mean2 = (np.cumsum((counts * bin_centers)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return bin_centers[int(np.argmax(variance12))]


def image_histogram(image: np.ndarray, nbins: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Histogram exactly as ``skimage.exposure.histogram(image, nbins, source_range='image')``.

    Returns ``(counts, bin_centers)``: integer images get one bin per integer value in
    ``[min, max]``; floating-point images get ``nbins`` equal bins over ``[min, max]``.
    """
    flat = np.asarray(image).reshape(-1)
    if np.issubdtype(flat.dtype, np.integer):
        lo = int(flat.min())
        hi = int(flat.max())
        counts = np.bincount((flat.astype(np.int64) - lo), minlength=hi - lo + 1)
        return counts, np.arange(lo, hi + 1)
    counts, edges = np.histogram(flat, bins=nbins)
    return counts, (edges[:-1] + edges[1:]) / 2.0


def check_real_image(image: np.ndarray, name: str, empty_prefix: str = "no threshold: ",
                     fix: str = "") -> np.ndarray:
    """``image`` as a non-empty, finite, real (integer or floating) array, else ValueError.

    Booleans become ``uint8``.  Messages name the input (``name``); ``fix`` is appended to
    the non-finite message.
    """
    image = np.asarray(image)
    if image.dtype == np.bool_:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"{name} must be a real numeric array, got dtype {image.dtype}")
    if image.size == 0:
        raise ValueError(f"{empty_prefix}{name} is empty (shape {image.shape})")
    if np.issubdtype(image.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(image)))
        if bad:
            raise ValueError(f"{empty_prefix}{name} has {bad} non-finite (NaN/inf) voxels out "
                             f"of {image.size}{fix}")
    return image


def _thresholdable(image: np.ndarray, nbins: int) -> np.ndarray:
    """Checks shared by :func:`otsu` and :func:`threshold_otsu`."""
    if int(nbins) < 2:
        raise ValueError(f"nbins must be an integer >= 2, got {nbins!r}")
    image = check_real_image(image, "image")
    first = image.reshape(-1)[0]
    if np.all(image == first):
        raise ValueError(f"no threshold: image is constant (every voxel equals {first})")
    return image


def otsu(image: np.ndarray, *, nbins: int = 256) -> float:
    """Otsu threshold of ``image`` (any shape), identical to ``dipy.segment.threshold.otsu``.

    Parameters
    ----------
    image : ndarray
        Intensities (any units); integer or floating point, any number of dimensions.
    nbins : int
        Number of equal-width histogram bins over ``[min, max]`` (for every dtype, as DIPY).

    Returns
    -------
    threshold : scalar (image units)
        The left edge of the bin that maximises the between-class variance; voxels with
        ``image > threshold`` are foreground.

    Raises
    ------
    ValueError
        If ``image`` is empty, constant (no threshold exists) or holds NaN/inf.
    """
    image = _thresholdable(image, nbins)
    counts, edges = np.histogram(image, int(nbins))
    return otsu_from_edges(counts, edges)


def threshold_otsu(image: np.ndarray, nbins: int = 256) -> float:
    """Otsu threshold of ``image`` (any shape), identical to scikit-image's ``threshold_otsu``.

    Parameters
    ----------
    image : ndarray
        Intensities (any units); integer or floating point, any number of dimensions.
    nbins : int
        Number of histogram bins for floating-point images (ignored for integer images,
        which use one bin per integer value, as in scikit-image).

    Returns
    -------
    threshold : scalar (image units)
        Voxels with ``image > threshold`` are foreground.

    Raises
    ------
    ValueError
        If ``image`` is empty, constant (no threshold exists) or holds NaN/inf.
    """
    image = _thresholdable(image, nbins)
    counts, centers = image_histogram(image, int(nbins))
    return otsu_from_histogram(counts, centers)
