"""Affine image registration with a DIPY-compatible API (``dipy.align.imaffine``, 1.12).

Spaces and units
----------------
* ``grid2world`` matrices are NIfTI affines: voxel indices ``(i, j, k)`` -> world RAS mm.
* An :class:`AffineMap` affine ``M`` maps **domain (static) world points to codomain
  (moving) world points** (mm -> mm).  ``AffineMap.transform(img)`` pulls ``img``
  (codomain) onto the domain grid: ``out[i] = img(W_codomain^-1 . M . W_domain . i)``.
  This is the matrix SyN takes as ``prealign``.
* :meth:`AffineRegistration.optimize` returns an :class:`AffineMap` whose affine maps
  static-world -> moving-world points.

Layout
------
This module is the DIPY-API layer (the classes and functions of ``dipy.align.imaffine``;
about 700 lines because it holds DIPY's three public classes with their argument checks
and docstrings).  The engine lives in :mod:`synflow.align._mi` (Parzen-window MI and its
gradient), :mod:`synflow.align._sampling` (samplers, resampling, sample grids, B-spline
kernels), :mod:`synflow.align.scalespace` (pyramids), :mod:`synflow.align._inputs` and
:mod:`synflow.align.affine_checks` (argument checks).

Engine
------
Everything is vectorised NumPy/SciPy.  The Parzen-window mutual information follows
DIPY (Mattes et al. 2003): static intensities use hard bins, moving intensities a cubic
B-spline kernel over 5 bins, 2 bins of padding, DIPY's normalisation and DIPY's
analytic gradient.  Differences from DIPY's Cython engine, all of them internal:

* the joint histogram is built with ``np.bincount``: the 4 non-zero B-spline weights of
  a sample are cubic polynomials of its fractional bin position ``t``, so 4 weighted
  counts of ``t^k`` per (static bin, moving bin) are combined afterwards into the 5-bin
  Parzen spread (a general 5-offset path handles values outside the histogram range);
* the gradient of the joint histogram is never materialised: because every transform
  is affine in ``x``, ``dMI/dtheta = sum_pq G_pq dM_pq/dtheta`` where ``G`` is one small
  ``(dim, dim + 1)`` weighted sum over the samples;
* the moving image is sampled in float32 with the exact derivative of its trilinear
  interpolant (DIPY uses +-half-voxel central differences), so the analytic gradient
  is the derivative of the computed metric;
* sparse sampling (``sampling_proportion``) honours masks (DIPY ignores them);
* BLAS is held to one thread while optimising (``threadpoolctl``; L-BFGS-B on 6-12
  parameters only loses time to BLAS thread wake-ups); parallelism is ours, see below.

Work is cut into fixed-size chunks of samples (independent of the thread count) run
through :func:`synflow._parallel.run_slabs`; partial sums are combined in chunk order,
so results are bit-identical for any number of threads.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.ndimage as ndi
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from synflow._parallel import run_slabs
from synflow.align._inputs import check_grid2world as _grid2world
from synflow.align._inputs import check_image as _check_image
from synflow.align._inputs import check_mask as _check_mask
from synflow.align._mi import (
    CHUNK,
    ChunkHistogram,
    ParzenBins,
    chunk_bounds,
    chunk_gradient,
    chunk_histogram,
    combine_chunks,
    gradient_tables,
    mutual_information,
)
from synflow.align._sampling import (
    LinearSampler,
    NearestSampler,
    resample_linear,
    resample_nearest,
    sample_grid,
)
from synflow.align.affine_checks import (
    AffineInvalidValuesError,
    AffineInversionError,
    check_affine,
)
from synflow.align.scalespace import IsotropicScaleSpace, ScaleSpace
from synflow.align.transforms import Transform

__all__ = [
    "AffineInversionError",
    "AffineInvalidValuesError",
    "AffineMap",
    "MutualInformationMetric",
    "AffineRegistration",
    "transform_centers_of_mass",
    "transform_geometric_centers",
    "transform_origins",
    "get_direction_and_spacings",
]

logger = logging.getLogger(__name__)

#: Number of array dimensions of an affine matrix (DIPY's module constant).
_number_dim_affine_matrix = 2



class VerbosityLevels:
    """DIPY's verbosity levels (only ``NONE`` and ``STATUS`` change what is logged)."""

    NONE = 0
    STATUS = 1
    DIAGNOSE = 2
    DEBUG = 3


