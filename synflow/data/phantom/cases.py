"""Registration cases with the exact answer, and how to score an estimate against it.

* :class:`RegistrationCase`, :func:`make_registration_case` -- a static/moving b0 pair whose
  true pull map is ``prealign @ (x + true_displacement(x))``;
* :func:`dice` -- overlap of masks or label images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from synflow.align.affine_checks import check_affine
from synflow.data.phantom.contrast import B0_CONTRAST, add_rician_noise, b0_like, bias_field
from synflow.data.phantom.deformations import random_affine, random_diffeomorphism
from synflow.data.phantom.grid import (
    _check_shape,
    grid_world_points,
    sample_field,
    sample_image,
    voxel_sizes,
    world_to_vox,
)
from synflow.data.phantom.template import brain_centre, load_template_tissues, tissue_labels

__all__ = ["RegistrationCase", "make_registration_case", "dice", "endpoint_error_stats"]


def endpoint_error_stats(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                         name: str = "estimate",
                         nonfinite: str = "has non-finite values in the mask"
                         ) -> dict[str, float]:
    """``{"mean", "median", "p95", "max"}`` of ``|estimate - truth|`` (mm) over ``mask``.

    ``estimate``, ``truth``: float ``grid + (3,)`` points (world mm); ``mask``: bool ``grid``.
    Raises ValueError ``f"{name} {nonfinite}"`` if an error in the mask is not finite.
    """
    err = np.sqrt(((estimate - truth)[mask] ** 2).sum(-1))
    if not np.all(np.isfinite(err)):
        raise ValueError(f"{name} {nonfinite}")
    return {"mean": float(err.mean()), "median": float(np.median(err)),
            "p95": float(np.percentile(err, 95)), "max": float(err.max())}

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
        return sample_field(field, world_to_vox(points, disp_g2w),
                             mode="grid-constant").astype(np.float64)

    if is_inv:
        p_from_map = None if q is None else np.linalg.inv(np.asarray(q, dtype=np.float64))
        if prealign is None:
            p = np.eye(4) if p_from_map is None else p_from_map
        else:
            p = check_affine(prealign, "prealign")
            if p_from_map is not None and not np.allclose(p, p_from_map, atol=1e-4):
                raise ValueError(
                    "prealign does not match inv(mapping.prealign); pass the prealign "
                    "(static-world -> moving-world) that was given to optimize()"
                )
        y = x + sample_at(x)
        return y @ p[:3, :3].T + p[:3, 3]
    qq = np.eye(4) if q is None else np.asarray(q, dtype=np.float64)
    if prealign is not None and not np.allclose(check_affine(prealign, "prealign"), qq,
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
        return endpoint_error_stats(est, self.true_pull_points(), m, "pull_points_mm",
                                    "contains non-finite values in the mask")

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
        a = check_affine(affine, "affine")
        return self.endpoint_error(self.static_world_points @ a[:3, :3].T + a[:3, 3])

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
    vs0 = voxel_sizes(affine)
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
    vox = world_to_vox(w, static_affine).astype(np.float32)
    w = w + sample_field(inverse_disp, vox)
    vox = world_to_vox(w, static_affine).astype(np.float32)
    coeffs = ndi.spline_filter(static_clean, order=3, mode="nearest", output=np.float32)
    img = sample_image(coeffs, vox, order=3, mode="nearest", prefiltered=True)
    np.maximum(img, 0, out=img)
    maps = tuple(sample_image(t, vox, order=1, mode="nearest") for t in tissues)
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
    deform = random_diffeomorphism(s_shape, s_aff, mean_displacement_mm, smoothness_mm,
                                   rng=np.random.default_rng(seeds[0]), mask=brain)
    info: dict = {"seed": seed, **deform.diagnostics()}
    fwd, inv = deform.forward, deform.inverse
    t2 = load_template_tissues(2.0)

    # --- affine
    if isinstance(affine, bool):
        p = (random_affine(np.random.default_rng(seeds[1]), max_rotation_deg,
                           max_translation_mm, max_scale, max_shear,
                           center_mm=brain_centre(t2))
             if affine else np.eye(4))
    else:
        p = check_affine(affine, "affine")

    # --- moving grid
    if moving_voxel_size is None and moving_shape is None:
        m_shape, m_aff = s_shape, s_aff.copy()
    else:
        vs = voxel_sizes(s_aff) if moving_voxel_size is None else moving_voxel_size
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

