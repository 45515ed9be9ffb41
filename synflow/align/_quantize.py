"""EM metric machinery: intensity quantisation, per-class statistics, EM demons step.

Whole-array versions of DIPY's ``expectmax.pyx`` (``quantize_positive_2d/3d``,
``compute_masked_class_stats_2d/3d``, ``compute_em_demons_step_2d/3d``), for any
dimension.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def quantize_positive(v: np.ndarray, num_levels: int):
    """Quantise the positive values of ``v`` into ``num_levels - 1`` uniform bins.

    Values ``<= 0`` get level 0.  Returns ``(labels int32, levels, hist)``: ``levels[0] =
    0`` and ``levels[i]`` the centre of bin ``i``; ``hist`` the voxel count per level.
    """
    if int(num_levels) != num_levels or num_levels < 2:
        raise ValueError(f"num_levels (q_levels) must be an integer >= 2, got {num_levels!r}")
    if num_levels >= 2**31:
        raise ValueError("num_levels (q_levels) must be < 2**31")
    v = np.asarray(v)
    ftype = v.dtype if v.dtype.kind == "f" else np.float64
    num_levels = int(num_levels)
    n_bins = num_levels - 1  # level 0 is the <= 0 class
    positive = v > 0
    levels = np.zeros(num_levels, dtype=ftype)
    if positive.any():
        values = v[positive]
        min_val, max_val = float(values.min()), float(values.max())
    else:
        min_val = max_val = -1.0
    delta = (max_val - min_val + 1e-8) / n_bins
    if n_bins < 2 or delta < 1e-8:
        labels = positive.astype(np.int32)
        levels[1] = 0.5 * (min_val + max_val)
        hist = np.zeros(num_levels, dtype=np.int32)
        hist[1] = int(positive.sum())
        hist[0] = v.size - hist[1]
        return labels, levels, hist
    levels[1:] = min_val + delta * (0.5 + np.arange(n_bins))
    bins = np.floor((v.astype(np.float64) - min_val) / delta).astype(np.int32) + 1
    labels = np.where(positive, bins, 0).astype(np.int32)
    hist = np.bincount(labels.ravel(), minlength=num_levels).astype(np.int32)
    return labels, levels, hist


def masked_class_stats(mask: np.ndarray, v: np.ndarray, num_labels: int,
                       labels: np.ndarray):
    """Mean and variance of ``v`` over the voxels of each label, inside ``mask != 0``.

    ``means[i]`` is 0 for an empty class; ``variances[i]`` (population variance) is
    ``inf`` for a class with fewer than 2 voxels, as DIPY.
    """
    v = np.asarray(v)
    ftype = v.dtype if v.dtype.kind == "f" else np.float64
    inside = np.asarray(mask) != 0
    lab = np.asarray(labels)[inside]
    vals = v[inside].astype(np.float64)
    counts = np.bincount(lab, minlength=num_labels)[:num_labels]
    sums = np.bincount(lab, weights=vals, minlength=num_labels)[:num_labels]
    means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    sq = np.bincount(lab, weights=(vals - means[lab]) ** 2, minlength=num_labels)[:num_labels]
    variances = np.where(counts > 1, sq / np.maximum(counts, 1), np.inf)
    return means.astype(ftype), variances.astype(ftype)


def em_demons_coefficient(delta: np.ndarray, sigma_sq: np.ndarray, nrm2: np.ndarray,
                          sigma_sq_x: float) -> np.ndarray:
    """Per-voxel factor ``c`` of the EM demons step ``c * grad`` (Vercauteren eq. 4).

    ``c = sigma_x^2 delta / (sigma_x^2 |grad|^2 + sigma_i^2)``; 0 where ``sigma_i^2`` is
    infinite; ``delta / |grad|^2`` where ``sigma_i^2 == 0`` (0 if ``|grad| == 0``).
    ``nrm2 = |grad|^2`` in the units the step is wanted in.
    """
    sx = np.float32(sigma_sq_x)
    with np.errstate(invalid="ignore", divide="ignore"):
        infinite = np.isinf(sigma_sq)
        zero = sigma_sq == 0
        den = np.where(zero, nrm2, sx * nrm2 + sigma_sq)
        num = np.where(zero, delta, sx * delta)
        ok = ~infinite & (den != 0)
        coef = np.where(ok, num / np.where(ok, den, 1), 0)
    return coef.astype(np.float32)


def em_fields(static: np.ndarray, moving: np.ndarray, mask: np.ndarray, q_levels: int):
    """Quantise each image and estimate the other image's mean/variance per class.

    Returns DIPY's EMMetric attributes: ``staticq_levels``, ``staticq_means``,
    ``staticq_variances``, ``staticq_sigma_sq_field``, ``staticq_means_field`` (the
    moving image's statistics per class of the static image; class 0's mean set to 0)
    and the same ``movingq_*`` with the roles swapped.  ``mask``: voxels sampled.
    """
    out = SimpleNamespace()
    for name, quantised, other in (("staticq", static, moving), ("movingq", moving, static)):
        labels, levels, _ = quantize_positive(quantised, q_levels)
        means, variances = masked_class_stats(mask, other, q_levels, labels)
        means[0] = 0
        setattr(out, f"{name}_levels", levels)
        setattr(out, f"{name}_means", means)
        setattr(out, f"{name}_variances", variances)
        setattr(out, f"{name}_sigma_sq_field", variances[labels].astype(np.float32))
        setattr(out, f"{name}_means_field", means[labels].astype(np.float32))
    return out
