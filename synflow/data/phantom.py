"""Synthetic b0 registration cases with a known answer.

Everything is built from the bundled 2 mm MNI152NLin2009aSym-derived template
(:func:`synflow.data.get_template`) with NumPy/SciPy/nibabel only. Ground-truth warps use
``scipy.ndimage.map_coordinates`` on purpose: they are independent of synflow's engine.

Conventions (same as DIPY, see CONTRIBUTING.md):

* ``grid2world`` is the NIfTI affine (voxel index -> RAS mm).
* A displacement field ``d`` is float32 ``grid + (3,)`` in **world mm (RAS)**, sampled on a
  grid; it sends the world point ``x`` (centre of a grid voxel) to ``x + d(x)``.
* ``prealign`` ``P`` maps **static-world -> moving-world** points.
* The true answer of a :class:`RegistrationCase` is a *pull map*: static voxel ``x`` (world
  mm) shows the anatomy found in the moving image at ``pull(x) = P @ (x + u(x))`` (moving
  world mm), ``u = true_displacement``. This is exactly what DIPY's
  ``DiffeomorphicMap.transform(moving)`` samples: ``moving(W_m . P . (x + b(x)))`` with
  ``b = mapping.get_forward_field()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from synflow.data import get_template

__all__ = [
    "TISSUE_LABELS",
    "B0_CONTRAST",
    "TemplateTissues",
    "RegistrationCase",
    "TutorialPair",
    "load_template_tissues",
    "random_diffeomorphism",
    "compose_displacements",
    "random_affine",
    "bias_field",
    "add_rician_noise",
    "b0_like",
    "make_registration_case",
    "make_tutorial_pair",
    "SyntheticSubject",
    "make_subject",
    "native_grid",
    "dwi_signal",
    "random_fibre_directions",
    "make_small_dwi",
    "write_bundled_examples",
    "dice",
    "jacobian_determinant",
    "grid_world_points",
    "tissue_labels",
]

#: Label values of ``static_labels`` / ``moving_labels``.
TISSUE_LABELS: dict[str, int] = {"background": 0, "CSF": 1, "GM": 2, "WM": 3}
#: b0 contrast, in units of the WM signal-free scale (``scale`` argument of :func:`b0_like`).
B0_CONTRAST: dict[str, float] = {"CSF": 1.0, "GM": 0.42, "WM": 0.30, "scalp": 0.12}
#: distance (mm) from the brain outline beyond which the head is scalp (closer: dark skull).
_SKULL_MM = 6.0


# --------------------------------------------------------------------------------------
# small geometry helpers
# --------------------------------------------------------------------------------------
def _as_affine(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a finite 4x4 matrix, got shape {a.shape}")
    return a


def _check_shape(shape: Any, name: str = "shape") -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"{name} must be 3 ints >= 2, got {shape}")
    return shape  # type: ignore[return-value]


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def grid_world_points(shape: tuple[int, int, int], grid2world: np.ndarray) -> np.ndarray:
    """World coordinates (RAS mm) of every voxel centre: float64 ``shape + (3,)``."""
    shape = _check_shape(shape)
    a = _as_affine(grid2world, "grid2world")
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return (a[:3, :3] @ idx + a[:3, 3:]).T.reshape(shape + (3,))


def _world_to_vox(points: np.ndarray, grid2world: np.ndarray) -> np.ndarray:
    """(..., 3) world mm -> (3, ...) voxel coordinates of the grid (for map_coordinates)."""
    inv = np.linalg.inv(grid2world)
    dt = points.dtype if points.dtype in (np.float32, np.float64) else np.float64
    flat = points.reshape(-1, 3)
    vox = inv[:3, :3].astype(dt) @ flat.T + inv[:3, 3:].astype(dt)
    return vox.reshape((3,) + points.shape[:-1])


def _sample(img: np.ndarray, vox: np.ndarray, order: int = 1, mode: str = "nearest",
            prefiltered: bool = False) -> np.ndarray:
    """Interpolate a scalar image at voxel coordinates ``vox`` (3, ...). float32."""
    return ndi.map_coordinates(img, vox, order=order, mode=mode, cval=0.0,
                               prefilter=not prefiltered, output=np.float32)


def _sample_field(disp: np.ndarray, vox: np.ndarray, mode: str = "nearest") -> np.ndarray:
    """Trilinear interpolation of a vector field ``grid+(3,)`` at voxel coords (3, ...)."""
    out = np.empty(vox.shape[1:] + (3,), dtype=np.float32)
    for c in range(3):
        out[..., c] = ndi.map_coordinates(disp[..., c], vox, order=1, mode=mode, cval=0.0,
                                          output=np.float32)
    return out


def _voxel_sizes(grid2world: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(grid2world)[:3, :3] ** 2).sum(axis=0))


# --------------------------------------------------------------------------------------
# template tissues
# --------------------------------------------------------------------------------------
@dataclass
class TemplateTissues:
    """Template tissue maps on one grid (float32 probabilities in [0, 1], bool masks).

    ``affine`` maps voxel -> MNI152NLin2009aSym RAS mm.
    """

    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    scalp: np.ndarray
    brain_mask: np.ndarray
    head_mask: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.csf.shape  # type: ignore[return-value]


_TISSUE_CACHE: dict[float, TemplateTissues] = {}


def _load_f32(kind: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(get_template(kind)))
    return np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32), img.affine


def load_template_tissues(voxel_size: float = 2.0) -> TemplateTissues:
    """Load the bundled template tissue maps, optionally resampled to ``voxel_size`` mm.

    At 2 mm (default) these are the bundled files (98x116x94). Other voxel sizes resample
    the 2 mm maps smoothly (cubic B-spline, clipped to [0, 1]) on an isotropic grid of
    exactly ``voxel_size`` centred on the same field of view, e.g. 1 mm -> 196x232x188
    (the original 1 mm MNI grid, origin (-98, -134, -72)), 3 mm -> 65x77x63. The scalp map
    is derived from the head and brain masks (head voxels farther than 6 mm from the
    smoothed brain outline), partial-volumed.
    Results are cached (treat the arrays as read-only).
    """
    voxel_size = float(voxel_size)
    if not np.isfinite(voxel_size) or not 0.5 <= voxel_size <= 4.0:
        raise ValueError(f"voxel_size must be in [0.5, 4] mm, got {voxel_size}")
    if voxel_size in _TISSUE_CACHE:
        return _TISSUE_CACHE[voxel_size]
    csf, aff = _load_f32("CSF")
    gm, _ = _load_f32("GM")
    wm, _ = _load_f32("WM")
    brain = _load_f32("brainmask")[0] > 0.5
    head = _load_f32("headmask")[0] > 0.5
    hull = ndi.binary_fill_holes(ndi.gaussian_filter(brain.astype(np.float32), 2.0) > 0.2)
    dist = ndi.distance_transform_edt(~hull, sampling=_voxel_sizes(aff))
    scalp = ndi.gaussian_filter((head & (dist > _SKULL_MM)).astype(np.float32), 0.5)
    scalp = np.minimum(scalp, 1.0 - (csf + gm + wm)).clip(0, 1).astype(np.float32)
    if voxel_size != 2.0:
        vs0 = _voxel_sizes(aff)
        shape0 = np.array(csf.shape)
        new_shape = tuple(int(s) for s in np.round(shape0 * vs0 / voxel_size))
        # exact voxel size; new voxel k sits at old voxel coordinate f * k + o, grid centred
        # on the template field of view (1 mm: 196x232x188, the original 1 mm MNI grid)
        f = voxel_size / vs0
        o = (shape0 - 1) / 2.0 - f * (np.array(new_shape) - 1) / 2.0
        scale = np.diag(list(f) + [1.0])
        scale[:3, 3] = o
        new_aff = aff @ scale
        vox = np.indices(new_shape, dtype=np.float32)
        vox = vox * f.reshape(3, 1, 1, 1).astype(np.float32) + o.reshape(3, 1, 1, 1).astype(
            np.float32)

        def rs(a: np.ndarray, order: int) -> np.ndarray:
            return _sample(a, vox, order=order, mode="nearest").clip(0, 1)

        csf, gm, wm, scalp = (rs(a, 3) for a in (csf, gm, wm, scalp))
        tot = csf + gm + wm + scalp
        over = tot > 1
        if over.any():
            for a in (csf, gm, wm, scalp):
                a[over] /= tot[over]
        brain = rs(brain.astype(np.float32), 1) >= 0.5
        head = rs(head.astype(np.float32), 1) >= 0.5
        aff = new_aff
    out = TemplateTissues(csf=csf, gm=gm, wm=wm, scalp=scalp, brain_mask=brain,
                          head_mask=head, affine=np.asarray(aff, dtype=np.float64))
    _TISSUE_CACHE[voxel_size] = out
    return out


def tissue_labels(csf: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Hard labels = argmax of (1-sum, CSF, GM, WM): int32 (0 background, 1 CSF, 2 GM, 3 WM).

    int32 so DIPY's ``transform(..., interpolation="nearest")`` accepts them.
    """
    bg = 1.0 - (csf + gm + wm)
    return np.argmax(np.stack([bg, csf, gm, wm]), axis=0).astype(np.int32)


