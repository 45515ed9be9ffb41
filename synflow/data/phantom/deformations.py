"""Known deformations: random diffeomorphisms, their composition and random affines.

* :func:`random_diffeomorphism` -- smooth random ``phi = exp(v)`` and its inverse, returned as a
  :class:`Deformation` (fields + diagnostics; unpacks as ``forward, inverse``);
* :func:`compose_displacements` -- displacement of one map followed by another;
* :func:`random_affine` -- random world affine about a centre (a case's ``prealign``).

``jacobian_determinant`` is :func:`synflow.align.qc.jacobian_determinant` (re-exported: the one
implementation, used for the fold check).

Displacements are float32 ``grid + (3,)`` in world mm (RAS) on the grid ``grid2world``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from synflow.align.affine_checks import check_affine
from synflow.align.qc import jacobian_determinant
from synflow.data.phantom.grid import _check_shape, _rng, sample_field, voxel_sizes

__all__ = ["Deformation", "random_diffeomorphism", "compose_displacements", "random_affine",
           "jacobian_determinant"]


def compose_displacements(first: np.ndarray, second: np.ndarray,
                          grid2world: np.ndarray) -> np.ndarray:
    """Displacement of ``x -> y = x + first(x) -> y + second(y)`` (both fields on one grid).

    Returns ``c(x) = first(x) + second(x + first(x))`` in mm (world RAS), float32
    ``shape + (3,)``; ``second`` is interpolated trilinearly, extended by its edge values
    outside the grid (``mode='nearest'``).
    """
    first = np.asarray(first, dtype=np.float32)
    second = np.asarray(second, dtype=np.float32)
    if first.ndim != 4 or first.shape[-1] != 3 or second.shape != first.shape:
        raise ValueError("first and second must both be shape grid+(3,) displacement fields")
    a = check_affine(grid2world, "grid2world")
    linv = np.linalg.inv(a[:3, :3]).astype(np.float32)
    vox = np.indices(first.shape[:3], dtype=np.float32)
    vox += (linv @ first.reshape(-1, 3).T).reshape(vox.shape)
    return first + sample_field(second, vox)


def _exp_vox(v_vox: np.ndarray, n_steps: int) -> np.ndarray:
    """Scaling and squaring of a stationary velocity field in voxel units (grid+(3,))."""
    d = (v_vox / np.float32(2.0**n_steps)).astype(np.float32)
    idx = np.indices(d.shape[:3], dtype=np.float32)
    for _ in range(n_steps):
        vox = idx + np.moveaxis(d, -1, 0)
        d = d + sample_field(d, vox)
    return d


def _n_squarings(v_vox: np.ndarray) -> int:
    vmax = float(np.sqrt((v_vox.astype(np.float64) ** 2).sum(-1)).max())
    return int(max(4, np.ceil(np.log2(max(vmax, 1e-6) / 0.125))))


@dataclass
class Deformation:
    """A random diffeomorphism and its diagnostics (what :func:`random_diffeomorphism` returns).

    Unpacks like the former ``(forward, inverse)`` tuple: ``fwd, inv = random_diffeomorphism(...)``.

    Attributes
    ----------
    forward, inverse
        float32 ``grid + (3,)`` displacements in world mm: ``phi(x) = x + forward(x)``,
        ``phi^{-1}(x) = x + inverse(x)``.
    mean_displacement_mm, max_displacement_mm
        Mean (over the mask) and maximum ``|forward|`` (mm).
    min_jacobian, min_jacobian_inverse
        Smallest Jacobian determinant of ``forward`` / ``inverse`` (> 0: no folding).
    n_squarings
        Scaling-and-squaring steps used (0 for a zero field).
    coarse_factor
        Sub-lattice step the exponential was computed on.
    """

    forward: np.ndarray
    inverse: np.ndarray
    mean_displacement_mm: float
    max_displacement_mm: float
    min_jacobian: float
    min_jacobian_inverse: float
    n_squarings: int
    coarse_factor: int

    def diagnostics(self) -> dict[str, float | int]:
        """The diagnostics as a dict (the keys the ``info`` argument receives)."""
        return {"mean_displacement_mm": self.mean_displacement_mm,
                "max_displacement_mm": self.max_displacement_mm,
                "min_jacobian": self.min_jacobian,
                "min_jacobian_inverse": self.min_jacobian_inverse,
                "n_squarings": self.n_squarings, "coarse_factor": self.coarse_factor}

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.forward, self.inverse))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> np.ndarray:
        return (self.forward, self.inverse)[i]


def _norm_mean(d_mm: np.ndarray, m: np.ndarray) -> float:
    return float(np.sqrt((d_mm[m].astype(np.float64) ** 2).sum(-1)).mean())


def _check_diffeo_args(shape: Any, grid2world: np.ndarray, mean_displacement_mm: float,
                       smoothness_mm: float, mask: np.ndarray | None,
                       coarse_factor: int | None
                       ) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray, int]:
    """Validated ``(shape, grid2world, mask, coarse_factor)`` of :func:`random_diffeomorphism`."""
    shape = _check_shape(shape)
    a = check_affine(grid2world, "grid2world")
    if not np.isfinite(mean_displacement_mm) or mean_displacement_mm < 0:
        raise ValueError(f"mean_displacement_mm must be >= 0, got {mean_displacement_mm}")
    if not np.isfinite(smoothness_mm) or smoothness_mm <= 0:
        raise ValueError(f"smoothness_mm must be > 0, got {smoothness_mm}")
    if mask is None:
        mask = np.ones(shape, dtype=bool)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != shape or not mask.any():
            raise ValueError(f"mask must be a non-empty boolean array of shape {shape}")
    if coarse_factor is None:
        coarse_factor = int(np.clip(np.floor(smoothness_mm / (3 * voxel_sizes(a).max())), 1, 4))
    f = int(coarse_factor)
    if f < 1:
        raise ValueError(f"coarse_factor must be >= 1, got {coarse_factor}")
    return shape, a, mask, f


def _coarse_velocity(shape: tuple[int, int, int], a: np.ndarray, mask: np.ndarray, f: int,
                     smoothness_mm: float, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed white noise (mm, per world axis) on the coarse lattice, and the coarse mask.

    Coarse voxel ``K`` <-> fine voxel ``f*K`` (the lattice covers the whole grid).
    """
    cshape = tuple(int(np.ceil((n - 1) / f)) + 1 for n in shape)
    cmask = mask[::f, ::f, ::f]
    cmask = np.pad(cmask, [(0, cs - ms) for cs, ms in zip(cshape, cmask.shape, strict=True)])
    if not cmask.any():
        cmask = np.ones(cshape, bool)
    sigma_vox = smoothness_mm / (voxel_sizes(a) * f)
    v = np.empty(cshape + (3,), np.float32)
    for c in range(3):
        noise = rng.standard_normal(cshape, dtype=np.float32)
        v[..., c] = ndi.gaussian_filter(noise, sigma_vox, mode="reflect", output=np.float32)
    return v, cmask


