"""Similarity metrics for SyN with DIPY 1.12's API: ``CCMetric``, ``SSDMetric``, ``EMMetric``.

Each metric works two ways, on one implementation underneath:

* **DIPY's metric protocol** (``set_static_image``, ``set_moving_image``,
  ``use_*_image_dynamics``, ``initialize_iteration``, ``compute_forward``,
  ``compute_backward``, ``get_energy``, ``free_iteration``, ``set_levels_below/above``),
  so DIPY's own ``SymmetricDiffeomorphicRegistration`` can drive a synflow metric.  As in
  DIPY, steps are component last (``shape + (dim,)``) in world units (mm).
* **synflow's optimiser contract**: ``compute_factors(static, moving) -> (factors,
  energy)`` once per iteration and ``step(factors, image, ginv, forward)`` per half-map,
  returning the regularised step **component first, in voxels of the level grid**; with
  ``A`` the grid's linear part, ``ginv = (A^T A)^-1``, a world gradient is ``A^-T grad_v``
  and a voxel step ``u_v = A^-1 u_w``.

Formulas follow DIPY's ``metrics.py``, ``crosscorr.pyx``, ``sumsqdiff.pyx`` and
``expectmax.pyx``, computed with whole-array NumPy/SciPy operations; the Gauss-Newton
solver is in :mod:`synflow.align._multigrid`, the EM statistics in
:mod:`synflow.align._quantize`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from synflow._parallel import run_slabs, run_tasks
from synflow.align import _metric_ops as ops
from synflow.align._quantize import em_demons_coefficient, em_fields

#: Local variances (intensities scaled to [0, 1]) below this are treated as zero.
_VAR_EPS = 1e-10
_STEP_TYPES = ("gauss_newton", "demons")


def zero_border(field: np.ndarray, width: int = 1) -> None:
    """Zero the outer ``width`` voxels of a component-first field, in place."""
    for axis in range(1, field.ndim):
        sl = [slice(None)] * field.ndim
        sl[axis] = slice(0, width)
        field[tuple(sl)] = 0
        sl[axis] = slice(field.shape[axis] - width, None)
        field[tuple(sl)] = 0


class SimilarityMetric:
    """DIPY's metric protocol: the images, their geometry and the pyramid position.

    ``dim``: 2 or 3.  ``mask0``: whether the optimiser should mask the pyramid images
    with ``image > 0`` (False for every DIPY 1.12 metric).
    """

    def __init__(self, dim: int):
        if dim not in (2, 3):
            raise ValueError(f"{type(self).__name__}: dim must be 2 or 3, got {dim!r}")
        self.dim = dim
        self.levels_above = None
        self.levels_below = None
        self._depth_set = False
        self.static_image = self.static_affine = None
        self.static_spacing = self.static_direction = None
        self.moving_image = self.moving_affine = None
        self.moving_spacing = self.moving_direction = None
        self.mask0 = False
        self.energy: float | None = None

    def set_levels_below(self, levels: int) -> None:
        """Number of pyramid levels below the current one (the Gauss-Newton V-cycle depth)."""
        self.levels_below = levels
        self._depth_set = True

    def set_levels_above(self, levels: int) -> None:
        """Number of pyramid levels above the current one."""
        self.levels_above = levels

    def _image(self, image, name: str) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != self.dim or not np.issubdtype(image.dtype, np.number):
            raise ValueError(f"{name} must be a numeric {self.dim}-D array, got shape "
                             f"{image.shape} and dtype {image.dtype}")
        return image

    def set_static_image(self, static_image, static_affine, static_spacing,
                         static_direction) -> None:
        """The static image (already on the reference grid), voxel->world matrix,
        spacing (mm per voxel) and direction cosines."""
        self.static_image = self._image(static_image, "static_image")
        self.static_affine = static_affine
        self.static_spacing = static_spacing
        self.static_direction = static_direction

    def set_moving_image(self, moving_image, moving_affine, moving_spacing,
                         moving_direction) -> None:
        """The moving image (already on the reference grid) and its geometry."""
        self.moving_image = self._image(moving_image, "moving_image")
        self.moving_affine = moving_affine
        self.moving_spacing = moving_spacing
        self.moving_direction = moving_direction

    def use_static_image_dynamics(self, original_static_image, transformation) -> None:
        """Called after ``set_static_image``; nothing to do for this metric."""

    def use_moving_image_dynamics(self, original_moving_image, transformation) -> None:
        """Called after ``set_moving_image``; nothing to do for this metric."""

    def get_energy(self) -> float:
        """The data-term energy of the current image pair (lower is better)."""
        return self.energy

    def _depth(self, shape) -> int:
        if self._depth_set and self.levels_below is not None:
            return int(self.levels_below)
        return ops.default_depth(shape)

    def _require_images(self) -> None:
        for image, what in ((self.static_image, "static image"),
                            (self.moving_image, "moving image")):
            if image is None:
                raise ValueError(f"{type(self).__name__}: set the {what} (set_{what[:-6]}_"
                                 "image) before initialize_iteration()")
        if self.static_image.shape != self.moving_image.shape:
            raise ValueError(f"{type(self).__name__}: the static image {self.static_image.shape}"
                             f" and moving image {self.moving_image.shape} must be sampled "
                             "on the same grid")

    def _gradients(self) -> None:
        self.gradient_static = ops.world_gradient(self.static_image, self.static_spacing,
                                                  self.static_direction, self.dim)
        self.gradient_moving = ops.world_gradient(self.moving_image, self.moving_spacing,
                                                  self.moving_direction, self.dim)

    def _sigma_reg_2(self) -> float:
        spacing = np.ones(self.dim) if self.static_spacing is None else \
            np.asarray(self.static_spacing, dtype=np.float64)
        return float(np.sum(spacing ** 2) / self.dim)

    def compute_steps(self, static: np.ndarray, moving: np.ndarray, ginv: np.ndarray,
                      backward: bool = True):
        """``(forward_step, backward_step or None, energy)`` for images on one grid
        (synflow's contract: voxel steps, component first)."""
        factors, energy = self.compute_factors(static, moving)
        fw = self.step(factors, static, ginv, forward=True)
        bw = self.step(factors, moving, ginv, forward=False) if backward else None
        return fw, bw, energy


class CCMetric(SimilarityMetric):
    """Local normalised cross-correlation over ``(2*radius+1)**dim`` windows (ANTs' CC).

    ``sigma_diff``: standard deviation (voxels of the current level) of the Gaussian
    that regularises each step; ``radius``: half-width of the window, in voxels.
    """

    def __init__(self, dim: int, *, sigma_diff: float = 2.0, radius: int = 4):
        super().__init__(dim)
        ops.check_positive("sigma_diff", "CCMetric", sigma_diff)
        ops.check_positive("radius", "CCMetric", radius, integer=True, minimum=1)
        self.sigma_diff = float(sigma_diff)
        self.radius = int(radius)

    def __repr__(self) -> str:
        return f"CCMetric(dim={self.dim}, sigma_diff={self.sigma_diff}, radius={self.radius})"

    def check_shape(self, shape, what: str = "image") -> None:
        """Raise ``ValueError`` if a grid is too small for the correlation window."""
        side = 2 * self.radius + 1
        if min(shape) < side:
            raise ValueError(
                f"CCMetric: the {what} grid {tuple(int(s) for s in shape)} is smaller than the "
                f"correlation window ({side} voxels for radius={self.radius}); use fewer "
                "pyramid levels (shorter level_iters), a smaller radius, or a larger image")

    def compute_factors(self, static: np.ndarray, moving: np.ndarray):
        """Window statistics of two images on the same grid, and the energy.

        Returns ``(factors, energy)``: ``factors`` holds the per-voxel coefficients of the
        forward and backward steps (zero outside the interior ``r <= idx < n - r`` and
        where a window is flat), ``energy = -sum(rho)`` as DIPY's ``get_energy``.
        """
        self.check_shape(static.shape)
        r = self.radius
        side = 2 * r + 1
        n = float(side ** static.ndim)
        I = np.asarray(static, dtype=np.float32)
        J = np.asarray(moving, dtype=np.float32)

        def box(a):
            # float64 output: the local variances below are differences of close numbers
            return lambda: ndi.uniform_filter(a, side, output=np.float64, mode="constant")

        mI, mJ, mII, mJJ, mIJ = run_tasks([box(I), box(J), box(I * I), box(J * J),
                                           box(I * J)])
        shape = static.shape
        fw_coef = np.zeros(shape, dtype=np.float32)
        bw_coef = np.zeros(shape, dtype=np.float32)
        interior = tuple(slice(r, s - r) for s in shape)
        lo, hi = r, shape[0] - r

        def work(a: int, b: int) -> float:
            a, b = max(a, lo), min(b, hi)
            if b <= a:
                return 0.0
            sl = (slice(a, b),) + interior[1:]
            mi, mj = mI[sl], mJ[sl]
            cII = mII[sl] - mi * mi
            cJJ = mJJ[sl] - mj * mj
            cIJ = mIJ[sl] - mi * mj
            ai = I[sl] - mi
            bj = J[sl] - mj
            valid = (cII > _VAR_EPS) & (cJJ > _VAR_EPS)
            safe_ii = np.where(valid, cII, 1.0)
            safe_jj = np.where(valid, cJJ, 1.0)
            # DIPY: u_f = -2 s_IJ / (s_II s_JJ) (b - s_IJ / s_II a) grad I, with s = n * c
            k = np.where(valid, cIJ / (safe_ii * safe_jj), 0.0) * (-2.0 / n)
            fw_coef[sl] = k * (bj - (cIJ / safe_ii) * ai)
            bw_coef[sl] = k * (ai - (cIJ / safe_jj) * bj)
            prod = cII * cJJ
            ok = prod * (n * n) > 1e-5
            rho = np.where(ok, cIJ * cIJ / np.where(ok, prod, 1.0), 0.0)
            return float(rho[rho < 1].sum())

        energy = -float(sum(run_slabs(work, shape[0], min_slab=4)))
        self.energy = energy
        return (fw_coef, bw_coef), energy

    def step(self, factors, image: np.ndarray, ginv: np.ndarray, forward: bool) -> np.ndarray:
        """The smoothed forward (``image`` = warped static) or backward step, voxels."""
        coef = factors[0] if forward else factors[1]
        u = ops.apply_matrix(ginv, ops.voxel_gradient(np.asarray(image, dtype=np.float32)))
        u *= coef
        return ops.smooth_components(u, self.sigma_diff)

    # -- DIPY's protocol --------------------------------------------------------------
    def initialize_iteration(self) -> None:
        """Window statistics and world-space gradients of the current image pair."""
        self._require_images()
        for image, what in ((self.static_image, "static image"),
                            (self.moving_image, "moving image")):
            self.check_shape(image.shape, what=what)
        self.factors, self.energy = self.compute_factors(self.static_image, self.moving_image)
        self._gradients()

    def free_iteration(self) -> None:
        """Release what ``initialize_iteration`` computed."""
        del self.factors, self.gradient_moving, self.gradient_static

    def _world_step(self, coef: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        u = ops.to_first(gradient)
        u *= coef
        return ops.to_last(ops.smooth_components(u, self.sigma_diff))

    def compute_forward(self) -> np.ndarray:
        """Step moving the moving image towards the static (world units, component last)."""
        return self._world_step(self.factors[0], self.gradient_static)

    def compute_backward(self) -> np.ndarray:
        """Step moving the static image towards the moving (world units, component last)."""
        return self._world_step(self.factors[1], self.gradient_moving)


class _StepTypeMetric(SimilarityMetric):
    """Shared parts of SSD and EM: the step type and its Gauss-Newton/demons dispatch."""

    def __init__(self, dim: int, smooth: float, inner_iter: int, step_type: str):
        super().__init__(dim)
        name = type(self).__name__
        if step_type not in _STEP_TYPES:
            raise ValueError(f"{name}: step_type must be one of {_STEP_TYPES}, "
                             f"got {step_type!r}")
        ops.check_positive("smooth", name, smooth)
        ops.check_positive("inner_iter", name, inner_iter, integer=True, minimum=1)
        self.smooth = float(smooth)
        self.inner_iter = int(inner_iter)
        self.step_type = step_type

    def check_shape(self, shape, what: str = "image") -> None:
        if min(shape) < 2:
            raise ValueError(f"{type(self).__name__}: the {what} grid {tuple(shape)} is "
                             "too small (at least 2 voxels per axis)")

    def compute_forward(self) -> np.ndarray:
        """Step moving the moving image towards the static (world units, component last)."""
        return self.compute_step(forward_step=True)

    def compute_backward(self) -> np.ndarray:
        """Step moving the static image towards the moving (world units, component last)."""
        return self.compute_step(forward_step=False)

    def compute_step(self, *, forward_step: bool = True) -> np.ndarray:
        if self.step_type == "gauss_newton":
            return self.compute_gauss_newton_step(forward_step=forward_step)
        return self.compute_demons_step(forward_step=forward_step)

    def _gauss_newton(self, delta, sigma_sq, gradient) -> np.ndarray:
        step, self.energy = ops.gauss_newton_world(
            delta, sigma_sq, gradient, self.smooth, self._depth(delta.shape), self.inner_iter)
        return step


class SSDMetric(_StepTypeMetric):
    """Sum of squared differences, DIPY's demons or Gauss-Newton step.

    ``smooth``: for ``'demons'`` the Gaussian sigma (voxels) regularising each step, for
    ``'gauss_newton'`` the weight ``lambda`` of the smoothness term; ``inner_iter``:
    Gauss-Seidel sweeps per grid of the V-cycle (Gauss-Newton only).
    """

    def __init__(self, dim: int, *, smooth: float = 4, inner_iter: int = 10,
                 step_type: str = "demons"):
        super().__init__(dim, smooth, inner_iter, step_type)
        self.levels_below = 0

    def __repr__(self) -> str:
        return (f"SSDMetric(dim={self.dim}, smooth={self.smooth}, "
                f"inner_iter={self.inner_iter}, step_type={self.step_type!r})")

    def compute_factors(self, static: np.ndarray, moving: np.ndarray):
        """The difference image ``static - moving`` and the energy ``sum(delta**2)``."""
        delta = np.asarray(static, dtype=np.float32) - np.asarray(moving, dtype=np.float32)
        energy = float(np.dot(delta.ravel(), delta.ravel()))
        self.energy = energy
        return delta, energy

    def step(self, delta, image: np.ndarray, ginv: np.ndarray, forward: bool) -> np.ndarray:
        """Demons or Gauss-Newton step (voxels, component first) driven by ``image``."""
        d = delta if forward else -delta
        grad_v = ops.voxel_gradient(np.asarray(image, dtype=np.float32))
        if self.step_type == "gauss_newton":
            return ops.gauss_newton_voxels(d, None, grad_v, ginv, self.smooth,
                                           self._depth(d.shape), self.inner_iter)
        g = ops.apply_matrix(ginv, grad_v)
        nrm2 = ops.dot(grad_v, g)  # |grad_world|^2
        den = d * d / np.float32(ops.sigma_sq_x_voxels(ginv)) + nrm2
        coef = np.where(den < 1e-9, 0.0, d / np.where(den < 1e-9, 1.0, den)).astype(np.float32)
        g *= coef
        return ops.smooth_components(g, self.smooth)

    # -- DIPY's protocol --------------------------------------------------------------
    def initialize_iteration(self) -> None:
        """World-space gradients of the current image pair."""
        self._require_images()
        self._gradients()

    def free_iteration(self) -> None:
        """Nothing to free for SSD."""

    def _delta(self, forward_step: bool):
        s = np.asarray(self.static_image, dtype=np.float32)
        m = np.asarray(self.moving_image, dtype=np.float32)
        return (s - m, self.gradient_static) if forward_step else (m - s, self.gradient_moving)

    def compute_gauss_newton_step(self, *, forward_step: bool = True) -> np.ndarray:
        """DIPY's SSD Gauss-Newton step: the V-cycle solve (world units, component last)."""
        delta, gradient = self._delta(forward_step)
        return self._gauss_newton(delta, None, gradient)

    def compute_demons_step(self, *, forward_step: bool = True) -> np.ndarray:
        """DIPY's SSD demons step ``delta grad / (delta^2 / sigma_x^2 + |grad|^2)``, smoothed."""
        delta, gradient = self._delta(forward_step)
        g = ops.to_first(gradient)
        den = delta * delta / np.float32(self._sigma_reg_2()) + ops.dot(g, g)
        ok = den >= 1e-9
        g *= np.where(ok, delta / np.where(ok, den, 1), 0).astype(np.float32)
        self.energy = float(np.dot(delta.ravel(), delta.ravel()))
        return ops.to_last(ops.smooth_components(g, self.smooth))


class EMMetric(_StepTypeMetric):
    """Expectation-maximisation metric for multi-modal pairs (Arce-Santana et al. 2014).

    Each image is quantised into ``q_levels`` classes (class 0: values <= 0); the other
    image's mean and variance per class (inside both masks) give a transfer function
    and a per-voxel variance, used by the demons step (Vercauteren's eq. 4 with
    per-voxel ``sigma_i``) or by the Gauss-Newton V-cycle with weight ``smooth``.
    ``double_gradient`` adds the gradient of the transferred image to each gradient.

    Masks: DIPY warps the *original* masks (``image > 0``) by nearest neighbour
    (``use_*_image_dynamics``).  Under synflow's own optimiser ``compute_factors`` only
    sees the warped images, so the masks are ``warped image > 0`` (differs from DIPY in
    the last voxel of the foreground boundary, where linear interpolation blends in 0).
    """

    def __init__(self, dim: int, *, smooth: float = 1.0, inner_iter: int = 5,
                 q_levels: int = 256, double_gradient: bool = True,
                 step_type: str = "gauss_newton"):
        super().__init__(dim, smooth, inner_iter, step_type)
        ops.check_positive("q_levels", "EMMetric", q_levels, integer=True, minimum=2)
        self.q_levels = int(q_levels)
        self.use_double_gradient = bool(double_gradient)
        self.static_image_mask = self.moving_image_mask = None
        self.staticq_means_field = self.movingq_means_field = None
        self.movingq_levels = self.staticq_levels = None

    def __repr__(self) -> str:
        return (f"EMMetric(dim={self.dim}, smooth={self.smooth}, inner_iter={self.inner_iter}, "
                f"q_levels={self.q_levels}, double_gradient={self.use_double_gradient}, "
                f"step_type={self.step_type!r})")

    # -- synflow's contract -----------------------------------------------------------
    def compute_factors(self, static: np.ndarray, moving: np.ndarray):
        """EM fields of two images on one grid; energy = mean of the two half energies."""
        static = np.asarray(static, dtype=np.float32)
        moving = np.asarray(moving, dtype=np.float32)
        f = em_fields(static, moving, (static > 0) & (moving > 0), self.q_levels)
        if self.step_type == "demons":
            fw, bw = static - f.movingq_means_field, moving - f.staticq_means_field
        else:
            fw, bw = f.staticq_means_field - moving, f.movingq_means_field - static
        f.static, f.moving = static, moving
        energy = 0.5 * (float(np.dot(fw.ravel(), fw.ravel())) +
                        float(np.dot(bw.ravel(), bw.ravel())))
        self.energy = energy
        return f, energy

    def step(self, f, image: np.ndarray, ginv: np.ndarray, forward: bool) -> np.ndarray:
        """EM demons or Gauss-Newton step (voxels, component first) driven by ``image``."""
        grad_v = ops.voxel_gradient(np.asarray(image, dtype=np.float32))
        transferred = f.movingq_means_field if forward else f.staticq_means_field
        if self.use_double_gradient:
            # DIPY adds the *voxel* gradient of the transferred image to the world
            # gradient; in voxel terms that is S grad_v with S = (A^T A)^(1/2) (= A^T on
            # an axis-aligned grid).
            grad_v += ops.apply_matrix(ops.sqrt_psd(np.linalg.inv(ginv)),
                                       ops.voxel_gradient(transferred))
        if self.step_type == "gauss_newton":
            if forward:
                delta, sigma = f.staticq_means_field - f.moving, f.staticq_sigma_sq_field
            else:
                delta, sigma = f.movingq_means_field - f.static, f.movingq_sigma_sq_field
            return ops.gauss_newton_voxels(delta, sigma, grad_v, ginv, self.smooth,
                                           self._depth(delta.shape), self.inner_iter)
        if forward:
            delta, sigma = f.static - f.movingq_means_field, f.movingq_sigma_sq_field
        else:
            delta, sigma = f.moving - f.staticq_means_field, f.staticq_sigma_sq_field
        g = ops.apply_matrix(ginv, grad_v)
        g *= em_demons_coefficient(delta, sigma, ops.dot(grad_v, g),
                                   ops.sigma_sq_x_voxels(ginv))
        return ops.smooth_components(g, self.smooth)

    # -- DIPY's protocol --------------------------------------------------------------
    def _mask_dynamics(self, original, transformation, image, affine) -> np.ndarray:
        mask = (np.asarray(original) > 0).astype(np.int32)
        if transformation is None:
            return mask
        return transformation.transform(mask, interpolation="nearest", image_world2grid=None,
                                        out_shape=np.array(image.shape, dtype=np.int32),
                                        out_grid2world=affine)

    def use_static_image_dynamics(self, original_static_image, transformation) -> None:
        """Static mask: ``original > 0`` warped by ``transformation`` (nearest neighbour)."""
        self.static_image_mask = self._mask_dynamics(
            original_static_image, transformation, self.static_image, self.static_affine)

    def use_moving_image_dynamics(self, original_moving_image, transformation) -> None:
        """Moving mask: ``original > 0`` warped by ``transformation`` (nearest neighbour)."""
        self.moving_image_mask = self._mask_dynamics(
            original_moving_image, transformation, self.moving_image, self.moving_affine)

    def initialize_iteration(self) -> None:
        """Class statistics, transferred images and (double) world gradients."""
        self._require_images()
        s, m = self.static_image, self.moving_image
        smask = (s > 0) if self.static_image_mask is None else self.static_image_mask
        mmask = (m > 0) if self.moving_image_mask is None else self.moving_image_mask
        self.sampling_mask = (np.asarray(smask) != 0) & (np.asarray(mmask) != 0)
        f = em_fields(s, m, self.sampling_mask, self.q_levels)
        self.__dict__.update(vars(f))
        self._gradients()
        if self.use_double_gradient:
            self.gradient_moving += ops.to_last(ops.voxel_gradient(self.staticq_means_field))
            self.gradient_static += ops.to_last(ops.voxel_gradient(self.movingq_means_field))

    def free_iteration(self) -> None:
        """Release what ``initialize_iteration`` computed."""
        for name in ("sampling_mask", "staticq_levels", "movingq_levels",
                     "staticq_sigma_sq_field", "staticq_means_field", "movingq_sigma_sq_field",
                     "movingq_means_field", "gradient_moving", "gradient_static"):
            self.__dict__.pop(name, None)

    def compute_gauss_newton_step(self, *, forward_step: bool = True) -> np.ndarray:
        """DIPY's EM Gauss-Newton step: the V-cycle solve (world units, component last)."""
        if forward_step:
            delta = self.staticq_means_field - np.asarray(self.moving_image, np.float32)
            return self._gauss_newton(delta, self.staticq_sigma_sq_field, self.gradient_static)
        delta = self.movingq_means_field - np.asarray(self.static_image, np.float32)
        return self._gauss_newton(delta, self.movingq_sigma_sq_field, self.gradient_moving)

    def compute_demons_step(self, *, forward_step: bool = True) -> np.ndarray:
        """DIPY's EM demons step (Vercauteren's eq. 4, per-voxel sigma_i), smoothed."""
        if forward_step:
            delta = np.asarray(self.static_image, np.float32) - self.movingq_means_field
            sigma, gradient = self.movingq_sigma_sq_field, self.gradient_static
        else:
            delta = np.asarray(self.moving_image, np.float32) - self.staticq_means_field
            sigma, gradient = self.staticq_sigma_sq_field, self.gradient_moving
        g = ops.to_first(gradient)
        g *= em_demons_coefficient(delta, sigma, ops.dot(g, g), self._sigma_reg_2())
        self.energy = float(np.dot(delta.ravel(), delta.ravel()))
        return ops.to_last(ops.smooth_components(g, self.smooth))
