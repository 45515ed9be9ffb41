"""Parzen-window mutual information between a fixed and an affinely moved image.

The metric of :class:`synflow.align.imaffine.MutualInformationMetric` (Mattes et al.
2003, DIPY's rules): static intensities use hard bins, moving intensities a cubic
B-spline kernel over 5 bins, 2 bins of padding.  The work on the samples is cut into
fixed chunks (:func:`chunk_bounds`, independent of the thread count); each chunk gives a
:class:`ChunkHistogram`, the chunks are summed in order (:func:`combine_chunks`) into a
:class:`JointDistribution`, from which :func:`mutual_information` gives the value and
the ``log`` factors of the gradient; :func:`chunk_gradient` then gives each chunk's
``(dim, dim + 1)`` contribution to ``sum_x w(x) grad M(x) [y(x), 1]^T``.

Histogram trick: when every fractional bin position ``t`` of a chunk lies in ``[0, 1]``
the 4 non-zero B-spline weights are cubic polynomials of ``t`` (:data:`SPLINE_POLY`),
so 4 weighted counts of ``t^k`` per (static bin, moving bin) are combined after the
reduction; otherwise the general 5-offset kernel is used.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from synflow._parallel import slab_bounds
from synflow.align._sampling import cubic_bspline_weights

__all__ = [
    "CHUNK",
    "ChunkHistogram",
    "ChunkSamples",
    "GradientTables",
    "JointDistribution",
    "ParzenBins",
    "chunk_bounds",
    "chunk_gradient",
    "chunk_histogram",
    "combine_chunks",
    "gradient_tables",
    "mutual_information",
]

CHUNK = 32768  # samples per chunk (cache-friendly; independent of the thread count)
_EPS = 2.2204460492503131e-16

#: B-spline weights beta(o - t), o = -1, 0, 1, 2, as cubic polynomials in t in [0, 1]
#: (rows: offsets; columns: coefficients of 1, t, t^2, t^3).
SPLINE_POLY = np.array([[1 / 6, -1 / 2, 1 / 2, -1 / 6],
                        [2 / 3, 0.0, -1.0, 1 / 2],
                        [1 / 6, 1 / 2, 1 / 2, -1 / 2],
                        [0.0, 0.0, 0.0, 1 / 6]])
#: derivatives beta'(o - t) (d/dx of the kernel at x = o - t): coefficients of 1, t, t^2.
DSPLINE_POLY = np.array([[1 / 2, -1.0, 1 / 2],
                         [0.0, 2.0, -3 / 2],
                         [-1 / 2, -1.0, 3 / 2],
                         [0.0, 0.0, -1 / 2]])


def chunk_bounds(n: int) -> list[tuple[int, int]]:
    """Fixed chunks of about :data:`CHUNK` samples (depends on ``n`` only)."""
    return slab_bounds(n, min_slab=CHUNK, max_slabs=max(1, -(-n // CHUNK)))


class ParzenBins:
    """Bin geometry and the last joint/marginal distributions (DIPY's ``ParzenJointHistogram``).

    ``nbins`` bins of which ``padding = 2`` on each side are padding; intensity ``v`` of
    the static (moving) image falls at bin position ``v / sdelta - smin``
    (``v / mdelta - mmin``).  ``joint`` ``(nbins, nbins)`` (static bin, moving bin),
    ``smarginal`` and ``mmarginal`` are set by :meth:`MutualInformationMetric._evaluate`.
    """

    def __init__(self, nbins: int) -> None:
        self.nbins = nbins
        self.padding = 2
        self.joint = np.zeros((nbins, nbins))
        self.smarginal = np.zeros(nbins)
        self.mmarginal = np.zeros(nbins)

    def setup(self, static: np.ndarray, moving: np.ndarray, smask: np.ndarray | None = None,
              mmask: np.ndarray | None = None) -> None:
        """Intensity ranges (within the masks) -> bin widths and offsets."""
        sv = static if smask is None else static[smask != 0]
        mv = moving if mmask is None else moving[mmask != 0]
        if sv.size == 0 or mv.size == 0:
            raise ValueError("the masks leave no voxel to build the intensity histogram")
        smin, smax = float(np.min(sv)), float(np.max(sv))
        mmin, mmax = float(np.min(mv)), float(np.max(mv))
        nb = self.nbins - 2 * self.padding
        if not smax > smin:
            raise ValueError("static is constant (within static_mask) at this pyramid level")
        if not mmax > mmin:
            raise ValueError("moving is constant (within moving_mask) at this pyramid level")
        self.sdelta = (smax - smin) / nb
        self.mdelta = (mmax - mmin) / nb
        self.smin = smin / self.sdelta - self.padding
        self.mmin = mmin / self.mdelta - self.padding

    def static_bins(self, values: np.ndarray) -> np.ndarray:
        """DIPY's hard static bin index: ``trunc(v / delta - min)`` clipped to ``[2, nbins-3]``."""
        rn = np.asarray(values, dtype=np.float64) / self.sdelta - self.smin
        return np.clip(rn, self.padding, self.nbins - 1 - self.padding).astype(np.intp)


class ChunkSamples(NamedTuple):
    """What the gradient pass needs of one chunk's samples."""

    index: np.ndarray  # flat joint-histogram bin (static bin * nbins + moving bin), intp
    t: np.ndarray  # fractional moving-bin position, float32
    grad: np.ndarray | None  # (dim, n) moving-image derivative w.r.t. its voxel coords
    weight: np.ndarray | None  # float32 0/1 moving-mask validity, None without a mask
    fast: bool  # every t in [0, 1] (polynomial kernel)


class ChunkHistogram(NamedTuple):
    """One chunk's contribution to the joint histogram."""

    fast: bool  # True: ``counts`` are moments (4, nbins**2); False: counts (nbins**2,)
    counts: np.ndarray
    static_counts: np.ndarray | None  # (nbins,) static-bin counts of valid samples (mask)
    nvalid: int  # samples inside the moving mask (all of them without a mask)
    samples: ChunkSamples | None  # kept for the gradient pass (None if not wanted)


class JointDistribution(NamedTuple):
    """Normalised joint and marginal distributions of all chunks."""

    joint: np.ndarray  # (nbins, nbins), sums to 1 (zeros if nothing was counted)
    smarginal: np.ndarray  # (nbins,)
    mmarginal: np.ndarray  # (nbins,)
    nvalid: int
    total: float  # sum of the un-normalised joint histogram


class GradientTables(NamedTuple):
    """Per-bin tables of ``w = sum_o beta'(o - t) F[idx + o]`` (F: the MI log factors)."""

    f0: np.ndarray  # float32 (nbins**2,): w = f0 + t (f1 + t f2) when 0 <= t <= 1
    f1: np.ndarray
    f2: np.ndarray
    padded: np.ndarray  # float32 (nbins**2 + 4,): F with 2 zero bins on each side


def chunk_histogram(values: np.ndarray, grad: np.ndarray | None, valid: np.ndarray | None,
                    sbins: np.ndarray, bins: ParzenBins, keep: bool) -> ChunkHistogram:
    """Parzen joint-histogram counts of one chunk of samples.

    ``values`` are the moving intensities at the samples (float32), ``grad`` their voxel
    derivatives, ``valid`` the moving-mask lookup (or None), ``sbins`` the static bins.
    """
    nb = bins.nbins
    nb2 = nb * nb
    cn = values * np.float32(1.0 / bins.mdelta)
    cn -= np.float32(bins.mmin)
    c = np.clip(cn, 2.0, nb - 3.0).astype(np.intp)
    t = cn - c
    idx = sbins * nb + c
    wv = None if valid is None else valid.astype(np.float32)
    fast = bool(t.size == 0 or (float(t.min()) >= 0.0 and float(t.max()) <= 1.0))
    if fast:
        # moments sum t^k (k = 0..3) per (static bin, moving bin)
        out = np.empty((4, nb2))
        tw = t if wv is None else t * wv
        out[0] = np.bincount(idx, weights=wv, minlength=nb2)
        out[1] = np.bincount(idx, weights=tw, minlength=nb2)
        tw = tw * t
        out[2] = np.bincount(idx, weights=tw, minlength=nb2)
        out[3] = np.bincount(idx, weights=tw * t, minlength=nb2)
    else:
        out = np.zeros(nb2 + 4)
        for o, w in cubic_bspline_weights(t, derivative=False):
            if wv is not None:
                w = w * wv
            out[o + 2: o + 2 + nb2] += np.bincount(idx, weights=w, minlength=nb2)
        out = out[2: 2 + nb2]
    scount = None
    nvalid = int(values.size)
    if valid is not None:
        scount = np.bincount(sbins, weights=wv, minlength=nb)
        nvalid = int(np.count_nonzero(valid))
    samples = ChunkSamples(idx, t, grad, wv, fast) if keep else None
    return ChunkHistogram(fast, out, scount, nvalid, samples)


def combine_chunks(chunks: list[ChunkHistogram], nbins: int,
                   static_counts: np.ndarray | None) -> JointDistribution:
    """Sum the chunks in order and normalise (DIPY's normalisation).

    ``static_counts``: static-bin counts of all samples when there is no moving mask
    (then the chunks carry none).
    """
    nb = nbins
    nb2 = nb * nb
    moments = np.zeros((4, nb2))
    joint = np.zeros(nb2 + 4)
    nvalid = 0
    scount = np.zeros(nb) if static_counts is None else static_counts
    for ch in chunks:
        if ch.fast:
            moments += ch.counts
        else:
            joint[2: 2 + nb2] += ch.counts
        nvalid += ch.nvalid
        if ch.static_counts is not None:
            scount = scount + ch.static_counts
    hist = SPLINE_POLY @ moments  # (4 offsets o = -1..2, nb2)
    for k, o in enumerate((-1, 0, 1, 2)):
        joint[o + 2: o + 2 + nb2] += hist[k]
    joint = joint[2: 2 + nb2].copy()
    total = joint.sum()
    joint = joint.reshape(nb, nb)
    if total > 0:
        joint /= total
        smarg = scount / max(nvalid, 1)
    else:
        smarg = np.zeros(nb)
    mmarg = joint.sum(axis=0)
    return JointDistribution(joint, smarg, mmarg, nvalid, total)


def mutual_information(dist: JointDistribution) -> tuple[float, np.ndarray]:
    """``(MI, F)``: the mutual information (nats) and the log factors ``F (nbins, nbins)``,
    ``F = log(joint / mmarginal)`` where defined, else 0."""
    joint, smarg, mmarg = dist.joint, dist.smarginal, dist.mmarginal
    ok = (joint >= _EPS) & (mmarg[None, :] >= _EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(ok, np.log(np.where(ok, joint, 1.0) / np.where(ok, mmarg, 1.0)), 0.0)
        logs = np.where(smarg > _EPS, np.log(np.where(smarg > _EPS, smarg, 1.0)), 0.0)
    contrib = np.where(ok & (smarg[:, None] > _EPS), joint * (factor - logs[:, None]), 0.0)
    return float(contrib.sum()), factor


def gradient_tables(factor: np.ndarray) -> GradientTables:
    """Tables for :func:`chunk_gradient` from the log factors of :func:`mutual_information`."""
    nb2 = factor.size
    fpad = np.zeros(nb2 + 4)
    fpad[2: 2 + nb2] = factor.ravel()
    # w(x) = sum_o beta'(o - t) F[idx + o] = F0[idx] + t (F1[idx] + t F2[idx])
    shifted = np.stack([fpad[o + 2: o + 2 + nb2] for o in (-1, 0, 1, 2)])
    f0, f1, f2 = (DSPLINE_POLY.T @ shifted).astype(np.float32)
    return GradientTables(f0, f1, f2, fpad.astype(np.float32))


def chunk_gradient(samples: ChunkSamples, tables: GradientTables,
                   points: np.ndarray) -> np.ndarray:
    """``sum_x w(x) grad M(x) [y(x), 1]^T`` ``(dim, dim + 1)`` float64 over one chunk.

    ``points`` ``(dim + 1, n)``: the chunk's pre-aligned world points (mm) with a row of ones.
    """
    idx, t = samples.index, samples.t
    if samples.fast:
        w = tables.f2.take(idx)
        w *= t
        w += tables.f1.take(idx)
        w *= t
        w += tables.f0.take(idx)
    else:
        w = None
        for o, dw in cubic_bspline_weights(t, derivative=True):
            term = dw * tables.padded.take(idx + (o + 2))
            w = term if w is None else w + term
    if samples.weight is not None:
        w *= samples.weight
    return (samples.grad @ (points * w).T).astype(np.float64)
