"""Symmetric diffeomorphic registration (SyN) and the maps it returns, with DIPY's API.

``SymmetricDiffeomorphicRegistration(metric, level_iters, ...).optimize(static, moving,
static_grid2world, moving_grid2world, prealign)`` returns a :class:`DiffeomorphicMap`
that warps ``moving`` onto the static grid (``transform``) and ``static`` onto the
moving grid (``transform_inverse``), exactly as DIPY 1.12 does.

Conventions (as in DIPY):

* ``prealign`` ``P`` maps **static-world points to moving-world points** (mm, RAS);
* ``mapping.transform(moving)[x] = moving(W_m @ P @ (x + b(x)))`` for a static voxel
  centre ``x`` (world), where ``b = mapping.get_forward_field()`` is a displacement in mm
  sampled on the static grid;
* public fields have DIPY's layout ``grid + (dim,)``, float32, mm.

How the optimisation differs from DIPY (same model, same step, far less work):
DIPY updates each half-map's forward field ``f <- (id + t u) o f`` and then runs four
fixed-point inversions per iteration to recover the backward (pull) fields.  synflow keeps
only the pull fields and updates them with the inverse of the same small step,
``b <- b o (id - t u)``, which is one trilinear composition per half-map per iteration
(``(id + t u)^-1 = id - t u + O(t^2 |u| |Du|)`` with ``t |u| <= step_length`` voxels).
The forward fields are computed once, at the end, by an accurate inversion.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from synflow._parallel import run_tasks
from synflow.align import vector_fields as vf
from synflow.align.affine_checks import check_affine
from synflow.align.diffeomorphic_map import (
    DiffeomorphicMap,
    _linear,
    _voxel_to_world_field,
    get_direction_and_spacings,
    mult_aff,
)
from synflow.align.imaffine import VerbosityLevels
from synflow.align.metrics import zero_border
from synflow.align.scalespace import ScaleSpace

logger = logging.getLogger(__name__)

__all__ = [
    "RECOMMENDED",
    "DiffeomorphicMap",
    "RegistrationStages",
    "SymmetricDiffeomorphicRegistration",
    "VerbosityLevels",
    "get_direction_and_spacings",
    "mult_aff",
]


#: synflow's recommended SyN settings, the one place that defines them:
#: ``SymmetricDiffeomorphicRegistration(CCMetric(3, **RECOMMENDED["metric"]),
#: **RECOMMENDED["registration"])``.  Measured on the bench_syn phantoms (2 mm): a
#: smoother step (``sigma_diff`` 4 voxels instead of DIPY's 2) and a smoother total field
#: (``field_variance`` 0.5 voxels^2) let DIPY's fixed 0.25-voxel step move the bulk of
#: the brain further per iteration, and the energy stop ends each level when it stops
#: paying (see ``level_iters='auto'``).  Plain dicts: copy before changing them.
RECOMMENDED: dict[str, dict] = {
    "registration": {"level_iters": "auto", "max_iters": (50, 50, 30),
                     "energy_tol": 2e-3, "energy_window": 5, "work_cap": 8e6,
                     "field_variance": 0.5},
    "metric": {"sigma_diff": 4.0, "radius": 4},
}


class RegistrationStages(enum.Enum):
    """Stages at which the optimiser calls the user's callback (DIPY's names)."""

    INIT_START = 0
    INIT_END = 1
    OPT_START = 2
    OPT_END = 3
    SCALE_START = 4
    SCALE_END = 5
    ITER_START = 6
    ITER_END = 7


# --------------------------------------------------------------------------- validation
def _check_image(image, dim: int, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != dim:
        raise ValueError(f"{name} must be a {dim}-D array (the metric is {dim}-D), "
                         f"got shape {arr.shape}")
    if min(arr.shape) < 2:
        raise ValueError(f"{name} is too small: shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        raise ValueError(f"{name} has {int(arr.size - finite.sum())} non-finite voxels "
                         "(NaN or inf); replace them (e.g. np.nan_to_num) before registering")
    if float(arr.max()) <= float(arr.min()):
        raise ValueError(f"{name} is constant ({float(arr.min())}): there is nothing to register")
    return arr


def _check_auto(energy_tol: float, energy_window: int, work_cap: float | None) -> None:
    if work_cap is not None and (not np.isfinite(work_cap) or work_cap <= 0):
        raise ValueError(f"work_cap must be None or a positive number, got {work_cap!r}")
    if not np.isfinite(energy_tol) or energy_tol < 0:
        raise ValueError(f"energy_tol must be a non-negative number, got {energy_tol!r}")
    if int(energy_window) != energy_window or energy_window < 1:
        raise ValueError(f"energy_window must be a positive integer, got {energy_window!r}")


# --------------------------------------------------------------------------- optimiser
class SymmetricDiffeomorphicRegistration:
    """Symmetric Normalization (Avants et al. 2008), DIPY's constructor and ``optimize``.

    Parameters
    ----------
    metric : a :class:`synflow.align.metrics.CCMetric` or ``SSDMetric``.
    level_iters : iterations per pyramid level, **coarsest first** (default
        ``[100, 100, 25]``).  ``len(level_iters)`` is the number of levels.  synflow only:
        ``"auto"`` leaves the count to synflow: ``len(max_iters)`` levels, each stopped by
        the energy rule below (or at its cap ``max_iters``); DIPY's ``opt_tol`` rule is
        then not used.  The iterations used are in :attr:`iterations_per_level`.
    step_length : largest displacement of one update, in voxels of the current level.
    ss_sigma_factor : scale-space smoothing factor.
    opt_tol : a level stops early when the fitted derivative of the last 12 energies
        drops below this (levels with <= 12 iterations never stop early).
    inv_iter, inv_tol : iterations and mean residual (voxels) of the final field inversion.
    callback : ``callback(self, RegistrationStages.X)`` at each stage.
    field_variance : synflow only (keyword).  After each update the pull fields are
        smoothed with a 3-tap binomial kernel of this variance (voxels^2 of the current
        level, per axis): ANTs' "total field" regularisation.  DIPY gets a similar
        regularisation implicitly, from the numerical diffusion of the four trilinear
        resamplings per iteration its inversions make; synflow's update makes none, so it
        adds it explicitly.  0.25 (default) gave the lowest end-point error on the
        benchmark phantoms with DIPY's other defaults; 0 disables it.
    max_iters : synflow only (keyword).  Per-level caps of ``level_iters="auto"``,
        coarsest first (default ``(100, 100, 50)``).
    energy_tol, energy_window : synflow only (keyword).  ``level_iters="auto"`` ends a
        level after iteration ``k`` when the last ``w = energy_window`` iterations lowered
        the energy ``E`` (DIPY's, ``-sum`` of the local CC) by less than ``energy_tol``
        relative to the energy before them:
        ``E[k - w] - min(E[k - w + 1 .. k]) <= energy_tol * |E[k - w]|``; never before
        ``w + 1`` iterations.  Defaults ``1e-3`` and ``5``.
    work_cap : synflow only (keyword).  With ``level_iters="auto"``, also caps each
        level at ``max(1, work_cap // n)`` iterations, ``n`` = voxels of the level's grid
        (None, default: no such cap).  The cost of an iteration is proportional to
        ``n``: this keeps the finest level of a fine (e.g. 1 mm) grid short, where the
        energy keeps improving slowly but the end-point error hardly changes.

    Attributes
    ----------
    iterations_per_level : list of int
        Iterations run at each level by the last :meth:`optimize`, coarsest first (for
        any ``level_iters``).

    synflow's recommended settings are :data:`RECOMMENDED`.
    """

    def __init__(self, metric=None, level_iters: Sequence[int] | str | None = None,
                 step_length: float = 0.25, ss_sigma_factor: float = 0.2,
                 opt_tol: float = 1e-5, inv_iter: int = 20, inv_tol: float = 1e-3,
                 callback: Callable | None = None, *, field_variance: float = 0.25,
                 max_iters: Sequence[int] = (100, 100, 50), energy_tol: float = 1e-3,
                 energy_window: int = 5, work_cap: float | None = None):
        if metric is None:
            raise ValueError("metric cannot be None: pass e.g. CCMetric(3)")
        if level_iters is None:
            level_iters = [100, 100, 25]
        self.auto = isinstance(level_iters, str)
        if self.auto and level_iters != "auto":
            raise ValueError(f"level_iters must be a list of integers or 'auto', "
                             f"got {level_iters!r}")
        _check_auto(energy_tol, energy_window, work_cap)
        self.work_cap = None if work_cap is None else float(work_cap)
        self.energy_tol = float(energy_tol)
        self.auto_window = int(energy_window)
        self.max_iters = [int(n) for n in max_iters]
        level_iters = list(self.max_iters if self.auto else level_iters)
        if len(level_iters) == 0:
            raise ValueError("level_iters must contain at least one level (got an empty list)")
        if any(int(n) != n or n < 0 for n in level_iters):
            raise ValueError(f"level_iters must be non-negative integers, got {level_iters}")
        if not np.isfinite(step_length) or step_length <= 0:
            raise ValueError(f"step_length must be a positive number, got {step_length!r}")
        if not np.isfinite(field_variance) or not 0 <= field_variance <= 0.5:
            raise ValueError(f"field_variance must be in [0, 0.5] voxels^2, got {field_variance!r}")
        self.field_variance = float(field_variance)
        self.metric = metric
        self.dim = metric.dim
        self.level_iters: list[int] | str = "auto" if self.auto else [int(n) for n in level_iters]
        self.iterations_per_level: list[int] = []
        self.levels = len(level_iters)
        self.step_length = float(step_length)
        self.ss_sigma_factor = float(ss_sigma_factor)
        self.opt_tol = float(opt_tol)
        self.inv_iter = int(inv_iter)
        self.inv_tol = float(inv_tol)
        self.callback = callback
        self.energy_window = 12
        self.energy_list: list[float] = []
        self.full_energy_profile: list[float] = []
        self.current_level = -1
        self.niter = 0
        self.static_to_moving: DiffeomorphicMap | None = None
        self.verbosity = VerbosityLevels.STATUS
        self._halves: dict | None = None
        self._half_maps: dict[str, DiffeomorphicMap] = {}

    def set_level_iters(self, level_iters: Sequence[int]) -> None:
        """Iterations per level, coarsest first."""
        verbosity = self.verbosity
        self.__init__(self.metric, level_iters, self.step_length, self.ss_sigma_factor,
                      self.opt_tol, self.inv_iter, self.inv_tol, self.callback,
                      field_variance=self.field_variance, max_iters=self.max_iters,
                      energy_tol=self.energy_tol, energy_window=self.auto_window,
                      work_cap=self.work_cap)
        self.verbosity = verbosity

    def get_map(self) -> DiffeomorphicMap:
        """The map returned by the last :meth:`optimize` (moving -> static by ``transform``)."""
        if self.static_to_moving is None:
            raise ValueError("get_map() called before optimize()")
        return self.static_to_moving

    def get_intermediate_maps(self) -> tuple[DiffeomorphicMap, DiffeomorphicMap]:
        """``(static_to_ref, moving_to_ref)``, the two half-maps (DIPY's method).

        Both live on the full-resolution static grid; their ``transform_inverse`` pulls
        the static (resp. moving) image into the reference (mid-way) space, see
        :attr:`static_to_ref` and :attr:`moving_to_ref`.
        """
        if self._halves is None:
            raise ValueError("get_intermediate_maps() called before optimize()")
        return self.static_to_ref, self.moving_to_ref

    @property
    def static_to_ref(self) -> DiffeomorphicMap | None:
        """Half-map of the static image (None before :meth:`optimize`).

        Domain = codomain = displacement grid = the static grid, no prealign;
        ``backward`` (mm) pulls the static image into the reference space
        (``transform_inverse(static)``), ``forward`` is its inverse.
        """
        return self._half_map("static")

    @property
    def moving_to_ref(self) -> DiffeomorphicMap | None:
        """Half-map of the moving image (None before :meth:`optimize`).

        Domain = the moving grid, codomain = displacement grid = the static grid,
        ``prealign = P^-1``; ``backward`` (mm) pulls the moving image into the reference
        space (``transform_inverse(moving)``), ``forward`` is its inverse.
        """
        return self._half_map("moving")

    def _half_map(self, which: str) -> DiffeomorphicMap | None:
        """Build (once) a half-map from the voxel fields kept by :meth:`optimize`."""
        if self._halves is None:
            return None
        cached = self._half_maps.get(which)
        if cached is None:
            h = self._halves
            if which == "static":
                cached = DiffeomorphicMap(self.dim, h["shape"], h["S2W"], h["shape"], h["S2W"],
                                          h["shape"], h["S2W"], None)
            else:
                cached = DiffeomorphicMap(self.dim, h["shape"], h["S2W"], h["moving_shape"],
                                          h["M2W"], h["shape"], h["S2W"], np.linalg.inv(h["P"]))
            cached.forward = _voxel_to_world_field(h[which + "_forward"], h["S2W"])
            cached.backward = _voxel_to_world_field(h[which + "_backward"], h["S2W"])
            self._half_maps[which] = cached
        return cached

    def _notify(self, stage: RegistrationStages) -> None:
        if self.callback is not None:
            self.callback(self, stage)

    def _update(self, pull, factors, image, ginv, forward: bool) -> np.ndarray:
        """``pull <- smooth(pull o (id - t * step / max|step|))`` (voxels), DIPY's step."""
        step = self.metric.step(factors, image, ginv, forward)
        # DIPY zeroes the outermost layer of the step, then scales its largest norm to
        # step_length voxels.
        zero_border(step, 1)
        nrm = vf.field_norm_max(step)
        if nrm <= 0:
            return pull
        step *= np.float32(-self.step_length / nrm)
        return vf.compose_small(step, pull, diffusion=self.field_variance)

    def _get_energy_derivative(self) -> float:
        """DIPY's convergence rule: derivative at the centre of a quadratic fit.

        Fits the last ``energy_window`` energies (normalised by minus their absolute sum);
        raises ValueError when fewer are available.
        """
        if len(self.energy_list) < self.energy_window:
            raise ValueError(f"not enough energies to fit the profile: "
                             f"{len(self.energy_list)} < {self.energy_window}")
        y = np.asarray(self.energy_list[-self.energy_window:], dtype=np.float64)
        total = y.sum()
        if total != 0:
            y = y / -abs(total)
        x = np.arange(self.energy_window, dtype=np.float64)
        a, b, _ = np.polyfit(x, y, 2)
        return float(2.0 * a * (self.energy_window // 2) + b)

    def _auto_converged(self) -> bool:
        """``level_iters='auto'``'s per-level stop on the energy ``E`` (lower is better).

        True when the last ``w = energy_window`` iterations improved on the energy of the
        one before them by less than ``energy_tol`` relative:
        ``(E[k - w] - min(E[k - w + 1 .. k])) <= energy_tol * |E[k - w]|``.
        Never before ``w + 1`` energies of the level are known.
        """
        w = self.auto_window
        e = self.energy_list
        if len(e) < w + 1:
            return False
        old = e[-w - 1]
        return (old - min(e[-w:])) <= self.energy_tol * abs(old)

    def optimize(self, static, moving, static_grid2world=None, moving_grid2world=None,
                 prealign=None) -> DiffeomorphicMap:
        """Register ``moving`` to ``static``; returns the ``DiffeomorphicMap``.

        ``static_grid2world``/``moving_grid2world``: voxel -> world (mm) matrices (None =
        identity).  ``prealign``: static-world -> moving-world matrix, e.g. from
        ``AffineRegistration`` (None = identity).
        """
        dim = self.dim
        static = _check_image(static, dim, "static")
        moving = _check_image(moving, dim, "moving")
        eye = np.eye(dim + 1)
        S2W, M2W, P = (eye if m is None else m for m in (
            check_affine(static_grid2world, "static_grid2world", dim, allow_none=True),
            check_affine(moving_grid2world, "moving_grid2world", dim, allow_none=True),
            check_affine(prealign, "prealign", dim, allow_none=True)))

        self._notify(RegistrationStages.INIT_START)
        mask0 = bool(getattr(self.metric, "mask0", False))
        ss_static = ScaleSpace(static, self.levels, S2W, sigma_factor=self.ss_sigma_factor,
                               mask0=mask0)
        coarsest = ss_static.get_domain_shape(self.levels - 1)
        self.metric.check_shape(coarsest, what=f"coarsest level ({self.levels} levels) static")
        ss_moving = ScaleSpace(moving, self.levels, M2W, sigma_factor=self.ss_sigma_factor,
                               mask0=mask0)
        self._notify(RegistrationStages.INIT_END)

        self.full_energy_profile = []
        self.iterations_per_level = []
        self._notify(RegistrationStages.OPT_START)
        s_b, m_b = self._optimize_levels(ss_static, ss_moving, S2W, M2W, P)
        mapping = self._finish(s_b, m_b, static.shape, moving.shape, S2W, M2W, P)
        self._notify(RegistrationStages.OPT_END)
        return mapping

    def _optimize_levels(self, ss_static, ss_moving, S2W, M2W, P):
        """All pyramid levels, coarsest first; returns the two pull fields (static grid)."""
        dim = self.dim
        W_s = np.linalg.inv(S2W)
        W_m = np.linalg.inv(M2W)
        s_b = m_b = None  # pull fields of the two half-maps, voxel units of the level grid
        prev_A = None
        for level in range(self.levels - 1, -1, -1):
            self.current_level = level
            if self.verbosity >= VerbosityLevels.STATUS:
                logger.info("Optimizing level %d", level)
            shape = tuple(int(s) for s in ss_static.get_domain_shape(level))
            A = ss_static.get_affine(level)
            if s_b is None:
                s_b = np.zeros((dim,) + shape, dtype=np.float32)
                m_b = np.zeros((dim,) + shape, dtype=np.float32)
            else:
                s_b = _resample_field(s_b, prev_A, A, shape)
                m_b = _resample_field(m_b, prev_A, A, shape)
            prev_A = A
            # Level images are fixed for the level: zero-pad them once so every sampling
            # can use the faster edge-clamped mode (see vector_fields.sample_padded).
            shift = np.eye(dim + 1)
            shift[:dim, dim] = vf.PAD
            level_data = (vf.pad_image(ss_static.get_image(level)), shift @ W_s @ A,
                          vf.pad_image(ss_moving.get_image(level)), shift @ W_m @ P @ A,
                          shape, np.linalg.inv(_linear(A).T @ _linear(A)))
            s_b, m_b = self._optimize_level(level, level_data, s_b, m_b)
        return s_b, m_b

    def _optimize_level(self, level: int, level_data, s_b, m_b):
        """Iterate one level until ``level_iters`` or convergence; returns the pull fields."""
        self._notify(RegistrationStages.SCALE_START)
        self.energy_list = []
        self.niter = 0
        derivative = np.inf
        if self.auto:
            n_iter = self.max_iters[self.levels - 1 - level]
            if self.work_cap is not None:  # iterations x voxels of this level's grid
                n_iter = min(n_iter, max(1, int(self.work_cap // np.prod(level_data[4]))))
        else:
            n_iter = self.level_iters[self.levels - 1 - level]
        while self.niter < n_iter and derivative > self.opt_tol:
            self._notify(RegistrationStages.ITER_START)
            s_b, m_b, energy = self._iterate(level_data, s_b, m_b)
            if not self.auto and len(self.energy_list) >= self.energy_window:
                derivative = self._get_energy_derivative()
            self.energy_list.append(2.0 * energy)
            if self.auto and self._auto_converged():
                derivative = -np.inf
            self.niter += 1
            self._notify(RegistrationStages.ITER_END)
        self.iterations_per_level.append(self.niter)
        self.full_energy_profile.extend(self.energy_list)
        self._notify(RegistrationStages.SCALE_END)
        return s_b, m_b

    def _iterate(self, level_data, s_b, m_b):
        """One symmetric iteration: warp both images, one metric evaluation, two updates."""
        static_img, to_static, moving_img, to_moving, shape, ginv = level_data
        # The two half-maps are independent within an iteration: run their
        # (equal-sized) work side by side, one per core.
        warped_static, warped_moving = run_tasks([
            partial(_pull_image, static_img, to_static, shape, s_b),
            partial(_pull_image, moving_img, to_moving, shape, m_b),
        ])
        factors, energy = self.metric.compute_factors(warped_static, warped_moving)
        s_b, m_b = run_tasks([
            partial(self._update, s_b, factors, warped_static, ginv, True),
            partial(self._update, m_b, factors, warped_moving, ginv, False),
        ])
        return s_b, m_b, energy

    def _finish(self, s_b, m_b, static_shape, moving_shape, S2W, M2W, P) -> DiffeomorphicMap:
        """Invert the half-maps, compose them into static -> moving, keep the halves."""
        dim = self.dim
        # Forward fields, once: (id + f) = (id + b)^-1 on the full-resolution static grid.
        s_f = vf.invert(s_b, self.inv_iter, self.inv_tol)
        m_f = vf.invert(m_b, self.inv_iter, self.inv_tol)

        # static -> moving pull: x -> (id + m_b) o (id + s_f), and its inverse.
        backward = vf.compose(s_f, m_b)
        forward = vf.compose(m_f, s_b)

        mapping = DiffeomorphicMap(dim, static_shape, S2W, moving_shape, M2W, static_shape,
                                   S2W, np.linalg.inv(P))
        mapping.forward = _voxel_to_world_field(forward, S2W)
        mapping.backward = _voxel_to_world_field(backward, S2W)
        mapping.is_inverse = True
        self.static_to_moving = mapping
        # The half-maps (DIPY's static_to_ref / moving_to_ref) are built on first access.
        self._halves = {"shape": static_shape, "moving_shape": moving_shape, "S2W": S2W,
                        "M2W": M2W, "P": P, "static_forward": s_f, "static_backward": s_b,
                        "moving_forward": m_f, "moving_backward": m_b}
        self._half_maps = {}
        return mapping


def _pull_image(padded: np.ndarray, matrix: np.ndarray, shape: tuple[int, ...],
                pull: np.ndarray) -> np.ndarray:
    """Image (zero-padded) sampled at ``matrix @ (x + pull(x))`` for the voxels of ``shape``."""
    return vf.sample_padded(padded, vf.affine_points(matrix, shape, pull))


def _resample_field(field: np.ndarray, old_g2w: np.ndarray, new_g2w: np.ndarray,
                    new_shape: tuple[int, ...]) -> np.ndarray:
    """Carry a voxel-unit field from one grid to another over the same world region."""
    dim = field.shape[0]
    to_old = np.linalg.inv(old_g2w) @ new_g2w
    half = np.diag([0.5] * dim + [1.0])
    if np.allclose(to_old, half, atol=1e-9):
        sampled = vf.upsample_field_2x(field, new_shape)  # the usual pyramid step, exact
    else:
        sampled = vf.sample_field(field, vf.affine_points(to_old, new_shape))
    conv = (np.linalg.inv(_linear(new_g2w)) @ _linear(old_g2w)).astype(np.float32)
    out = np.empty_like(sampled)
    for r in range(dim):
        acc = conv[r, 0] * sampled[0]
        for c in range(1, dim):
            acc += conv[r, c] * sampled[c]
        out[r] = acc
    return out