# --------------------------------------------------------------------------- validation


def get_direction_and_spacings(affine: np.ndarray | None, dim: int) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Direction cosines and voxel sizes (mm) of a ``grid2world`` matrix (DIPY helper)."""
    if affine is None:
        return np.eye(dim), np.ones(dim)
    a = np.asarray(affine, dtype=np.float64)
    lin = a[:dim, :dim]
    spacing = np.sqrt((lin ** 2).sum(axis=0))
    return lin / spacing[None, :], spacing


# --------------------------------------------------------------------------- AffineMap


class AffineMap:
    """An affine transform between two sampling grids (DIPY's ``AffineMap``).

    Parameters
    ----------
    affine : array (dim+1, dim+1) or None
        World-to-world matrix mapping **domain (static) world points (mm) to codomain
        (moving) world points (mm)**.  ``None`` means the identity.
    domain_grid_shape, domain_grid2world : default sampling grid of :meth:`transform`
        (voxel -> world mm); ``None`` grid2world means identity.
    codomain_grid_shape, codomain_grid2world : default grid of :meth:`transform_inverse`.
    """

    def __init__(self, affine: np.ndarray | None, domain_grid_shape: Sequence[int] | None = None,
                 domain_grid2world: np.ndarray | None = None,
                 codomain_grid_shape: Sequence[int] | None = None,
                 codomain_grid2world: np.ndarray | None = None) -> None:
        self.set_affine(affine)
        self.domain_shape = domain_grid_shape
        self.domain_grid2world = domain_grid2world
        self.codomain_shape = codomain_grid_shape
        self.codomain_grid2world = codomain_grid2world

    def get_affine(self) -> np.ndarray | None:
        """A copy of the world-to-world matrix (static-world -> moving-world, mm)."""
        return None if self.affine is None else self.affine.copy()

    def set_affine(self, affine: np.ndarray | None) -> None:
        """Set the matrix; validates it (square, finite, last row ``[0..0 1]``, invertible).

        Raises :class:`AffineInversionError` / :class:`AffineInvalidValuesError`
        (both ``ValueError``) naming ``affine``.
        """
        if affine is None:
            self.affine = None
            self.affine_inv = None
            return
        a = check_affine(affine, "affine", None)
        self.affine = a.copy()
        self.affine_inv = np.linalg.inv(a)

    def __str__(self) -> str:
        return str(self.affine)

    def __repr__(self) -> str:
        return repr(self.affine)

    def __format__(self, format_spec: str) -> str:
        if not format_spec or self.affine is None:
            return str(self.affine)
        spec = format_spec.lower()
        if spec in ("", " ", "f", "full"):
            return str(self.affine)
        if spec in ("r", "rotation"):
            return str(self.affine[:-1, :-1])
        if spec in ("t", "translation"):
            return str(self.affine[:-1, -1:])
        raise NotImplementedError(f"Format {format_spec} not recognized or implemented.")

    def _apply_transform(self, image: np.ndarray, interpolation: str = "linear",
                         image_grid2world: np.ndarray | None = None,
                         sampling_grid_shape: Sequence[int] | None = None,
                         sampling_grid2world: np.ndarray | None = None,
                         resample_only: bool = False, apply_inverse: bool = False) -> np.ndarray:
        if interpolation not in ("linear", "nearest"):
            raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
        if sampling_grid_shape is None:
            sampling_grid_shape = self.codomain_shape if apply_inverse else self.domain_shape
        if sampling_grid_shape is None:
            raise ValueError("Unknown sampling info. Provide a valid sampling_grid_shape")
        shape = tuple(int(s) for s in sampling_grid_shape)
        dim = len(shape)
        if dim not in (2, 3) or min(shape) < 1:
            raise ValueError(f"sampling_grid_shape must be 2-D or 3-D, got {shape}")
        image = np.asarray(image)
        if image.ndim != dim:
            raise ValueError(f"image must be {dim}-D to match the sampling grid {shape}, "
                             f"got shape {image.shape}")
        if image.size == 0:
            raise ValueError("image is empty")
        if sampling_grid2world is None:
            sampling_grid2world = (self.codomain_grid2world if apply_inverse
                                   else self.domain_grid2world)
        sampling_grid2world = _grid2world(sampling_grid2world, dim, "sampling_grid2world")
        if image_grid2world is None:
            image_grid2world = (self.domain_grid2world if apply_inverse
                                else self.codomain_grid2world)
        image_grid2world = _grid2world(image_grid2world, dim, "image_grid2world")
        aff = self.affine_inv if apply_inverse else self.affine
        if aff is not None and aff.shape != (dim + 1, dim + 1):
            raise ValueError(f"affine is {aff.shape[0]}x{aff.shape[1]} but the images are {dim}-D")
        world2grid = np.linalg.inv(image_grid2world)
        if aff is None or resample_only:
            comp = world2grid @ sampling_grid2world
        else:
            comp = world2grid @ (aff @ sampling_grid2world)
        if interpolation == "linear":
            return resample_linear(image, shape, comp)
        img = image.astype(np.uint8) if image.dtype == bool else image
        return resample_nearest(img, shape, comp)

    def transform(self, image: np.ndarray, interpolation: str = "linear",
                  image_grid2world: np.ndarray | None = None,
                  sampling_grid_shape: Sequence[int] | None = None,
                  sampling_grid2world: np.ndarray | None = None,
                  resample_only: bool = False) -> np.ndarray:
        """Pull ``image`` (codomain/moving) onto the domain grid.

        ``out[i] = image(W_image^-1 . affine . W_sampling . i)`` where ``W_*`` are
        grid2world matrices (voxel -> mm; defaults: the codomain grid for the image and the
        domain grid for the sampling grid, identity if unset).  ``'linear'`` is k-linear
        interpolation with zero padding (float64 output, like DIPY); ``'nearest'`` uses
        DIPY's rule (x.5 rounds down, inside iff ``0 <= x <= n-1``) and keeps the dtype.
        """
        return self._apply_transform(image, interpolation, image_grid2world, sampling_grid_shape,
                                     sampling_grid2world, resample_only, apply_inverse=False)

    def transform_inverse(self, image: np.ndarray, interpolation: str = "linear",
                          image_grid2world: np.ndarray | None = None,
                          sampling_grid_shape: Sequence[int] | None = None,
                          sampling_grid2world: np.ndarray | None = None,
                          resample_only: bool = False) -> np.ndarray:
        """Push ``image`` (domain/static) onto the codomain grid using ``affine^-1``."""
        return self._apply_transform(image, interpolation, image_grid2world, sampling_grid_shape,
                                     sampling_grid2world, resample_only, apply_inverse=True)


# --------------------------------------------------------------------------- centre helpers


def _translation_map(static: np.ndarray, static_grid2world: np.ndarray | None,
                     moving: np.ndarray, moving_grid2world: np.ndarray | None,
                     c_static: np.ndarray, c_moving: np.ndarray) -> AffineMap:
    dim = static.ndim
    s2w = _grid2world(static_grid2world, dim, "static_grid2world")
    m2w = _grid2world(moving_grid2world, dim, "moving_grid2world")
    ws = s2w @ np.append(c_static, 1.0)
    wm = m2w @ np.append(c_moving, 1.0)
    t = np.eye(dim + 1)
    t[:dim, dim] = (wm - ws)[:dim]
    return AffineMap(t, domain_grid_shape=static.shape, domain_grid2world=s2w,
                     codomain_grid_shape=moving.shape, codomain_grid2world=m2w)


def transform_centers_of_mass(static: np.ndarray, static_grid2world: np.ndarray | None,
                              moving: np.ndarray, moving_grid2world: np.ndarray | None
                              ) -> AffineMap:
    """Translation (static-world -> moving-world, mm) aligning the intensity centres of mass.

    ``t = W_moving . com(moving) - W_static . com(static)`` with ``scipy.ndimage.center_of_mass``
    (voxel units) mapped to world mm by the grid2world matrices.
    """
    static = _check_image(static, "static")
    moving = _check_image(moving, "moving", (static.ndim,))
    cs, cm = (np.array(ndi.center_of_mass(np.asarray(a, dtype=np.float64)))
              for a in (static, moving))
    if not (np.all(np.isfinite(cs))):
        raise ValueError("static has zero total intensity: its centre of mass is undefined")
    if not (np.all(np.isfinite(cm))):
        raise ValueError("moving has zero total intensity: its centre of mass is undefined")
    return _translation_map(static, static_grid2world, moving, moving_grid2world, cs, cm)


def transform_geometric_centers(static: np.ndarray, static_grid2world: np.ndarray | None,
                                moving: np.ndarray, moving_grid2world: np.ndarray | None
                                ) -> AffineMap:
    """Translation aligning the world positions of voxel ``shape / 2`` of each image (DIPY)."""
    static = np.asarray(static)
    moving = np.asarray(moving)
    return _translation_map(static, static_grid2world, moving, moving_grid2world,
                            np.array(static.shape, dtype=np.float64) * 0.5,
                            np.array(moving.shape, dtype=np.float64) * 0.5)


def transform_origins(static: np.ndarray, static_grid2world: np.ndarray | None,
                      moving: np.ndarray, moving_grid2world: np.ndarray | None) -> AffineMap:
    """Translation aligning the world positions of voxel ``(0, ..., 0)`` of each image."""
    static = np.asarray(static)
    moving = np.asarray(moving)
    zero = np.zeros(static.ndim)
    return _translation_map(static, static_grid2world, moving, moving_grid2world, zero, zero)


# --------------------------------------------------------------------------- sampling kernels


class _LevelData:
    """Per-level constant data for the metric: sample points, static bins, moving sampler."""

    pts: np.ndarray  # (dim + 1, N) float32: pre-aligned world points y (mm), last row ones
    sbins: np.ndarray  # static bin index per sample
    n: int


# --------------------------------------------------------------------------- MI metric


class MutualInformationMetric:
    """Parzen-window mutual information (DIPY's ``MutualInformationMetric``).

    Parameters
    ----------
    nbins : int
        Number of histogram bins (including 2 padding bins on each side), default 32.
    sampling_proportion : None or float in (0, 1]
        ``None``: dense sampling (every static voxel inside ``static_mask``).  A float:
        every ``ceil(1/p)``-th static voxel plus N(0, 0.25^2)-voxel jitter (seed 1234), as
        in DIPY; unlike DIPY, masks are honoured in this mode too.
    """

    def __init__(self, nbins: int = 32, sampling_proportion: float | None = None) -> None:
        if int(nbins) != nbins or nbins < 6:
            raise ValueError(f"nbins must be an integer >= 6, got {nbins!r}")
        if sampling_proportion is not None and not (0.0 < float(sampling_proportion) <= 1.0):
            raise ValueError(
                f"sampling_proportion must be None or in (0, 1], got {sampling_proportion!r}")
        self.nbins = int(nbins)
        self.sampling_proportion = sampling_proportion
        self.histogram = ParzenBins(self.nbins)
        self.metric_val: float | None = None
        self.metric_grad: np.ndarray | None = None

    # -- setup --------------------------------------------------------------------------
    def setup(self, transform: Transform, static: np.ndarray, moving: np.ndarray,
              static_grid2world: np.ndarray | None = None,
              moving_grid2world: np.ndarray | None = None,
              starting_affine: np.ndarray | None = None,
              static_mask: np.ndarray | None = None,
              moving_mask: np.ndarray | None = None) -> None:
        """Prepare the metric for ``static`` (fixed samples) and ``moving`` (interpolated).

        ``starting_affine`` maps static-world -> moving-world (mm) and is composed as
        ``T(theta) . starting_affine``; the Jacobian is taken at the pre-aligned points.
        """
        static = _check_image(static, "static")
        dim = static.ndim
        moving = _check_image(moving, "moving", (dim,))
        if transform.get_dim() != dim:
            raise ValueError(f"transform is {transform.get_dim()}-D but the images are {dim}-D")
        self.dim = dim
        self.transform = transform
        self.metric_grad = np.zeros(transform.get_number_of_parameters())
        self.static_grid2world = _grid2world(static_grid2world, dim, "static_grid2world")
        self.moving_grid2world = _grid2world(moving_grid2world, dim, "moving_grid2world")
        self.moving_world2grid = np.linalg.inv(self.moving_grid2world)
        self.starting_affine = (None if starting_affine is None
                                else check_affine(starting_affine, "starting_affine", dim))
        smask = _check_mask(static_mask, static.shape, "static_mask")
        mmask = _check_mask(moving_mask, moving.shape, "moving_mask")
        self.static_mask, self.moving_mask = smask, mmask
        static = np.asarray(static, dtype=np.float32)
        moving = np.asarray(moving, dtype=np.float32)
        self.static, self.moving = static, moving
        self.histogram.setup(static, moving, smask, mmask)
        pre = self.static_grid2world
        if self.starting_affine is not None:
            pre = self.starting_affine @ pre
        vox, svals = sample_grid(static, smask, self.sampling_proportion)
        if vox[0].size == 0:
            raise ValueError("no sample point left inside static_mask")
        ld = _LevelData()
        ld.n = int(vox[0].size)
        ld.pts = np.ones((dim + 1, vox[0].size), dtype=np.float32)
        for p in range(dim):
            ld.pts[p] = (sum(float(pre[p, q]) * vox[q].astype(np.float64) for q in range(dim))
                         + float(pre[p, dim]))
        ld.sbins = self.histogram.static_bins(svals)
        self._level = ld
        self._sampler = LinearSampler(moving)
        self._msampler = None if mmask is None else NearestSampler(mmask)
        self._static_counts = None
        if mmask is None:
            self._static_counts = np.bincount(ld.sbins, minlength=self.nbins).astype(np.float64)
        self._check_overlap()

    def _check_overlap(self) -> None:
        """Raise if no sample lands inside the moving grid at the starting alignment."""
        comp = self.moving_world2grid
        ld = self._level
        step = max(1, ld.n // 20000)
        inside = np.ones(len(range(0, ld.n, step)), dtype=bool)
        for p, n in enumerate(self.moving.shape):
            x = sum(float(comp[p, q]) * ld.pts[q, ::step] for q in range(self.dim))
            x = x + float(comp[p, self.dim])
            inside &= (x > -0.5) & (x < n - 0.5)
        if not inside.any():
            raise ValueError(
                "static and moving do not overlap after the initial alignment "
                "(check static_grid2world, moving_grid2world and starting_affine)")

    # -- evaluation ---------------------------------------------------------------------
    def _coords(self, comp32: np.ndarray, a: int, b: int) -> np.ndarray:
        """Moving voxel coordinates ``(dim, b - a)`` float32 of samples ``a:b``."""
        return comp32 @ self._level.pts[:, a:b]

    def _evaluate(self, params: np.ndarray, want_grad: bool) -> tuple[float, np.ndarray | None]:
        """MI (and its gradient w.r.t. ``params``) for the current transform parameters."""
        T = self.transform.param_to_matrix(params)
        if not np.all(np.isfinite(T)) or abs(np.linalg.det(T[:-1, :-1])) < 1e-12:
            raise AffineInvalidValuesError("transform parameters give an invalid matrix")
        comp = self.moving_world2grid @ T  # pre-aligned world (mm) -> moving voxel
        comp32 = np.ascontiguousarray(comp[: self.dim], dtype=np.float32)
        ld = self._level
        sampler, msampler = self._sampler, self._msampler

        def histogram_pass(a: int, b: int) -> ChunkHistogram:
            q = self._coords(comp32, a, b)
            val, g = sampler(q, want_grad)
            valid = None if msampler is None else msampler(q)
            return chunk_histogram(val, g, valid, ld.sbins[a:b], self.histogram, want_grad)

        slabs = chunk_bounds(ld.n)
        chunks = run_slabs(histogram_pass, ld.n, min_slab=CHUNK, max_slabs=len(slabs))
        dist = combine_chunks(chunks, self.nbins, self._static_counts)
        H = self.histogram
        H.joint, H.smarginal, H.mmarginal = dist.joint, dist.smarginal, dist.mmarginal
        mi, factor = mutual_information(dist)
        if not want_grad:
            return mi, None
        if dist.nvalid == 0 or dist.total <= 0:
            return mi, np.zeros(self.transform.get_number_of_parameters())
        tables = gradient_tables(factor)

        def gradient_pass(k: int, _b: int) -> np.ndarray:
            samples = chunks[k].samples
            a = slabs[k][0]
            return chunk_gradient(samples, tables, ld.pts[:, a: a + samples.index.size])

        parts = run_slabs(gradient_pass, len(chunks), min_slab=1, max_slabs=len(chunks))
        gvox = np.zeros((self.dim, self.dim + 1))
        for part in parts:
            gvox += part
        lin = self.moving_world2grid[: self.dim, : self.dim]
        gworld = lin.T @ gvox  # sum_x w(x) grad_world M(x) [y(x), 1]
        dM = self.transform.matrix_derivatives(params)
        return mi, -np.einsum("npq,pq->n", dM, gworld) / (dist.nvalid * H.mdelta)

    def _safe(self, params: np.ndarray, want_grad: bool) -> tuple[float, np.ndarray | None]:
        try:
            mi, grad = self._evaluate(np.asarray(params, dtype=np.float64), want_grad)
        except (AffineInversionError, AffineInvalidValuesError, np.linalg.LinAlgError):
            return math.inf, np.zeros(self.transform.get_number_of_parameters())
        if not math.isfinite(mi) or (grad is not None and not np.all(np.isfinite(grad))):
            return math.inf, np.zeros(self.transform.get_number_of_parameters())
        self.metric_val = mi
        if grad is not None:
            self.metric_grad = grad
        return mi, grad

    def distance(self, params: np.ndarray) -> float:
        """Negative mutual information at ``params`` (``inf`` for an invalid transform)."""
        mi, _ = self._safe(params, False)
        return math.inf if mi == math.inf else -mi

    def gradient(self, params: np.ndarray) -> np.ndarray:
        """Gradient of the negative MI w.r.t. ``params`` (zeros for an invalid transform)."""
        mi, grad = self._safe(params, True)
        return np.zeros_like(grad) if mi == math.inf else -grad

    def distance_and_gradient(self, params: np.ndarray) -> tuple[float, np.ndarray]:
        """``(-MI, -dMI/dparams)``; ``(inf, 0)`` for an invalid transform (as DIPY)."""
        mi, grad = self._safe(params, True)
        if mi == math.inf:
            return math.inf, np.zeros_like(grad)
        return -mi, -grad


# --------------------------------------------------------------------------- registration


class AffineRegistration:
    """Multi-resolution affine registration maximising mutual information (DIPY API).

    Parameters (DIPY 1.12 defaults)
    -------------------------------
    metric : MutualInformationMetric or None (default: ``MutualInformationMetric()``).
    level_iters : function-evaluation budget per level, coarsest first; ``[1000, 500, 100]``.
    sigmas : Gaussian sigma per level in full-resolution voxels, coarsest first; ``[3, 1, 0]``.
    factors : shrink factor per level, coarsest first; ``[4, 2, 1]``.
    method : ``scipy.optimize.minimize`` method, default ``'L-BFGS-B'``.
    ss_sigma_factor : if given, DIPY's anisotropic scale space is used instead.
    options : extra optimizer options; default ``{'gtol': 1e-4}`` plus ``maxfun`` (L-BFGS-B)
        or ``maxiter`` set from ``level_iters`` at each level.
    verbosity : 0 silences the per-level log messages.
    """

    def __init__(self, metric: MutualInformationMetric | None = None,
                 level_iters: Sequence[int] | None = None,
                 sigmas: Sequence[float] | None = None,
                 factors: Sequence[int] | None = None, method: str = "L-BFGS-B",
                 ss_sigma_factor: float | None = None, options: dict | None = None,
                 verbosity: int = VerbosityLevels.STATUS) -> None:
        self.metric = MutualInformationMetric() if metric is None else metric
        self.level_iters = list([1000, 500, 100] if level_iters is None else level_iters)
        self.levels = len(self.level_iters)
        if self.levels == 0:
            raise ValueError("level_iters (the iterations sequence) cannot be empty")
        if any(int(it) != it or it < 0 for it in self.level_iters):
            raise ValueError(f"level_iters must be non-negative integers, got {self.level_iters}")
        self.options = options
        self.method = method
        if ss_sigma_factor is not None:
            self.use_isotropic = False
            self.ss_sigma_factor = float(ss_sigma_factor)
        else:
            self.use_isotropic = True
            self.factors = list([4, 2, 1] if factors is None else factors)
            self.sigmas = list([3, 1, 0] if sigmas is None else sigmas)
            if len(self.factors) != self.levels or len(self.sigmas) != self.levels:
                raise ValueError(
                    f"level_iters, sigmas and factors must have the same length, got "
                    f"{self.levels}, {len(self.sigmas)} and {len(self.factors)}")
            if any(int(f) != f or f < 1 for f in self.factors):
                raise ValueError(f"factors must be positive integers, got {self.factors}")
        self.verbosity = verbosity
        self._cache: dict | None = None  # scale-space cache, enabled by the pipeline helpers

    # -- helpers ------------------------------------------------------------------------
    def _scale_space(self, img: np.ndarray, mask: np.ndarray | None, g2w: np.ndarray,
                     key: Any) -> ScaleSpace:
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        if mask is not None:
            vals = img[mask]
            lo, hi = float(vals.min()), float(vals.max())
        else:
            lo, hi = float(img.min()), float(img.max())
        norm = (img.astype(np.float64) - lo) / (hi - lo)
        _, spacing = get_direction_and_spacings(g2w, img.ndim)
        if self.use_isotropic:
            ss = IsotropicScaleSpace(norm, self.factors, self.sigmas, g2w, spacing)
        else:
            ss = ScaleSpace(norm, self.levels, g2w, spacing, self.ss_sigma_factor,
                            work_dtype=np.float64)
        if self._cache is not None:
            self._cache[key] = ss
        return ss

    def _sparse_masks(self, static_mask: Any, moving_mask: Any) -> tuple[Any, Any]:
        """DIPY's mask warnings.

        An all-zero mask is ignored with a ``UserWarning`` (DIPY: "the entire volume will
        be used").  With ``sampling_proportion`` not in ``(None, 1.0)`` and a mask, a
        ``UserWarning`` is issued as in DIPY, but the masks are honoured (DIPY drops them).
        """
        out = []
        for name, m in (("static_mask", static_mask), ("moving_mask", moving_mask)):
            if m is not None and np.asarray(m).size and not np.any(np.asarray(m)):
                warnings.warn(f"{name} is all zeros, setting it to None (the entire volume "
                              "is used), as DIPY", UserWarning, stacklevel=3)
                m = None
            out.append(m)
        sp = getattr(self.metric, "sampling_proportion", None)
        if sp not in (None, 1.0) and (out[0] is not None or out[1] is not None):
            warnings.warn(
                f"static_mask/moving_mask combined with sparse sampling (sampling_proportion="
                f"{sp}): DIPY ignores masks in this case, synflow honours them (samples are "
                "kept inside the masks)", UserWarning, stacklevel=3)
        return out[0], out[1]

    def _starting_affine(self, starting_affine: Any, static, s2w, moving, m2w) -> np.ndarray:
        dim = static.ndim
        if starting_affine is None:
            return np.eye(dim + 1)
        if isinstance(starting_affine, str):
            if starting_affine == "mass":
                return transform_centers_of_mass(static, s2w, moving, m2w).affine
            if starting_affine == "voxel-origin":
                return transform_origins(static, s2w, moving, m2w).affine
            if starting_affine == "centers":
                return transform_geometric_centers(static, s2w, moving, m2w).affine
            raise ValueError(f"Invalid starting_affine strategy {starting_affine!r}: expected "
                             "'mass', 'voxel-origin', 'centers', a matrix or None")
        return check_affine(starting_affine, "starting_affine", dim)

    # -- main entry ---------------------------------------------------------------------
    def optimize(self, static: np.ndarray, moving: np.ndarray, transform: Transform,
                 params0: np.ndarray | None, static_grid2world: np.ndarray | None = None,
                 moving_grid2world: np.ndarray | None = None,
                 starting_affine: np.ndarray | str | None = None, ret_metric: bool = False,
                 static_mask: np.ndarray | None = None,
                 moving_mask: np.ndarray | None = None):
        """Register ``moving`` to ``static``; returns an :class:`AffineMap`.

        The returned affine maps **static-world -> moving-world** points (mm), i.e.
        ``AffineMap.transform(moving)`` resamples the moving image onto the static grid;
        it is what SyN takes as ``prealign``.  ``starting_affine`` (same direction) may be a
        matrix, ``'mass'``, ``'voxel-origin'``, ``'centers'`` or ``None`` (identity).
        With ``ret_metric=True`` returns ``(affine_map, xopt, fopt)`` of the last level.
        """
        static = _check_image(static, "static")
        dim = static.ndim
        moving = _check_image(moving, "moving", (dim,))
        if transform.get_dim() != dim:
            raise ValueError(f"transform is {transform.get_dim()}-D but the images are {dim}-D")
        s2w = _grid2world(static_grid2world, dim, "static_grid2world")
        m2w = _grid2world(moving_grid2world, dim, "moving_grid2world")
        static_mask, moving_mask = self._sparse_masks(static_mask, moving_mask)
        smask = _check_mask(static_mask, static.shape, "static_mask")
        mmask = _check_mask(moving_mask, moving.shape, "moving_mask")
        for name, img, m in (("static", static, smask), ("moving", moving, mmask)):
            vals = img if m is None else img[m]
            if not float(vals.max()) > float(vals.min()):
                raise ValueError(f"{name} is constant"
                                 + (f" within {name}_mask" if m is not None else ""))
        self.dim = dim
        self.transform = transform
        n = transform.get_number_of_parameters()
        if params0 is None:
            params0 = transform.get_identity_parameters()
        params0 = np.asarray(params0, dtype=np.float64).ravel()
        if params0.size != n or not np.all(np.isfinite(params0)):
            raise ValueError(f"params0 must be {n} finite values for {type(transform).__name__}")
        self.params0 = params0
        start = self._starting_affine(starting_affine, static, s2w, moving, m2w)
        self.starting_affine = start
        key = (id(static), id(smask), s2w.tobytes())
        static_ss = self._scale_space(static, smask, s2w, ("s",) + key)
        moving_ss = self._scale_space(moving, mmask, m2w,
                                      ("m", id(moving), id(mmask), m2w.tobytes()))
        self.static_ss, self.moving_ss = static_ss, moving_ss
        # L-BFGS-B on 6-12 parameters and the tiny (3, n) @ (n, 4) products gain nothing
        # from BLAS threads, whose wake-ups cost ms per call on a loaded machine; our own
        # parallelism goes through synflow._parallel.
        with threadpool_limits(limits=1, user_api="blas"):
            opt = self._run_levels(static, moving, transform, smask, mmask, m2w)
        affine_map = AffineMap(self.starting_affine, domain_grid_shape=static.shape,
                               domain_grid2world=s2w, codomain_grid_shape=moving.shape,
                               codomain_grid2world=m2w)
        if ret_metric:
            xopt = None if opt is None else np.asarray(opt.x)
            fopt = None if opt is None else float(opt.fun)
            return affine_map, xopt, fopt
        return affine_map

    def _static_at_level(self, full_shape: tuple[int, ...], level: int
                         ) -> tuple[np.ndarray, tuple[int, ...]]:
        """The smoothed static image sampled on the ``level`` grid, and that grid's shape."""
        ss = self.static_ss
        image = ss.get_image(level)
        shape = tuple(int(v) for v in ss.get_domain_shape(level))
        scaling = ss.get_scaling(level)
        if np.allclose(scaling, np.round(scaling)) and shape != full_shape:
            f = [int(round(v)) for v in scaling]
            step = tuple(slice(0, sh * fi, fi) for sh, fi in zip(shape, f, strict=True))
            return image[step], shape
        if shape == full_shape:
            return image, shape
        comp = np.diag(np.append(scaling, 1.0))  # coarse voxel -> full voxel
        return resample_linear(image, shape, comp).astype(np.float32), shape

    def _run_levels(self, static, moving, transform, smask, mmask, m2w):
        """Coarse-to-fine optimisation; updates ``self.starting_affine``; last result."""
        static_ss, moving_ss, dim = self.static_ss, self.moving_ss, self.dim
        opt = None
        for level in range(self.levels - 1, -1, -1):
            self.current_level = level
            max_iter = int(self.level_iters[-1 - level])
            if self.verbosity >= VerbosityLevels.STATUS:
                logger.info("Optimizing level %d [max iter: %d]", level, max_iter)
            cur_static, shape = self._static_at_level(static.shape, level)
            cur_smask = None
            if smask is not None:
                comp = np.diag(np.append(static_ss.get_scaling(level), 1.0))
                cur_smask = resample_nearest(smask.astype(np.uint8), shape, comp) != 0
                if not cur_smask.any():
                    raise ValueError(f"static_mask is empty at pyramid level {level}")
            if max_iter == 0:
                continue
            self.metric.setup(transform, cur_static, moving_ss.get_image(level),
                              static_grid2world=static_ss.get_affine(level),
                              moving_grid2world=m2w,
                              starting_affine=self.starting_affine, static_mask=cur_smask,
                              moving_mask=mmask)
            options = {"gtol": 1e-4} if self.options is None else dict(self.options)
            if self.method == "L-BFGS-B":
                options["maxfun"] = max_iter
            else:
                options["maxiter"] = max_iter
            opt = minimize(self.metric.distance_and_gradient, self.params0, method=self.method,
                           jac=True, options=options)
            params = np.asarray(opt.x, dtype=np.float64)
            if not np.all(np.isfinite(params)):
                raise RuntimeError("affine registration diverged (non-finite parameters)")
            T = transform.param_to_matrix(params)
            new = T @ self.starting_affine
            try:
                check_affine(new, "registration result", dim)
            except ValueError as exc:
                raise RuntimeError(f"affine registration diverged: {exc}") from exc
            self.starting_affine = new
            self.params0 = transform.get_identity_parameters()
        return opt
