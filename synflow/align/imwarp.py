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
from synflow.align.metrics import zero_border
from synflow.align.scalespace import ScaleSpace

logger = logging.getLogger(__name__)

__all__ = [
    "DiffeomorphicMap",
    "RegistrationStages",
    "SymmetricDiffeomorphicRegistration",
]


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
def _check_matrix(matrix, dim: int, name: str) -> np.ndarray | None:
    """Validate a homogeneous (dim+1, dim+1) matrix; None and 'identity' mean identity."""
    if matrix is None or (isinstance(matrix, str) and matrix == "identity"):
        return None
    try:
        m = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a ({dim + 1}, {dim + 1}) matrix, got {matrix!r}") from exc
    if m.shape != (dim + 1, dim + 1):
        raise ValueError(f"{name} must have shape ({dim + 1}, {dim + 1}), got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} has non-finite entries (NaN or inf)")
    if not np.allclose(m[dim, :dim], 0) or not np.isclose(m[dim, dim], 1):
        raise ValueError(f"{name}: the last row of a homogeneous matrix must be [0, ..., 0, 1]")
    det = np.linalg.det(m[:dim, :dim])
    if not np.isfinite(det) or abs(det) < 1e-12 or np.linalg.cond(m[:dim, :dim]) > 1e12:
        raise ValueError(f"{name} is singular (its linear part cannot be inverted)")
    return m


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


def _linear(m: np.ndarray) -> np.ndarray:
    d = m.shape[0] - 1
    return m[:d, :d]


def _voxel_to_world_field(field: np.ndarray, grid2world: np.ndarray) -> np.ndarray:
    """Component-first voxel displacement -> DIPY layout (grid + (dim,)) in mm."""
    lin = _linear(grid2world).astype(np.float32)
    dim = field.shape[0]
    out = np.empty(field.shape[1:] + (dim,), dtype=np.float32)
    for r in range(dim):
        acc = lin[r, 0] * field[0]
        for c in range(1, dim):
            acc += lin[r, c] * field[c]
        out[..., r] = acc
    return out


def _world_to_voxel_field(field: np.ndarray, grid2world: np.ndarray) -> np.ndarray:
    """DIPY layout field in mm -> component-first voxel units of the grid."""
    lin_inv = np.linalg.inv(_linear(grid2world)).astype(np.float32)
    dim = field.shape[-1]
    out = np.empty((dim,) + field.shape[:-1], dtype=np.float32)
    for r in range(dim):
        acc = lin_inv[r, 0] * field[..., 0]
        for c in range(1, dim):
            acc += lin_inv[r, c] * field[..., c]
        out[r] = acc
    return out