def _calibrated_exp(v: np.ndarray, cmask: np.ndarray, a: np.ndarray, f: int,
                    mean_displacement_mm: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Scale ``v`` (in place) so mean ``|exp(v)|`` over ``cmask`` hits the target (2 %).

    Returns ``(exp(v), exp(-v), n_squarings)`` on the coarse lattice, in mm.
    """
    lin = (a[:3, :3] * f).astype(np.float32)  # coarse voxel -> mm (linear part)
    linv = np.linalg.inv(a[:3, :3] * f).astype(np.float32)
    v *= np.float32(mean_displacement_mm / _norm_mean(v, cmask))
    for _ in range(4):
        v_vox = v @ linv.T
        n = _n_squarings(v_vox)
        cfwd = _exp_vox(v_vox, n) @ lin.T
        m = _norm_mean(cfwd, cmask)
        if abs(m / mean_displacement_mm - 1.0) <= 0.02:
            break
        v *= np.float32(mean_displacement_mm / m)
    cinv = _exp_vox(-v_vox, n) @ lin.T
    return cfwd, cinv, n


def _fine_fields(cfwd: np.ndarray, cinv: np.ndarray, shape: tuple[int, int, int],
                 a: np.ndarray, f: int, n_refine: int) -> tuple[np.ndarray, np.ndarray]:
    """Coarse fields onto the grid (trilinear), then ``forward`` refined against ``inverse``."""
    if f == 1:
        fwd, inv = cfwd.astype(np.float32), cinv.astype(np.float32)
    else:
        vox = np.indices(shape, dtype=np.float32) / np.float32(f)
        fwd = sample_field(cfwd.astype(np.float32), vox)
        inv = sample_field(cinv.astype(np.float32), vox)
    # Fixed-point refinement fwd(x) <- -inv(x + fwd(x)) on the grid, so that
    # x -> x + fwd(x) -> (+ inv, trilinear) returns to x at every grid point (the ground
    # truth of a case is evaluated exactly there, and ``inv`` is what generates images).
    lfinv = np.linalg.inv(a[:3, :3]).astype(np.float32)
    idx = np.indices(shape, dtype=np.float32)
    for _ in range(n_refine):
        fwd = -sample_field(inv, idx + (lfinv @ fwd.reshape(-1, 3).T).reshape(idx.shape))
    return fwd, inv


def random_diffeomorphism(
    shape: tuple[int, int, int],
    grid2world: np.ndarray,
    mean_displacement_mm: float = 2.5,
    smoothness_mm: float = 12.0,
    rng: np.random.Generator | int | None = None,
    mask: np.ndarray | None = None,
    info: dict | None = None,
    coarse_factor: int | None = None,
    n_refine: int = 3,
) -> Deformation:
    """Random smooth diffeomorphism ``phi = exp(v)`` and its inverse ``exp(-v)``.

    ``v`` is a stationary velocity field: white Gaussian noise (per world axis) smoothed by
    a Gaussian of ``smoothness_mm`` (std, mm), scaled so the mean ``|exp(v)|`` over ``mask``
    (whole grid if None) is ``mean_displacement_mm`` (within ~3 %). The exponential is
    computed by scaling and squaring (``2**-N`` scaling, ``N`` compositions with trilinear
    interpolation, edge values extended outside the grid). For speed this runs on a
    sub-lattice (every ``coarse_factor``-th voxel; default ``smoothness_mm / (3 voxel)``,
    at most 4) and both fields are then trilinearly interpolated onto the grid. Finally
    ``forward`` is refined (``n_refine`` fixed-point steps ``forward(x) <- -inverse(x +
    forward(x))``) so that ``compose_displacements(forward, inverse)`` is ~0 (< 0.02 mm) at
    the grid points; the other order is interpolation-limited (~0.03 mm mean, < 0.6 mm).

    Parameters
    ----------
    shape, grid2world
        Grid on which the fields are sampled (voxel -> RAS mm affine).
    mean_displacement_mm
        Target mean displacement norm (mm) over ``mask``; 0 gives zero fields.
    smoothness_mm
        Std (mm) of the Gaussian smoothing the noise. Larger = smoother.
    rng
        Generator or seed.
    mask
        Optional boolean ``shape`` array (e.g. the brain) for the mean.
    info
        Optional dict updated with :meth:`Deformation.diagnostics` (``mean_displacement_mm``,
        ``max_displacement_mm``, ``min_jacobian``, ``min_jacobian_inverse``, ``n_squarings``,
        ``coarse_factor``), also when the fields fold.
    coarse_factor
        Sub-lattice step (1 = compute on the full grid).
    n_refine
        Fixed-point refinement steps of ``forward`` against ``inverse`` (0 = none).

    Returns
    -------
    Deformation
        ``forward, inverse`` (float32 ``shape + (3,)``, world mm; unpacks as a pair):
        ``phi(x) = x + forward(x)`` and ``phi^{-1}(x) = x + inverse(x)`` (``inverse =
        exp(-v)``), so that ``compose_displacements(forward, inverse) ~ 0``; plus diagnostics.

    Raises
    ------
    ValueError
        If the Jacobian determinant of either field is not > 0 everywhere (reduce
        ``mean_displacement_mm`` or increase ``smoothness_mm``).
    """
    shape, a, mask, f = _check_diffeo_args(shape, grid2world, mean_displacement_mm,
                                           smoothness_mm, mask, coarse_factor)
    rng = _rng(rng)
    if mean_displacement_mm == 0:
        z = np.zeros(shape + (3,), np.float32)
        out = Deformation(z, z.copy(), 0.0, 0.0, 1.0, 1.0, 0, f)
    else:
        v, cmask = _coarse_velocity(shape, a, mask, f, smoothness_mm, rng)
        cfwd, cinv, n = _calibrated_exp(v, cmask, a, f, mean_displacement_mm)
        fwd, inv = _fine_fields(cfwd, cinv, shape, a, f, n_refine)
        out = Deformation(
            fwd, inv, mean_displacement_mm=_norm_mean(fwd, mask),
            max_displacement_mm=float(np.sqrt((fwd.astype(np.float64) ** 2).sum(-1)).max()),
            min_jacobian=float(jacobian_determinant(fwd, a).min()),
            min_jacobian_inverse=float(jacobian_determinant(inv, a).min()),
            n_squarings=n, coarse_factor=f)
    if info is not None:
        info.update(out.diagnostics())
    if out.min_jacobian <= 0 or out.min_jacobian_inverse <= 0:
        raise ValueError(
            f"random deformation folds (min Jacobian "
            f"{min(out.min_jacobian, out.min_jacobian_inverse):.3f}): reduce "
            f"mean_displacement_mm={mean_displacement_mm} or increase "
            f"smoothness_mm={smoothness_mm}"
        )
    return out


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(
    rng: np.random.Generator | int | None = None,
    max_rotation_deg: float = 6.0,
    max_translation_mm: float = 6.0,
    max_scale: float = 0.04,
    max_shear: float = 0.02,
    center_mm: tuple[float, float, float] | np.ndarray = (0.0, -18.0, 18.0),
) -> np.ndarray:
    """Random 4x4 world affine (RAS mm -> RAS mm) about ``center_mm``.

    ``A = T(c) . T(t) . R . K . S . T(-c)``: rotations about x, y, z uniform in
    ``+-max_rotation_deg``; translation ``t`` uniform in ``+-max_translation_mm`` per axis;
    per-axis scale factors ``1 + U(+-max_scale)``; upper-triangular shears ``U(+-max_shear)``.
    The default centre is roughly the centre of the brain in MNI space, so rotations do not
    add large translations. Used as ``prealign`` (static-world -> moving-world).
    """
    rng = _rng(rng)
    for nm, val in (("max_rotation_deg", max_rotation_deg),
                    ("max_translation_mm", max_translation_mm),
                    ("max_scale", max_scale), ("max_shear", max_shear)):
        if not np.isfinite(val) or val < 0:
            raise ValueError(f"{nm} must be a finite number >= 0, got {val}")
    if max_scale >= 1:
        raise ValueError(f"max_scale must be < 1, got {max_scale}")
    c = np.asarray(center_mm, dtype=np.float64).reshape(3)
    ang = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    t = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    s = 1.0 + rng.uniform(-max_scale, max_scale, 3)
    sh = rng.uniform(-max_shear, max_shear, 3)
    k = np.array([[1, sh[0], sh[1]], [0, 1, sh[2]], [0, 0, 1]])
    lin = _rotation(ang) @ k @ np.diag(s)
    out = np.eye(4)
    out[:3, :3] = lin
    out[:3, 3] = c + t - lin @ c
    return out

