"""Similarity metrics for SyN: local cross-correlation (``CCMetric``) and SSD (``SSDMetric``).

Both keep DIPY's constructor signatures and step formulas (see DIPY's ``align/metrics.py``
and ``crosscorr.pyx``), computed with whole-array NumPy/SciPy operations.

The optimiser calls :meth:`compute_steps` with the two images already pulled onto the
current reference grid.  Steps are returned **component first, in voxels of that grid**:
a world-space step ``u_w`` is ``A @ u_v`` with ``A`` the grid's linear part, and a
world-space image gradient is ``A^-T @ grad_v``, so ``u_v = (A^T A)^-1 grad_v * coef``
(``= grad_v / h**2`` on an isotropic axis-aligned grid).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from synflow._parallel import run_slabs, run_tasks

#: Local variances (intensities scaled to [0, 1]) below this are treated as zero.
_VAR_EPS = 1e-10


def _gaussian_smooth_components(field: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth each component of ``field`` in place (``sigma`` in voxels).

    ``scipy.ndimage.gaussian_filter`` per component (reflect mode, truncate 4), the
    components on the thread pool.
    """
    if sigma <= 0:
        return field

    def one(c: int):
        return lambda: ndi.gaussian_filter(field[c], sigma, output=field[c])

    run_tasks([one(c) for c in range(field.shape[0])])
    return field


def _metric_gradient(image: np.ndarray, ginv: np.ndarray) -> np.ndarray:
    """``(A^T A)^-1 @ grad_v(image)``, component first, float32 (central differences)."""
    grads = np.gradient(image)
    dim = image.ndim
    out = np.empty((dim,) + image.shape, dtype=np.float32)
    diagonal = np.allclose(ginv, np.diag(np.diag(ginv)))
    for r in range(dim):
        if diagonal:
            np.multiply(grads[r], np.float32(ginv[r, r]), out=out[r])
        else:
            out[r] = sum(np.float32(ginv[r, c]) * grads[c] for c in range(dim))
    return out


def zero_border(field: np.ndarray, width: int = 1) -> None:
    for axis in range(1, field.ndim):
        sl = [slice(None)] * field.ndim
        sl[axis] = slice(0, width)
        field[tuple(sl)] = 0
        sl[axis] = slice(field.shape[axis] - width, None)
        field[tuple(sl)] = 0


class CCMetric:
    """Local normalised cross-correlation over ``(2*radius+1)**dim`` windows (ANTs' CC).

    Parameters
    ----------
    dim : 2 or 3.
    sigma_diff : standard deviation (voxels of the current level) of the Gaussian that
        regularises each step.
    radius : half-width of the correlation window, in voxels.
    """

    def __init__(self, dim: int, sigma_diff: float = 2.0, radius: int = 4):
        if dim not in (2, 3):
            raise ValueError(f"CCMetric: dim must be 2 or 3, got {dim!r}")
        if not np.isfinite(sigma_diff) or sigma_diff < 0:
            raise ValueError(
                f"CCMetric: sigma_diff must be a finite value >= 0, got {sigma_diff!r}")
        if int(radius) != radius or radius < 1:
            raise ValueError(f"CCMetric: radius must be a positive integer, got {radius!r}")
        self.dim = dim
        self.sigma_diff = float(sigma_diff)
        self.radius = int(radius)
        self.energy: float | None = None

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
        u = _metric_gradient(np.asarray(image, dtype=np.float32), ginv)
        u *= coef
        return _gaussian_smooth_components(u, self.sigma_diff)

    def compute_steps(self, static: np.ndarray, moving: np.ndarray, ginv: np.ndarray,
                      backward: bool = True):
        """Forward and backward CC steps for images on the same grid.

        Returns ``(forward_step, backward_step, energy)``: the steps are smoothed,
        component-first fields in voxels (``backward_step`` is None when not requested);
        ``energy`` is ``-sum(rho)`` over interior voxels, as DIPY's ``get_energy``.
        """
        factors, energy = self.compute_factors(static, moving)
        fw = self.step(factors, static, ginv, forward=True)
        bw = self.step(factors, moving, ginv, forward=False) if backward else None
        return fw, bw, energy


class SSDMetric:
    """Sum of squared differences with DIPY's demons step (Vercauteren et al. 2009).

    Parameters
    ----------
    dim : 2 or 3.
    smooth : standard deviation (voxels) of the Gaussian that regularises each step.
    inner_iter : kept for DIPY compatibility (used by DIPY's Gauss-Newton solver only).
    step_type : only ``'demons'`` is implemented.
    """

    def __init__(self, dim: int, smooth: float = 4, inner_iter: int = 10,
                 step_type: str = "demons"):
        if dim not in (2, 3):
            raise ValueError(f"SSDMetric: dim must be 2 or 3, got {dim!r}")
        if step_type != "demons":
            raise ValueError(
                f"SSDMetric: step_type {step_type!r} is not implemented in synflow; use 'demons'")
        self.dim = dim
        self.smooth = float(smooth)
        self.inner_iter = int(inner_iter)
        self.step_type = step_type
        self.energy: float | None = None

    def __repr__(self) -> str:
        return f"SSDMetric(dim={self.dim}, smooth={self.smooth})"

    def check_shape(self, shape, what: str = "image") -> None:
        if min(shape) < 2:
            raise ValueError(f"SSDMetric: the {what} grid {tuple(shape)} is too small")

    def compute_factors(self, static: np.ndarray, moving: np.ndarray):
        """The difference image ``static - moving`` and the energy ``sum(delta**2)``."""
        delta = np.asarray(static, dtype=np.float32) - np.asarray(moving, dtype=np.float32)
        energy = float(np.dot(delta.ravel(), delta.ravel()))
        self.energy = energy
        return delta, energy

    def step(self, delta, image: np.ndarray, ginv: np.ndarray, forward: bool) -> np.ndarray:
        """Demons step (voxels, component first); ``image`` is the one whose gradient drives it."""
        d = delta if forward else -delta
        # DIPY: sigma_x^2 = sum(h^2)/dim, in world units; with voxel-unit gradients the
        # matching quantity is the trace of the inverse metric tensor.
        sigma_sq_x = float(np.trace(np.linalg.inv(ginv))) / image.ndim
        image = np.asarray(image, dtype=np.float32)
        g = _metric_gradient(image, ginv)
        # |grad_world|^2 = grad_v^T (A^T A)^-1 grad_v
        nrm2 = sum(gv * gc for gv, gc in zip(np.gradient(image), g, strict=True))
        den = d * d / np.float32(sigma_sq_x) + nrm2
        coef = np.where(den < 1e-9, 0.0, d / np.where(den < 1e-9, 1.0, den)).astype(np.float32)
        g *= coef
        return _gaussian_smooth_components(g, self.smooth)

    def compute_steps(self, static: np.ndarray, moving: np.ndarray, ginv: np.ndarray,
                      backward: bool = True):
        """Demons steps (voxels, component first) and the energy ``sum((I - J)**2)``."""
        delta, energy = self.compute_factors(static, moving)
        fw = self.step(delta, static, ginv, forward=True)
        bw = self.step(delta, moving, ginv, forward=False) if backward else None
        return fw, bw, energy