# --------------------------------------------------------------------------- the map
class DiffeomorphicMap:
    """A diffeomorphic transformation between two grids, DIPY's ``DiffeomorphicMap``.

    Both displacement fields (``forward``, ``backward``; ``disp_shape + (dim,)``, float32,
    mm) are sampled on the displacement grid ``(disp_shape, disp_grid2world)``.
    ``prealign`` (domain-world -> codomain-world... in DIPY's sense) is applied to input
    points before the displacement.  See :meth:`transform` for the exact formulas.

    Parameters mirror DIPY: ``dim``, ``disp_shape``, ``disp_grid2world``, ``domain_shape``,
    ``domain_grid2world``, ``codomain_shape``, ``codomain_grid2world``, ``prealign``.
    """

    def __init__(self, dim: int, disp_shape, disp_grid2world=None, domain_shape=None,
                 domain_grid2world=None, codomain_shape=None, codomain_grid2world=None,
                 prealign=None):
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim!r}")
        self.dim = dim
        self.disp_shape = None if disp_shape is None else np.asarray(disp_shape, dtype=np.int32)
        self.disp_grid2world = _check_matrix(disp_grid2world, dim, "disp_grid2world")
        self.disp_world2grid = None if self.disp_grid2world is None else np.linalg.inv(
            self.disp_grid2world)
        self.domain_shape = None if domain_shape is None else np.asarray(domain_shape,
                                                                          dtype=np.int32)
        self.domain_grid2world = _check_matrix(domain_grid2world, dim, "domain_grid2world")
        self.domain_world2grid = None if self.domain_grid2world is None else np.linalg.inv(
            self.domain_grid2world)
        self.codomain_shape = None if codomain_shape is None else np.asarray(codomain_shape,
                                                                              dtype=np.int32)
        self.codomain_grid2world = _check_matrix(codomain_grid2world, dim, "codomain_grid2world")
        self.codomain_world2grid = None if self.codomain_grid2world is None else np.linalg.inv(
            self.codomain_grid2world)
        self.prealign = _check_matrix(prealign, dim, "prealign")
        self.prealign_inv = None if self.prealign is None else np.linalg.inv(self.prealign)
        self.is_inverse = False
        self.forward: np.ndarray | None = None
        self.backward: np.ndarray | None = None

    def __repr__(self) -> str:
        shape = None if self.disp_shape is None else tuple(int(s) for s in self.disp_shape)
        return (f"DiffeomorphicMap(dim={self.dim}, disp_shape={shape}, "
                f"is_inverse={self.is_inverse})")

    # -- fields
    def get_forward_field(self) -> np.ndarray:
        """The field :meth:`transform` uses (``backward`` when ``is_inverse``), mm."""
        return self.backward if self.is_inverse else self.forward

    def get_backward_field(self) -> np.ndarray:
        """The field :meth:`transform_inverse` uses, mm."""
        return self.forward if self.is_inverse else self.backward

    def allocate(self) -> None:
        """Set both fields to zero (the identity transformation)."""
        shape = tuple(int(s) for s in self.disp_shape) + (self.dim,)
        self.forward = np.zeros(shape, dtype=np.float32)
        self.backward = np.zeros(shape, dtype=np.float32)

    def shallow_copy(self) -> DiffeomorphicMap:
        new = self._same_geometry()
        new.forward, new.backward, new.is_inverse = self.forward, self.backward, self.is_inverse
        return new

    def inverse(self) -> DiffeomorphicMap:
        """The inverse map; arrays are shared, not copied.

        Unlike DIPY 1.12 (which always sets ``is_inverse=True``), the flag is flipped, so
        ``m.inverse().inverse()`` warps like ``m``.
        """
        inv = self.shallow_copy()
        inv.is_inverse = not self.is_inverse
        return inv

    def _same_geometry(self) -> DiffeomorphicMap:
        return DiffeomorphicMap(self.dim, self.disp_shape, self.disp_grid2world,
                                self.domain_shape, self.domain_grid2world,
                                self.codomain_shape, self.codomain_grid2world, self.prealign)

    # -- warping
    @staticmethod
    def _prepare_image(image: np.ndarray, interpolation: str) -> tuple[np.ndarray, int]:
        if interpolation == "linear":
            return np.asarray(image, dtype=np.float32), 1
        if interpolation == "nearest":
            image = np.asarray(image)
            if image.dtype == np.float64:
                image = image.astype(np.float32)
            elif image.dtype == np.int64:
                image = image.astype(np.int32)
            return image, 0
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")

    def _sample_disp(self, field: np.ndarray, matrix: np.ndarray,
                     out_shape: tuple[int, ...]) -> np.ndarray:
        """Displacement (mm, component first) at ``matrix @ i`` (disp-grid voxel coords)."""
        disp_shape = tuple(int(s) for s in self.disp_shape)
        if out_shape == disp_shape and np.allclose(matrix, np.eye(self.dim + 1), atol=1e-9):
            return np.moveaxis(field, -1, 0)
        coords = vf.affine_points(matrix, out_shape)
        comps = np.moveaxis(field, -1, 0)
        return np.stack([vf.sample_image(comps[c], coords) for c in range(self.dim)])

    def _warp(self, image, field, interpolation, image_world2grid, out_shape, out_grid2world,
              pre: np.ndarray, post: np.ndarray):
        """out[i] = image(W @ post @ (field(Dinv @ pre @ S @ i) + pre @ S @ i))."""
        if field is None:
            raise ValueError("this DiffeomorphicMap has no displacement fields yet")
        image, order = self._prepare_image(image, interpolation)
        if image.ndim != self.dim:
            raise ValueError(f"image must be {self.dim}-D, got shape {image.shape}")
        out_shape = tuple(int(s) for s in out_shape)
        W = np.eye(self.dim + 1) if image_world2grid is None else _check_matrix(
            image_world2grid, self.dim, "image_world2grid")
        S = np.eye(self.dim + 1) if out_grid2world is None else _check_matrix(
            out_grid2world, self.dim, "out_grid2world")
        Dinv = np.eye(self.dim + 1) if self.disp_world2grid is None else self.disp_world2grid
        disp = self._sample_disp(field, Dinv @ pre @ S, out_shape)
        # image coordinates: W post (pre S i) + W post_lin disp
        to_img = W @ post
        coords = vf.affine_points(to_img @ pre @ S, out_shape)
        lin = _linear(to_img)
        for r in range(self.dim):
            for c in range(self.dim):
                if lin[r, c] != 0.0:
                    coords[r] += np.float32(lin[r, c]) * disp[c]
        return vf.sample_image(image, coords, order=order)

    def _warp_forward(self, image, interpolation="linear", image_world2grid=None,
                      out_shape=None, out_grid2world=None):
        """warped[i] = image[W @ (forward[Dinv @ P @ S @ i] + P @ S @ i)] (DIPY's formula)."""
        if image_world2grid is None:
            image_world2grid = self.codomain_world2grid
        if out_shape is None:
            if self.domain_shape is None:
                raise ValueError("Unable to infer sampling info. Provide a valid out_shape.")
            out_shape = self.domain_shape
        if out_grid2world is None:
            out_grid2world = self.domain_grid2world
        P = np.eye(self.dim + 1) if self.prealign is None else self.prealign
        return self._warp(image, self.forward, interpolation, image_world2grid, out_shape,
                          out_grid2world, pre=P, post=np.eye(self.dim + 1))

    def _warp_backward(self, image, interpolation="linear", image_world2grid=None,
                       out_shape=None, out_grid2world=None):
        """warped[i] = image[W @ Pinv @ (backward[Dinv @ S @ i] + S @ i)] (DIPY's formula)."""
        if image_world2grid is None:
            image_world2grid = self.domain_world2grid
        if out_shape is None:
            if self.codomain_shape is None:
                raise ValueError("Unknown sampling info. Provide a valid out_shape.")
            out_shape = self.codomain_shape
        if out_grid2world is None:
            out_grid2world = self.codomain_grid2world
        Pinv = np.eye(self.dim + 1) if self.prealign_inv is None else self.prealign_inv
        return self._warp(image, self.backward, interpolation, image_world2grid, out_shape,
                          out_grid2world, pre=np.eye(self.dim + 1), post=Pinv)

    def transform(self, image, interpolation: str = "linear", image_world2grid=None,
                  out_shape=None, out_grid2world=None) -> np.ndarray:
        """Warp ``image`` in the forward direction.

        For a map returned by :meth:`SymmetricDiffeomorphicRegistration.optimize`, this
        resamples a *moving*-grid image onto the *static* grid.  ``interpolation`` is
        'linear' (trilinear, result float32) or 'nearest' (keeps the dtype; float64 ->
        float32, int64 -> int32).  Points outside the input grid give 0.
        """
        if out_shape is not None:
            out_shape = np.asarray(out_shape, dtype=np.int32)
        fn = self._warp_backward if self.is_inverse else self._warp_forward
        return np.asarray(fn(image, interpolation, image_world2grid, out_shape, out_grid2world))

    def transform_inverse(self, image, interpolation: str = "linear", image_world2grid=None,
                          out_shape=None, out_grid2world=None) -> np.ndarray:
        """Warp ``image`` in the backward direction (static grid -> moving grid for SyN maps)."""
        if out_shape is not None:
            out_shape = np.asarray(out_shape, dtype=np.int32)
        fn = self._warp_forward if self.is_inverse else self._warp_backward
        return np.asarray(fn(image, interpolation, image_world2grid, out_shape, out_grid2world))

    # -- points
    def _warp_points(self, points, field, pre, post, coord2world, world2coord):
        pts = np.asarray(points, dtype=np.float64)
        flat = pts.reshape(-1, self.dim)
        c2w = np.eye(self.dim + 1) if coord2world is None else np.asarray(coord2world)
        w2c = np.eye(self.dim + 1) if world2coord is None else np.asarray(world2coord)
        homog = np.c_[flat, np.ones(len(flat))]
        x = (pre @ c2w @ homog.T)[: self.dim]  # world, after ``pre``
        Dinv = np.eye(self.dim + 1) if self.disp_world2grid is None else self.disp_world2grid
        grid = (Dinv[: self.dim, : self.dim] @ x + Dinv[: self.dim, self.dim:]).astype(np.float32)
        comps = np.moveaxis(field, -1, 0)
        disp = np.stack([vf.sample_image(comps[c], grid[:, :, None])[:, 0]
                         for c in range(self.dim)])
        y = np.vstack([x + disp, np.ones(x.shape[1])])
        out = (w2c @ post @ y)[: self.dim].T
        return out.reshape(pts.shape)

    def transform_points(self, points, coord2world=None, world2coord=None) -> np.ndarray:
        """Map points with the same rule as :meth:`transform` (the pull locations)."""
        I = np.eye(self.dim + 1)
        if self.is_inverse:
            Pinv = I if self.prealign_inv is None else self.prealign_inv
            return self._warp_points(points, self.backward, I, Pinv, coord2world, world2coord)
        P = I if self.prealign is None else self.prealign
        return self._warp_points(points, self.forward, P, I, coord2world, world2coord)

    def transform_points_inverse(self, points, coord2world=None, world2coord=None) -> np.ndarray:
        """Map points with the rule of :meth:`transform_inverse`.

        To carry moving-space points (e.g. streamlines) into static space, use this one.
        """
        return self.inverse().transform_points(points, coord2world, world2coord)

    # -- field algebra
    def compute_inversion_error(self):
        """``residual = backward + forward o (id + backward)`` and DIPY's 3 statistics (mm).

        Returns ``(residual, stats)`` with ``stats = [max |r|, rms |r|, std of |r|^2]``.
        """
        g2w = np.eye(self.dim + 1) if self.disp_grid2world is None else self.disp_grid2world
        b = _world_to_voxel_field(self.backward, g2w)
        f = _world_to_voxel_field(self.forward, g2w)
        res = _voxel_to_world_field(vf.compose(b, f), g2w)
        n2 = np.sum(res.astype(np.float64) ** 2, axis=-1)
        stats = np.array([np.sqrt(n2.max()), np.sqrt(n2.mean()),
                          np.sqrt(max((n2 ** 2).mean() - n2.mean() ** 2, 0.0))])
        return res, stats

    def expand_fields(self, expand_factors, new_shape) -> None:
        """Resample both fields onto a grid ``expand_factors`` times finer/coarser (in place)."""
        factors = np.asarray(expand_factors, dtype=np.float64)
        new_shape = tuple(int(s) for s in new_shape)
        scale = np.diag(np.append(factors, 1.0))
        coords = vf.affine_points(scale, new_shape)
        for name in ("forward", "backward"):
            comps = np.moveaxis(getattr(self, name), -1, 0)
            new = np.stack([vf.sample_image(comps[c], coords) for c in range(self.dim)], axis=-1)
            setattr(self, name, new)
        self.disp_shape = np.asarray(new_shape, dtype=np.int32)
        self.disp_grid2world = self.disp_grid2world @ scale
        self.disp_world2grid = np.linalg.inv(self.disp_grid2world)