# --------------------------------------------------------------------------------------
# deformations
# --------------------------------------------------------------------------------------
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
    a = _as_affine(grid2world, "grid2world")
    linv = np.linalg.inv(a[:3, :3]).astype(np.float32)
    vox = np.indices(first.shape[:3], dtype=np.float32)
    vox += (linv @ first.reshape(-1, 3).T).reshape(vox.shape)
    return first + _sample_field(second, vox)


def _exp_vox(v_vox: np.ndarray, n_steps: int) -> np.ndarray:
    """Scaling and squaring of a stationary velocity field in voxel units (grid+(3,))."""
    d = (v_vox / np.float32(2.0**n_steps)).astype(np.float32)
    idx = np.indices(d.shape[:3], dtype=np.float32)
    for _ in range(n_steps):
        vox = idx + np.moveaxis(d, -1, 0)
        d = d + _sample_field(d, vox)
    return d


def _n_squarings(v_vox: np.ndarray) -> int:
    vmax = float(np.sqrt((v_vox.astype(np.float64) ** 2).sum(-1)).max())
    return int(max(4, np.ceil(np.log2(max(vmax, 1e-6) / 0.125))))


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
) -> tuple[np.ndarray, np.ndarray]:
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
        Optional dict filled with diagnostics: ``mean_displacement_mm``,
        ``max_displacement_mm``, ``min_jacobian``, ``min_jacobian_inverse``, ``n_squarings``,
        ``coarse_factor``.
    coarse_factor
        Sub-lattice step (1 = compute on the full grid).
    n_refine
        Fixed-point refinement steps of ``forward`` against ``inverse`` (0 = none).

    Returns
    -------
    forward, inverse : float32 ``shape + (3,)``
        Displacements in world mm: ``phi(x) = x + forward(x)`` and
        ``phi^{-1}(x) = x + inverse(x)`` (``inverse = exp(-v)``), so that
        ``compose_displacements(forward, inverse) ~ 0``.

    Raises
    ------
    ValueError
        If the Jacobian determinant of either field is not > 0 everywhere (reduce
        ``mean_displacement_mm`` or increase ``smoothness_mm``).
    """
    shape = _check_shape(shape)
    a = _as_affine(grid2world, "grid2world")
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
    vs = _voxel_sizes(a)
    if coarse_factor is None:
        coarse_factor = int(np.clip(np.floor(smoothness_mm / (3 * vs.max())), 1, 4))
    f = int(coarse_factor)
    if f < 1:
        raise ValueError(f"coarse_factor must be >= 1, got {coarse_factor}")
    rng = _rng(rng)
    if mean_displacement_mm == 0:
        z = np.zeros(shape + (3,), np.float32)
        if info is not None:
            info.update(mean_displacement_mm=0.0, max_displacement_mm=0.0, min_jacobian=1.0,
                        min_jacobian_inverse=1.0, n_squarings=0, coarse_factor=f)
        return z, z.copy()

    # coarse lattice: coarse voxel K <-> fine voxel f*K (covers the whole grid)
    cshape = tuple(int(np.ceil((n - 1) / f)) + 1 for n in shape)
    cmask = mask[::f, ::f, ::f]
    cmask = np.pad(cmask, [(0, cs - ms) for cs, ms in zip(cshape, cmask.shape, strict=True)])
    if not cmask.any():
        cmask = np.ones(cshape, bool)
    sigma_vox = smoothness_mm / (vs * f)
    v = np.empty(cshape + (3,), np.float32)
    for c in range(3):
        noise = rng.standard_normal(cshape, dtype=np.float32)
        v[..., c] = ndi.gaussian_filter(noise, sigma_vox, mode="reflect", output=np.float32)
    lin = (a[:3, :3] * f).astype(np.float32)  # coarse voxel -> mm (linear part)
    linv = np.linalg.inv(a[:3, :3] * f).astype(np.float32)

    def norm_mean(d_mm: np.ndarray, m: np.ndarray) -> float:
        return float(np.sqrt((d_mm[m].astype(np.float64) ** 2).sum(-1)).mean())

    v *= np.float32(mean_displacement_mm / norm_mean(v, cmask))
    for _ in range(4):
        v_vox = v @ linv.T
        n = _n_squarings(v_vox)
        cfwd = _exp_vox(v_vox, n) @ lin.T
        m = norm_mean(cfwd, cmask)
        if abs(m / mean_displacement_mm - 1.0) <= 0.02:
            break
        v *= np.float32(mean_displacement_mm / m)
    cinv = _exp_vox(-v_vox, n) @ lin.T
    if f == 1:
        fwd, inv = cfwd.astype(np.float32), cinv.astype(np.float32)
    else:
        vox = np.indices(shape, dtype=np.float32) / np.float32(f)
        fwd = _sample_field(cfwd.astype(np.float32), vox)
        inv = _sample_field(cinv.astype(np.float32), vox)
    # Fixed-point refinement fwd(x) <- -inv(x + fwd(x)) on the grid, so that
    # x -> x + fwd(x) -> (+ inv, trilinear) returns to x at every grid point (the ground
    # truth of a case is evaluated exactly there, and ``inv`` is what generates images).
    lfinv = np.linalg.inv(a[:3, :3]).astype(np.float32)
    idx = np.indices(shape, dtype=np.float32)
    for _ in range(n_refine):
        fwd = -_sample_field(inv, idx + (lfinv @ fwd.reshape(-1, 3).T).reshape(idx.shape))
    jf = float(jacobian_determinant(fwd, a).min())
    ji = float(jacobian_determinant(inv, a).min())
    if info is not None:
        info.update(
            mean_displacement_mm=norm_mean(fwd, mask),
            max_displacement_mm=float(np.sqrt((fwd.astype(np.float64) ** 2).sum(-1)).max()),
            min_jacobian=jf, min_jacobian_inverse=ji, n_squarings=n, coarse_factor=f,
        )
    if jf <= 0 or ji <= 0:
        raise ValueError(
            f"random deformation folds (min Jacobian {min(jf, ji):.3f}): reduce "
            f"mean_displacement_mm={mean_displacement_mm} or increase "
            f"smoothness_mm={smoothness_mm}"
        )
    return fwd, inv


def jacobian_determinant(disp_mm: np.ndarray, grid2world: np.ndarray) -> np.ndarray:
    """Jacobian determinant of ``x -> x + d(x)`` (central finite differences, in world mm).

    ``disp_mm`` is float ``grid + (3,)`` in world mm on the grid ``grid2world``. Returns float32
    ``grid`` (1 = volume preserving, <= 0 = folding). One-sided differences at the edges.
    """
    d = np.asarray(disp_mm, dtype=np.float32)
    if d.ndim != 4 or d.shape[-1] != 3:
        raise ValueError(f"disp_mm must have shape grid+(3,), got {d.shape}")
    a = _as_affine(grid2world, "grid2world")
    linv = np.linalg.inv(a[:3, :3]).astype(np.float32)
    # g[k][..., c] = d u_c / d i_k (voxel axes); world: J[c][w] = delta + sum_k g[k][c] linv[k, w]
    g = np.gradient(d, axis=(0, 1, 2))
    jac = [[np.float32(c == w) + sum(g[k][..., c] * linv[k, w] for k in range(3)
                                     if linv[k, w] != 0)
            for w in range(3)] for c in range(3)]
    det = (
        jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
        - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
        + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0])
    )
    return det.astype(np.float32)


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


# --------------------------------------------------------------------------------------
# intensities
# --------------------------------------------------------------------------------------
def bias_field(shape: tuple[int, int, int], grid2world: np.ndarray, strength: float = 0.2,
               rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Smooth multiplicative bias field ``exp(strength * p(x))`` (float32 ``shape``).

    ``p`` is a random 2nd-order polynomial of the world coordinates (normalised by the
    field-of-view half-extent), scaled so ``max |p| = 1`` on the grid: the field lies in
    ``[exp(-strength), exp(strength)]``. ``strength = 0`` gives ones.
    """
    shape = _check_shape(shape)
    if not np.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return np.ones(shape, np.float32)
    rng = _rng(rng)
    a = _as_affine(grid2world, "grid2world")
    # separable evaluation: coordinates along each voxel axis of the normalised world frame
    pts = grid_world_points(shape, a).astype(np.float32)
    ctr = pts.reshape(-1, 3).mean(0)
    half = np.abs(pts.reshape(-1, 3) - ctr).max(0) + 1e-6
    q = (pts - ctr) / half
    x, y, z = q[..., 0], q[..., 1], q[..., 2]
    terms = [x, y, z, x * y, x * z, y * z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3]
    coef = rng.standard_normal(len(terms))
    coef[3:] *= 0.5
    p = sum(float(ci) * t for ci, t in zip(coef, terms, strict=True))
    p /= max(float(np.abs(p).max()), 1e-6)
    return np.exp(np.float32(strength) * p).astype(np.float32)