# --------------------------------------------------------------------------- optimiser
class SymmetricDiffeomorphicRegistration:
    """Symmetric Normalization (Avants et al. 2008), DIPY's constructor and ``optimize``.

    Parameters
    ----------
    metric : a :class:`synflow.align.metrics.CCMetric` or ``SSDMetric``.
    level_iters : iterations per pyramid level, **coarsest first** (default
        ``[100, 100, 25]``).  ``len(level_iters)`` is the number of levels.
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
        benchmark phantoms; 0 disables it.
    """

    def __init__(self, metric=None, level_iters: Sequence[int] | None = None,
                 step_length: float = 0.25, ss_sigma_factor: float = 0.2,
                 opt_tol: float = 1e-5, inv_iter: int = 20, inv_tol: float = 1e-3,
                 callback: Callable | None = None, *, field_variance: float = 0.25):
        if metric is None:
            raise ValueError("metric cannot be None: pass e.g. CCMetric(3)")
        if level_iters is None:
            level_iters = [100, 100, 25]
        level_iters = list(level_iters)
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
        self.level_iters = [int(n) for n in level_iters]
        self.levels = len(self.level_iters)
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

    def set_level_iters(self, level_iters: Sequence[int]) -> None:
        """Iterations per level, coarsest first."""
        self.__init__(self.metric, level_iters, self.step_length, self.ss_sigma_factor,
                      self.opt_tol, self.inv_iter, self.inv_tol, self.callback,
                      field_variance=self.field_variance)

    def get_map(self) -> DiffeomorphicMap:
        if self.static_to_moving is None:
            raise ValueError("get_map() called before optimize()")
        return self.static_to_moving

    def _notify(self, stage: RegistrationStages) -> None:
        if self.callback is not None:
            self.callback(self, stage)

    def _update(self, pull, factors, image, ginv, forward: bool) -> np.ndarray:
        step = self.metric.step(factors, image, ginv, forward)
        return _apply_step(pull, step, self.step_length, self.field_variance)

    def _energy_derivative(self) -> float:
        """DIPY's convergence rule: derivative at the centre of a quadratic fit."""
        y = np.asarray(self.energy_list[-self.energy_window:], dtype=np.float64)
        total = y.sum()
        if total != 0:
            y = y / -abs(total)
        x = np.arange(self.energy_window, dtype=np.float64)
        a, b, _ = np.polyfit(x, y, 2)
        return float(2.0 * a * (self.energy_window // 2) + b)

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
        S2W = _check_matrix(static_grid2world, dim, "static_grid2world")
        M2W = _check_matrix(moving_grid2world, dim, "moving_grid2world")
        P = _check_matrix(prealign, dim, "prealign")
        eye = np.eye(dim + 1)
        S2W = eye if S2W is None else S2W
        M2W = eye if M2W is None else M2W
        P = eye if P is None else P

        self._notify(RegistrationStages.INIT_START)
        ss_static = ScaleSpace(static, self.levels, S2W, sigma_factor=self.ss_sigma_factor)
        coarsest = ss_static.get_domain_shape(self.levels - 1)
        self.metric.check_shape(coarsest, what=f"coarsest level ({self.levels} levels) static")
        ss_moving = ScaleSpace(moving, self.levels, M2W, sigma_factor=self.ss_sigma_factor)
        self._notify(RegistrationStages.INIT_END)

        W_s = np.linalg.inv(S2W)
        W_m = np.linalg.inv(M2W)
        s_b = m_b = None  # pull fields of the two half-maps, voxel units of the level grid
        prev_A = None
        self.full_energy_profile = []
        self._notify(RegistrationStages.OPT_START)
        for level in range(self.levels - 1, -1, -1):
            self.current_level = level
            shape = tuple(int(s) for s in ss_static.get_domain_shape(level))
            A = ss_static.get_affine(level)
            if s_b is None:
                s_b = np.zeros((dim,) + shape, dtype=np.float32)
                m_b = np.zeros((dim,) + shape, dtype=np.float32)
            else:
                s_b = _resample_field(s_b, prev_A, A, shape)
                m_b = _resample_field(m_b, prev_A, A, shape)
            prev_A = A
            lin = _linear(A)
            ginv = np.linalg.inv(lin.T @ lin)
            # Level images are fixed for the level: zero-pad them once so every sampling
            # can use the faster edge-clamped mode (see vector_fields.sample_padded).
            static_img = vf.pad_image(ss_static.get_image(level))
            moving_img = vf.pad_image(ss_moving.get_image(level))
            shift = np.eye(dim + 1)
            shift[:dim, dim] = vf.PAD
            to_static = shift @ W_s @ A
            to_moving = shift @ W_m @ P @ A
            self._notify(RegistrationStages.SCALE_START)
            self.energy_list = []
            self.niter = 0
            derivative = np.inf
            n_iter = self.level_iters[self.levels - 1 - level]
            while self.niter < n_iter and derivative > self.opt_tol:
                self._notify(RegistrationStages.ITER_START)
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
                del warped_static, warped_moving, factors
                if len(self.energy_list) >= self.energy_window:
                    derivative = self._energy_derivative()
                self.energy_list.append(2.0 * energy)
                self.niter += 1
                self._notify(RegistrationStages.ITER_END)
            self.full_energy_profile.extend(self.energy_list)
            self._notify(RegistrationStages.SCALE_END)

        # Forward fields, once: (id + f) = (id + b)^-1 on the full-resolution static grid.
        s_f = vf.invert(s_b, self.inv_iter, self.inv_tol)
        m_f = vf.invert(m_b, self.inv_iter, self.inv_tol)

        # static -> moving pull: x -> (id + m_b) o (id + s_f), and its inverse.
        backward = vf.compose(s_f, m_b)
        forward = vf.compose(m_f, s_b)

        mapping = DiffeomorphicMap(dim, static.shape, S2W, moving.shape, M2W, static.shape,
                                   S2W, np.linalg.inv(P))
        mapping.forward = _voxel_to_world_field(forward, S2W)
        mapping.backward = _voxel_to_world_field(backward, S2W)
        mapping.is_inverse = True
        self.static_to_moving = mapping
        self._notify(RegistrationStages.OPT_END)
        return mapping


def _pull_image(padded: np.ndarray, matrix: np.ndarray, shape: tuple[int, ...],
                pull: np.ndarray) -> np.ndarray:
    """Image (zero-padded) sampled at ``matrix @ (x + pull(x))`` for the voxels of ``shape``."""
    return vf.sample_padded(padded, vf.affine_points(matrix, shape, pull))


def _apply_step(pull: np.ndarray, step: np.ndarray, t: float, variance: float) -> np.ndarray:
    """``pull <- smooth(pull o (id - t * step / max|step|))`` (voxels), DIPY's normalised step."""
    # DIPY zeroes the outermost layer of the step, then scales its largest norm to 1 voxel.
    zero_border(step, 1)
    nrm = vf.field_norm_max(step)
    if nrm <= 0:
        return pull
    step *= np.float32(-t / nrm)
    return vf.compose_small(step, pull, diffusion=variance)


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