def add_rician_noise(img: np.ndarray, sigma: float,
                     rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Magnitude of ``img + N(0, sigma) + i N(0, sigma)`` (Rician), float32."""
    img = np.asarray(img, dtype=np.float32)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return img.copy()
    rng = _rng(rng)
    re = img + np.float32(sigma) * rng.standard_normal(img.shape, dtype=np.float32)
    im = np.float32(sigma) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im).astype(np.float32)


def b0_like(
    csf: np.ndarray,
    gm: np.ndarray,
    wm: np.ndarray,
    scalp: np.ndarray | None = None,
    rng: np.random.Generator | int | None = None,
    noise: float = 0.04,
    bias: float = 0.2,
    grid2world: np.ndarray | None = None,
    scale: float = 1000.0,
    contrast: dict[str, float] | None = None,
) -> np.ndarray:
    """b0-like image from tissue probability maps (float32, same grid).

    Noise-free signal ``scale * (1.0 CSF + 0.42 GM + 0.30 WM + 0.12 scalp)`` (see
    :data:`B0_CONTRAST`; override with ``contrast``), i.e. CSF > GM > WM > scalp > 0;
    multiplied by a smooth :func:`bias_field` of strength ``bias``; then Rician noise with
    ``sigma = noise * WM signal`` (``noise = 0.04`` -> SNR 25 in WM). ``noise = bias = 0``
    gives the clean image. ``grid2world`` (needed for ``bias > 0``) defines the bias frame.
    """
    c = dict(B0_CONTRAST)
    if contrast:
        c.update(contrast)
    csf, gm, wm = (np.asarray(x, dtype=np.float32) for x in (csf, gm, wm))
    if not (csf.shape == gm.shape == wm.shape) or csf.ndim != 3:
        raise ValueError("csf, gm, wm must be 3-D arrays of one shape")
    img = c["CSF"] * csf + c["GM"] * gm + c["WM"] * wm
    if scalp is not None:
        img = img + c["scalp"] * np.asarray(scalp, dtype=np.float32)
    img = (np.float32(scale) * img).astype(np.float32)
    rng = _rng(rng)
    if bias > 0:
        if grid2world is None:
            raise ValueError("grid2world is required when bias > 0")
        img *= bias_field(img.shape, grid2world, bias, rng)
    return add_rician_noise(img, noise * scale * c["WM"], rng)


# --------------------------------------------------------------------------------------
# registration case
# --------------------------------------------------------------------------------------
def _pull_points_of_mapping(mapping: Any, static_shape: tuple[int, int, int],
                            static_affine: np.ndarray,
                            prealign: np.ndarray | None) -> np.ndarray:
    """World points (moving world mm) that ``mapping.transform`` samples for each static voxel.

    For ``is_inverse=True`` maps (what ``SymmetricDiffeomorphicRegistration.optimize``
    returns, DIPY or synflow): ``pull(x) = P . (x + b(x))`` with ``b = get_forward_field()``
    on the displacement grid (interpolated there if it is not the static grid) and ``P`` the
    prealign given to ``optimize`` (``mapping.prealign`` stores ``P^-1``). For
    ``is_inverse=False`` maps: ``pull(x) = Q x + f(Q x)``, ``Q = mapping.prealign``.
    """
    x = grid_world_points(static_shape, static_affine)
    q = getattr(mapping, "prealign", None)
    is_inv = bool(getattr(mapping, "is_inverse", False))
    disp_g2w = getattr(mapping, "disp_grid2world", None)
    disp_g2w = np.eye(4) if disp_g2w is None else np.asarray(disp_g2w, dtype=np.float64)
    field = np.asarray(mapping.get_forward_field(), dtype=np.float32)
    if field.ndim != 4 or field.shape[-1] != 3:
        raise ValueError(f"mapping.get_forward_field() must be grid+(3,), got {field.shape}")

    def sample_at(points: np.ndarray) -> np.ndarray:
        if (points is x and field.shape[:3] == tuple(static_shape)
                and np.allclose(disp_g2w, static_affine)):
            return field.astype(np.float64)
        # DIPY pads displacement fields with zeros outside their grid
        return _sample_field(field, _world_to_vox(points, disp_g2w),
                             mode="grid-constant").astype(np.float64)

    if is_inv:
        p_from_map = None if q is None else np.linalg.inv(np.asarray(q, dtype=np.float64))
        if prealign is None:
            p = np.eye(4) if p_from_map is None else p_from_map
        else:
            p = _as_affine(prealign, "prealign")
            if p_from_map is not None and not np.allclose(p, p_from_map, atol=1e-4):
                raise ValueError(
                    "prealign does not match inv(mapping.prealign); pass the prealign "
                    "(static-world -> moving-world) that was given to optimize()"
                )
        y = x + sample_at(x)
        return y @ p[:3, :3].T + p[:3, 3]
    qq = np.eye(4) if q is None else np.asarray(q, dtype=np.float64)
    if prealign is not None and not np.allclose(_as_affine(prealign, "prealign"), qq,
                                                atol=1e-4):
        raise ValueError("for is_inverse=False maps, prealign must equal mapping.prealign")
    qx = x @ qq[:3, :3].T + qq[:3, 3]
    return qx + sample_at(qx)


@dataclass
class RegistrationCase:
    """A synthetic static/moving b0 pair with the exact answer.

    Attributes
    ----------
    static, moving
        float32 images (noisy, biased b0-like; arbitrary units, WM ~ 300).
    static_affine, moving_affine
        voxel -> world RAS mm of each grid (the grids may differ).
    prealign
        4x4 true affine, static-world -> moving-world mm (DIPY's ``prealign``).
    true_displacement
        float32 static grid + (3,), mm: static voxel at world ``x`` shows the moving
        anatomy at ``pull(x) = prealign @ (x + u(x))`` (moving world). This is the
        ``get_forward_field()`` a perfect DIPY SyN result would have when ``prealign`` is
        passed to ``optimize``.
    true_inverse_displacement
        float32 static grid + (3,), mm: ``x + v(x)`` inverts ``x + u(x)`` (``v = exp(-vel)``),
        i.e. moving anatomy at world ``y`` = static anatomy at ``w + v(w)``,
        ``w = prealign^-1 y``.
    brain_mask
        bool, static grid. Errors are measured here.
    static_labels, moving_labels
        int32 (0 background, 1 CSF, 2 GM, 3 WM) on each grid.
    static_clean, moving_clean
        noise- and bias-free versions of static / moving.
    info
        diagnostics (min Jacobians, mean displacement, seeds...).
    """

    static: np.ndarray
    static_affine: np.ndarray
    moving: np.ndarray
    moving_affine: np.ndarray
    prealign: np.ndarray
    true_displacement: np.ndarray
    true_inverse_displacement: np.ndarray
    brain_mask: np.ndarray
    static_labels: np.ndarray
    moving_labels: np.ndarray
    static_clean: np.ndarray
    moving_clean: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def static_world_points(self) -> np.ndarray:
        """World mm of every static voxel centre, float64 static grid + (3,)."""
        return grid_world_points(self.static.shape, self.static_affine)

    def true_pull_points(self) -> np.ndarray:
        """True pull points ``prealign @ (x + u(x))`` in moving world mm (float64, grid+(3,))."""
        y = self.static_world_points + self.true_displacement.astype(np.float64)
        p = self.prealign
        return y @ p[:3, :3].T + p[:3, 3]

    def endpoint_error(self, pull_points_mm: np.ndarray,
                       mask: np.ndarray | None = None) -> dict[str, float]:
        """End-point error of estimated pull points over the brain (mm).

        ``pull_points_mm``: float ``static.shape + (3,)``, the moving-world point (mm) an
        estimated registration samples for each static voxel. Returns
        ``{"mean", "median", "p95", "max"}`` of ``|estimate - truth|`` over ``brain_mask``
        (or ``mask``).
        """
        est = np.asarray(pull_points_mm, dtype=np.float64)
        if est.shape != self.static.shape + (3,):
            raise ValueError(f"pull_points_mm must have shape {self.static.shape + (3,)}, "
                             f"got {est.shape}")
        m = self.brain_mask if mask is None else np.asarray(mask, dtype=bool)
        err = np.sqrt(((est - self.true_pull_points())[m] ** 2).sum(-1))
        if not np.all(np.isfinite(err)):
            raise ValueError("pull_points_mm contains non-finite values in the mask")
        return {"mean": float(err.mean()), "median": float(np.median(err)),
                "p95": float(np.percentile(err, 95)), "max": float(err.max())}

    def pull_points_of_mapping(self, mapping: Any,
                               prealign: np.ndarray | None = None) -> np.ndarray:
        """Pull points (moving world mm, static grid + (3,)) of a DIPY/synflow ``DiffeomorphicMap``.

        For a map returned by ``SymmetricDiffeomorphicRegistration.optimize`` this is
        ``P . (x + b(x))`` with ``b = mapping.get_forward_field()`` and ``P`` the
        ``prealign`` passed to ``optimize`` (if None, taken as ``inv(mapping.prealign)``, or
        identity when the map has none; if both are given they must agree).
        """
        return _pull_points_of_mapping(mapping, self.static.shape, self.static_affine, prealign)

    def endpoint_error_of_mapping(self, mapping: Any,
                                  prealign: np.ndarray | None = None) -> dict[str, float]:
        """:meth:`endpoint_error` of a ``DiffeomorphicMap`` (see :meth:`pull_points_of_mapping`)."""
        return self.endpoint_error(self.pull_points_of_mapping(mapping, prealign))

    def endpoint_error_of_affine(self, affine: np.ndarray) -> dict[str, float]:
        """:meth:`endpoint_error` of a pure affine ``static-world -> moving-world`` estimate."""
        a = _as_affine(affine, "affine")
        return self.endpoint_error(self.static_world_points @ a[:3, :3].T + a[:3, 3])

    def oracle_mapping(self) -> Any:
        """An exact DIPY ``DiffeomorphicMap`` built from the truth (needs ``dipy``).

        ``transform(moving)`` pulls ``moving`` onto the static grid through the true map;
        use with ``prealign=self.prealign``. (Its ``forward`` field is the inverse
        displacement on the static grid and is only approximately consistent.)
        """
        from dipy.align.imwarp import DiffeomorphicMap

        m = DiffeomorphicMap(
            3, self.static.shape, disp_grid2world=self.static_affine,
            domain_shape=self.moving.shape, domain_grid2world=self.moving_affine,
            codomain_shape=self.static.shape, codomain_grid2world=self.static_affine,
            prealign=np.linalg.inv(self.prealign))
        m.forward = np.ascontiguousarray(self.true_inverse_displacement, dtype=np.float32)
        m.backward = np.ascontiguousarray(self.true_displacement, dtype=np.float32)
        m.is_inverse = True
        return m

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write NIfTI/text files (for external tools): static, moving, masks, labels,
        ``prealign.txt`` (4x4, static-world -> moving-world), and
        ``true_displacement.nii.gz`` (static grid, mm, shape grid+(3,))."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {
            "static": (self.static, self.static_affine),
            "moving": (self.moving, self.moving_affine),
            "brain_mask": (self.brain_mask.astype(np.uint8), self.static_affine),
            "static_labels": (self.static_labels, self.static_affine),
            "moving_labels": (self.moving_labels, self.moving_affine),
            "true_displacement": (self.true_displacement, self.static_affine),
        }
        paths = {}
        for k, (arr, aff) in files.items():
            paths[k] = out / f"{k}.nii.gz"
            nib.save(nib.Nifti1Image(arr, aff), str(paths[k]))
        paths["prealign"] = out / "prealign.txt"
        np.savetxt(paths["prealign"], self.prealign)
        return paths


def _grid_like(shape: tuple[int, int, int], affine: np.ndarray,
               voxel_size: Any, new_shape: Any | None) -> tuple[tuple[int, int, int],
                                                                 np.ndarray]:
    """Axis-aligned grid with ``voxel_size`` (scalar or 3) centred on the given grid's FOV."""
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    if np.any(vs <= 0) or not np.all(np.isfinite(vs)):
        raise ValueError(f"moving_voxel_size must be > 0, got {voxel_size}")
    vs0 = _voxel_sizes(affine)
    if new_shape is None:
        new_shape = tuple(int(s) for s in np.round(np.array(shape) * vs0 / vs))
    new_shape = _check_shape(new_shape, "moving_shape")
    centre = affine[:3, :3] @ ((np.array(shape) - 1) / 2.0) + affine[:3, 3]
    out = np.diag(list(vs) + [1.0])
    out[:3, 3] = centre - vs * (np.array(new_shape) - 1) / 2.0
    return new_shape, out


def _warp_case_images(
    static_clean: np.ndarray, tissues: tuple[np.ndarray, ...], static_affine: np.ndarray,
    inverse_disp: np.ndarray, affine_s2m: np.ndarray, moving_shape: tuple[int, int, int],
    moving_affine: np.ndarray,
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Moving anatomy: ``moving(y) = anatomy(w + v(w))``, ``w = P^-1 y`` (cubic for the image,
    trilinear for tissue maps; anatomy extended by edge values outside its grid)."""
    y = grid_world_points(moving_shape, moving_affine).astype(np.float32)
    pinv = np.linalg.inv(affine_s2m)
    w = y @ pinv[:3, :3].T.astype(np.float32) + pinv[:3, 3].astype(np.float32)
    vox = _world_to_vox(w, static_affine).astype(np.float32)
    w = w + _sample_field(inverse_disp, vox)
    vox = _world_to_vox(w, static_affine).astype(np.float32)
    coeffs = ndi.spline_filter(static_clean, order=3, mode="nearest", output=np.float32)
    img = _sample(coeffs, vox, order=3, mode="nearest", prefiltered=True)
    np.maximum(img, 0, out=img)
    maps = tuple(_sample(t, vox, order=1, mode="nearest") for t in tissues)
    return img, maps


def make_registration_case(
    voxel_size: float = 2.0,
    mean_displacement_mm: float = 2.5,
    affine: bool | np.ndarray = True,
    seed: int = 0,
    smoothness_mm: float = 12.0,
    noise: float = 0.04,
    bias: float = 0.2,
    moving_voxel_size: float | tuple[float, float, float] | None = None,
    moving_shape: tuple[int, int, int] | None = None,
    skull_stripped: bool = False,
    max_rotation_deg: float = 6.0,
    max_translation_mm: float = 6.0,
    max_scale: float = 0.04,
    max_shear: float = 0.02,
) -> RegistrationCase:
    """Build a static/moving b0 pair with a known diffeomorphic + affine answer.

    Static = template anatomy (b0-like, head with skull unless ``skull_stripped``) on the
    template grid at ``voxel_size`` mm (2 mm: 98x116x94; 1 mm: 196x232x188, smooth
    upsampling), with its own bias and Rician noise. Moving = the same anatomy deformed:
    ``moving(y) = anatomy(exp(-vel)(P^-1 y))`` on the moving grid, own bias and noise.

    Parameters
    ----------
    voxel_size
        Static voxel size (mm, isotropic).
    mean_displacement_mm
        Mean nonlinear displacement over the brain (mm). 0 gives a purely affine case.
    affine
        True: random affine (:func:`random_affine` with the ``max_*`` arguments, about the
        brain centre); False: identity; or a 4x4 array (static-world -> moving-world).
    seed
        Seed; every random component is derived from it (deterministic).
    smoothness_mm
        Std (mm) of the Gaussian smoothing the velocity noise.
    noise
        Rician sigma relative to the WM signal (0.04 -> SNR 25); 0 disables.
    bias
        Bias-field strength (multiplicative, in ``[exp(-bias), exp(bias)]``); 0 disables.
    moving_voxel_size, moving_shape
        Moving grid (axis-aligned, same FOV centre as the static grid). Default: the static
        grid. ``moving_shape`` alone keeps the static voxel size.

    Returns
    -------
    RegistrationCase
        See its attributes; the answer is ``pull(x) = prealign @ (x + true_displacement(x))``.
    """
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**31, size=6)
    tis = load_template_tissues(voxel_size)
    s_aff = tis.affine
    s_shape = tis.shape
    scalp = np.zeros_like(tis.scalp) if skull_stripped else tis.scalp
    brain = tis.brain_mask

    # --- deformation (drawn on the static grid)
    info: dict = {"seed": seed}
    fwd, inv = random_diffeomorphism(s_shape, s_aff, mean_displacement_mm, smoothness_mm,
                                     rng=np.random.default_rng(seeds[0]), mask=brain,
                                     info=info)
    t2 = load_template_tissues(2.0)

    # --- affine
    if isinstance(affine, bool):
        p = (random_affine(np.random.default_rng(seeds[1]), max_rotation_deg,
                           max_translation_mm, max_scale, max_shear,
                           center_mm=_brain_centre(t2))
             if affine else np.eye(4))
    else:
        p = _as_affine(affine, "affine")

    # --- moving grid
    if moving_voxel_size is None and moving_shape is None:
        m_shape, m_aff = s_shape, s_aff.copy()
    else:
        vs = _voxel_sizes(s_aff) if moving_voxel_size is None else moving_voxel_size
        m_shape, m_aff = _grid_like(s_shape, s_aff, vs, moving_shape)

    # --- images
    static_clean = b0_like(tis.csf, tis.gm, tis.wm, scalp, noise=0.0, bias=0.0)
    moving_clean, (mc, mg, mw) = _warp_case_images(
        static_clean, (tis.csf, tis.gm, tis.wm), s_aff, inv, p, m_shape, m_aff)
    wm_signal = 1000.0 * B0_CONTRAST["WM"]
    static = add_rician_noise(
        static_clean * bias_field(s_shape, s_aff, bias, np.random.default_rng(seeds[2])),
        noise * wm_signal, np.random.default_rng(seeds[3]))
    moving = add_rician_noise(
        moving_clean * bias_field(m_shape, m_aff, bias, np.random.default_rng(seeds[4])),
        noise * wm_signal, np.random.default_rng(seeds[5]))
    info.update(voxel_size=float(voxel_size), noise=noise, bias=bias,
                skull_stripped=skull_stripped)
    return RegistrationCase(
        static=static, static_affine=s_aff.copy(), moving=moving, moving_affine=m_aff,
        prealign=p, true_displacement=fwd, true_inverse_displacement=inv,
        brain_mask=brain.copy(), static_labels=tissue_labels(tis.csf, tis.gm, tis.wm),
        moving_labels=tissue_labels(mc, mg, mw), static_clean=static_clean,
        moving_clean=moving_clean, info=info,
    )


def _brain_centre(t: TemplateTissues) -> np.ndarray:
    """Centre of mass of the brain mask, world mm."""
    com = np.array(ndi.center_of_mass(t.brain_mask.astype(np.float32)))
    return t.affine[:3, :3] @ com + t.affine[:3, 3]


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------
def dice(a: np.ndarray, b: np.ndarray, labels: Any = None) -> float | dict[int, float]:
    """Dice overlap ``2|A & B| / (|A| + |B|)``.

    Boolean inputs (or ``labels=None`` with only 0/1 values) -> a float. Label images with
    ``labels`` (an int or a list of ints; None = all non-zero labels present) -> ``{label:
    dice}`` (a float if ``labels`` is one int). Empty-vs-empty counts as 1.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")

    def _d(x: np.ndarray, y: np.ndarray) -> float:
        s = int(x.sum()) + int(y.sum())
        return 1.0 if s == 0 else 2.0 * float(np.logical_and(x, y).sum()) / s

    if labels is None:
        if a.dtype == bool or (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
            return _d(a.astype(bool), b.astype(bool))
        labels = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    if np.isscalar(labels):
        return _d(a == labels, b == labels)
    return {int(k): _d(a == k, b == k) for k in labels}


# --------------------------------------------------------------------------------------
# synthetic subjects (tutorial pair, DWI series)
# --------------------------------------------------------------------------------------
@dataclass
class SyntheticSubject:
    """A synthetic subject: template anatomy deformed then moved into a native world.

    The subject's anatomy at native world point ``y`` (mm) is the template anatomy at
    ``t = w + inverse(w)``, ``w = to_native^-1 y``: ``to_native`` (4x4) maps template (MNI)
    world -> native world, ``forward``/``inverse`` are displacements (mm) on the template
    2 mm grid (``template_affine``) with ``x + forward(x)`` the inverse of ``x + inverse(x)``.
    The true pull map from the template grid into the native world is therefore
    ``pull(x) = to_native @ (x + forward(x))``.
    """

    forward: np.ndarray
    inverse: np.ndarray
    to_native: np.ndarray
    template_affine: np.ndarray
    info: dict = field(default_factory=dict)

    def template_point_of(self, native_points_mm: np.ndarray) -> np.ndarray:
        """Template-world point (mm) whose anatomy appears at native world ``native_points_mm``."""
        pinv = np.linalg.inv(self.to_native)
        w = np.asarray(native_points_mm, dtype=np.float32) @ pinv[:3, :3].T.astype(
            np.float32) + pinv[:3, 3].astype(np.float32)
        vox = _world_to_vox(w, self.template_affine).astype(np.float32)
        return w + _sample_field(self.inverse, vox)

    def native_point_of(self, template_points_mm: np.ndarray) -> np.ndarray:
        """Native world point (mm) showing the anatomy of template-world ``template_points_mm``."""
        t = np.asarray(template_points_mm, dtype=np.float32)
        vox = _world_to_vox(t, self.template_affine).astype(np.float32)
        y = (t + _sample_field(self.forward, vox)).astype(np.float64)
        p = self.to_native
        return y @ p[:3, :3].T + p[:3, 3]

    def tissues_on(self, shape: tuple[int, int, int], grid2world: np.ndarray,
                   skull_stripped: bool = False,
                   world_motion: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Tissue maps (CSF, GM, WM, scalp; float32 [0, 1]) on a native grid (trilinear).

        ``world_motion`` (4x4, native world -> native world): the image at native point ``y``
        shows the anatomy at ``world_motion @ y`` (head moved by its inverse).
        """
        tis = load_template_tissues(2.0)
        pts = grid_world_points(shape, grid2world)
        if world_motion is not None:
            mo = _as_affine(world_motion, "world_motion")
            pts = pts @ mo[:3, :3].T + mo[:3, 3]
        t = self.template_point_of(pts)
        vox = _world_to_vox(t, tis.affine).astype(np.float32)
        out = {k: _sample(getattr(tis, k.lower()), vox, order=1, mode="nearest")
               for k in ("CSF", "GM", "WM", "scalp")}
        if skull_stripped:
            out["scalp"][:] = 0
        return out

    def b0_clean_on(self, shape: tuple[int, int, int], grid2world: np.ndarray,
                    scale: float = 1000.0, skull_stripped: bool = False) -> np.ndarray:
        """Noise-free b0 (:func:`b0_like` contrast x ``scale``) on a native grid (cubic)."""
        tis = load_template_tissues(2.0)
        scalp = np.zeros_like(tis.scalp) if skull_stripped else tis.scalp
        clean = b0_like(tis.csf, tis.gm, tis.wm, scalp, noise=0.0, bias=0.0, scale=scale)
        t = self.template_point_of(grid_world_points(shape, grid2world))
        vox = _world_to_vox(t, tis.affine).astype(np.float32)
        coeffs = ndi.spline_filter(clean, order=3, mode="nearest", output=np.float32)
        return np.maximum(_sample(coeffs, vox, order=3, mode="nearest", prefiltered=True), 0)


def make_subject(
    rng: np.random.Generator | int | None = None,
    mean_displacement_mm: float = 2.5,
    smoothness_mm: float = 12.0,
    max_rotation_deg: float = 6.0,
    max_translation_mm: float = 8.0,
    max_scale: float = 0.05,
    max_shear: float = 0.0,
    native_origin_mm: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0),
) -> SyntheticSubject:
    """Random :class:`SyntheticSubject`: a diffeomorphism of the template (mean displacement
    over the brain ``mean_displacement_mm``) and a template->native affine about the brain
    centre (:func:`random_affine`), followed by a translation ``native_origin_mm`` so the
    native world has the brain centre near ``brain_centre_MNI + native_origin_mm``."""
    rng = _rng(rng)
    tis = load_template_tissues(2.0)
    info: dict = {}
    fwd, inv = random_diffeomorphism(tis.shape, tis.affine, mean_displacement_mm,
                                     smoothness_mm, rng=rng, mask=tis.brain_mask, info=info)
    a = random_affine(rng, max_rotation_deg, max_translation_mm, max_scale, max_shear,
                      center_mm=_brain_centre(tis))
    a[:3, 3] += np.asarray(native_origin_mm, dtype=np.float64)
    return SyntheticSubject(forward=fwd, inverse=inv, to_native=a,
                            template_affine=tis.affine.copy(), info=info)


def native_grid(subject: SyntheticSubject, voxel_size: Any, shape: tuple[int, int, int],
                offset_mm: Any = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Axis-aligned grid affine (voxel -> native world mm) of ``shape`` and ``voxel_size``
    centred on the subject's brain centre (+ ``offset_mm``)."""
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    c = subject.to_native[:3, :3] @ _brain_centre(load_template_tissues(2.0)) \
        + subject.to_native[:3, 3] + np.asarray(offset_mm, dtype=np.float64)
    aff = np.diag(list(vs) + [1.0])
    aff[:3, 3] = np.round(c - vs * (np.array(shape) - 1) / 2.0, 2)
    return aff


def dwi_signal(
    tissues: dict[str, np.ndarray],
    bvals: np.ndarray,
    bvecs: np.ndarray,
    fibre_dirs: np.ndarray,
    scale: float = 1000.0,
) -> np.ndarray:
    """Noise-free DWI signal (float32 ``grid + (n_volumes,)``).

    Per tissue ``S = scale * c_tissue * exp(-b D)`` summed with the partial volumes
    (:data:`B0_CONTRAST` for ``c``): CSF ``D = 3.0e-3``, GM ``0.8e-3``, scalp ``1.0e-3``
    mm^2/s; WM is a cylindrical tensor (``1.7e-3`` along ``fibre_dirs``, unit vectors
    ``grid + (3,)``, ``0.3e-3`` across). ``bvals`` in s/mm^2, ``bvecs`` (n, 3) unit (RAS-ish,
    voxel axes as FSL for axis-aligned grids).
    """
    bvals = np.asarray(bvals, dtype=np.float64).ravel()
    bvecs = np.asarray(bvecs, dtype=np.float64).reshape(-1, 3)
    if len(bvals) != len(bvecs):
        raise ValueError("bvals and bvecs must have the same number of volumes")
    c = B0_CONTRAST
    out = np.empty(tissues["CSF"].shape + (len(bvals),), np.float32)
    for n, (b, g) in enumerate(zip(bvals, bvecs, strict=True)):
        cos2 = (fibre_dirs @ g.astype(np.float32)) ** 2
        d_wm = 0.3e-3 + (1.7e-3 - 0.3e-3) * cos2
        s = (c["CSF"] * tissues["CSF"] * np.exp(-b * 3.0e-3)
             + c["GM"] * tissues["GM"] * np.exp(-b * 0.8e-3)
             + c["WM"] * tissues["WM"] * np.exp(-b * d_wm)
             + c["scalp"] * tissues["scalp"] * np.exp(-b * 1.0e-3))
        out[..., n] = np.float32(scale) * s
    return out


def random_fibre_directions(shape: tuple[int, int, int], grid2world: np.ndarray,
                            rng: np.random.Generator | int | None = None,
                            smoothness_mm: float = 10.0) -> np.ndarray:
    """Smooth random unit vector field (float32 ``shape + (3,)``), e.g. WM fibre directions."""
    rng = _rng(rng)
    sig = smoothness_mm / _voxel_sizes(_as_affine(grid2world, "grid2world"))
    v = np.stack([ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sig)
                  for _ in range(3)], axis=-1)
    v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    return v.astype(np.float32)


@dataclass
class TutorialPair:
    """Two b0 volumes of different synthetic subjects, like DIPY's SyN tutorial data.

    ``prealign`` (what the tutorial passes to ``optimize``) = ``true_affine`` with a small
    error; ``true_affine = moving.to_native @ inv(static.to_native)`` (static-world ->
    moving-world, affine parts only). The exact answer: static voxel at world ``x`` shows the
    anatomy at moving world ``true_pull_points()[voxel]``.
    """

    static: np.ndarray
    static_affine: np.ndarray
    moving: np.ndarray
    moving_affine: np.ndarray
    prealign: np.ndarray
    true_affine: np.ndarray
    static_subject: SyntheticSubject
    moving_subject: SyntheticSubject

    def true_pull_points(self) -> np.ndarray:
        """Moving-world mm (float64, static grid + (3,)) showing each static voxel's anatomy."""
        x = grid_world_points(self.static.shape, self.static_affine)
        return self.moving_subject.native_point_of(self.static_subject.template_point_of(x))

    def save(self, out_dir: str | Path) -> tuple[Path, Path, Path]:
        """Write ``tutorial_static_b0.nii.gz``, ``tutorial_moving_b0.nii.gz`` (int16) and
        ``tutorial_prealign.txt`` (4x4, static-world -> moving-world) into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = (out / "tutorial_static_b0.nii.gz", out / "tutorial_moving_b0.nii.gz",
                 out / "tutorial_prealign.txt")
        for arr, aff, pth in ((self.static, self.static_affine, paths[0]),
                              (self.moving, self.moving_affine, paths[1])):
            _save_int16(arr, aff, pth)
        np.savetxt(paths[2], self.prealign, fmt="%.8f",
                   header="prealign: static-world -> moving-world (RAS mm), DIPY convention")
        return paths


def _save_int16(arr: np.ndarray, aff: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(np.clip(np.rint(arr), 0, 32767).astype(np.int16), aff)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=1)
    nib.save(img, str(path))


def make_tutorial_pair(seed: int = 2026) -> TutorialPair:
    """The bundled tutorial pair (``get_fnames("b0_pair")``), regenerated deterministically.

    Static: subject A, 2 mm isotropic, 81x106x76 (like Stanford HARDI's b0), head with skull.
    Moving: subject B (another deformation, ~2.5 mm mean), 2.5 x 2.5 x 3 mm, 80x96x60,
    rotated up to ~10 degrees and shifted ~10 mm. Rician noise (SNR 25 in WM), bias fields.
    ``prealign`` = true affine composed with a 1 degree / 1.5 mm error.
    """
    rng = np.random.default_rng(seed)
    subj_s = make_subject(rng, 2.5, max_rotation_deg=3.0, max_translation_mm=4.0,
                          native_origin_mm=(0.0, 17.0, -10.0))
    subj_m = make_subject(rng, 2.5, max_rotation_deg=10.0, max_translation_mm=10.0,
                          native_origin_mm=(2.0, 10.0, 0.0))
    s_shape, m_shape = (81, 106, 76), (80, 96, 60)
    s_aff = native_grid(subj_s, 2.0, s_shape, offset_mm=(0.0, -4.0, 8.0))
    m_aff = native_grid(subj_m, (2.5, 2.5, 3.0), m_shape)
    wm_signal = 1000.0 * B0_CONTRAST["WM"]
    imgs = []
    for subj, shp, aff in ((subj_s, s_shape, s_aff), (subj_m, m_shape, m_aff)):
        clean = subj.b0_clean_on(shp, aff)
        img = clean * bias_field(shp, aff, 0.2, rng)
        imgs.append(add_rician_noise(img, 0.04 * wm_signal, rng))
    true_aff = subj_m.to_native @ np.linalg.inv(subj_s.to_native)
    err = random_affine(rng, 1.0, 1.5, 0.0, 0.0, center_mm=s_aff[:3, :3] @ (
        (np.array(s_shape) - 1) / 2) + s_aff[:3, 3])
    prealign = true_aff @ err
    return TutorialPair(static=imgs[0], static_affine=s_aff, moving=imgs[1],
                        moving_affine=m_aff, prealign=prealign, true_affine=true_aff,
                        static_subject=subj_s, moving_subject=subj_m)


#: gradient table of the bundled ``small_dwi`` series (b in s/mm^2, unit bvecs).
SMALL_DWI_BVALS = np.array([0, 1000, 1000, 0, 1000, 1000, 1000, 1000], dtype=float)


def _unit_dirs(n: int) -> np.ndarray:
    """``n`` well spread unit vectors (Fibonacci half-sphere)."""
    i = np.arange(n) + 0.5
    z = 1 - i / n
    r = np.sqrt(1 - z * z)
    phi = np.pi * (1 + 5**0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def make_small_dwi(seed: int = 7, voxel_size: float = 4.0,
                   shape: tuple[int, int, int] = (40, 48, 40)) -> tuple[
                       np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bundled tiny 4-D DWI (``get_fnames("small_dwi")``): 2 b0 + 6 b=1000 volumes.

    Returns ``(data float32 grid+(8,), affine, bvals (8,), bvecs (8, 3))``; one synthetic
    subject on a 4 mm grid, SNR ~ 25 in WM on b0, no motion.
    """
    rng = np.random.default_rng(seed)
    subj = make_subject(rng, 2.5, max_rotation_deg=4.0, max_translation_mm=5.0)
    aff = native_grid(subj, voxel_size, shape)
    tis = subj.tissues_on(shape, aff)
    bvals = SMALL_DWI_BVALS.copy()
    bvecs = np.zeros((len(bvals), 3))
    bvecs[bvals > 0] = _unit_dirs(int((bvals > 0).sum()))
    fib = random_fibre_directions(shape, aff, rng)
    scale = 250.0
    sig = dwi_signal(tis, bvals, bvecs, fib, scale=scale)
    sig *= bias_field(shape, aff, 0.15, rng)[..., None]
    data = add_rician_noise(sig, 0.04 * scale * B0_CONTRAST["WM"], rng)
    return data, aff, bvals, bvecs


def write_bundled_examples(out_dir: str | Path | None = None) -> dict[str, Path]:
    """(Re)write the bundled example files (tutorial pair, small DWI) into ``out_dir``
    (default: the ``synflow/data`` folder). Deterministic. Run: ``python -m
    synflow.data.phantom``."""
    out = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parent
    st, mv, pre = make_tutorial_pair().save(out)
    data, aff, bvals, bvecs = make_small_dwi()
    dwi = out / "small_dwi.nii.gz"
    _save_int16(data, aff, dwi)
    bval = out / "small_dwi.bval"
    bvec = out / "small_dwi.bvec"
    np.savetxt(bval, bvals[None], fmt="%d")
    np.savetxt(bvec, bvecs.T, fmt="%.6f")
    return {"tutorial_static": st, "tutorial_moving": mv, "tutorial_prealign": pre,
            "small_dwi": dwi, "small_dwi_bval": bval, "small_dwi_bvec": bvec}


if __name__ == "__main__":
    for k, p in write_bundled_examples().items():
        print(f"{k:18s} {p.name:32s} {p.stat().st_size / 1024:7.0f} KiB")
