"""Convenience affine registration calls (DIPY's ``dipy.align._public`` affine part).

All matrices returned map **static-world -> moving-world** points (mm); this is what
``AffineMap.transform`` uses to pull the moving image onto the static grid and what SyN
takes as ``prealign``.

* :func:`affine_registration` and the step functions :func:`center_of_mass`,
  :func:`translation`, :func:`rigid`, :func:`affine` keep DIPY 1.12's signatures, defaults
  and results (DIPY's optimiser settings: ``level_iters=[1000, 500, 100]``, dense MI);
* :func:`estimate_prealign` is synflow's fast recommended chain for feeding SyN
  (:data:`RECOMMENDED`): the same pipeline, pyramid and dense MI, but the full-resolution
  level is used only by the last (affine) step, with a budget of 30 evaluations, smaller
  budgets at the coarse levels, a tighter gradient tolerance (``gtol=1e-5``) so that the
  few evaluations go further, and sparse MI only on levels larger than 1.5 M voxels
  (e.g. 1 mm data).  The scale spaces are built once for the whole chain.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import nibabel as nib
import numpy as np

from synflow.align._inputs import check_grid2world as _grid2world
from synflow.align._inputs import check_image as _check_image
from synflow.align._inputs import check_mask as _check_mask
from synflow.align.affine_checks import check_affine
from synflow.align.imaffine import (
    AffineMap,
    AffineRegistration,
    MutualInformationMetric,
    transform_centers_of_mass,
)
from synflow.align.transforms import (
    AffineTransform3D,
    RigidIsoScalingTransform3D,
    RigidScalingTransform3D,
    RigidTransform3D,
    TranslationTransform3D,
)

__all__ = [
    "affine_registration",
    "center_of_mass",
    "translation",
    "rigid",
    "rigid_isoscaling",
    "rigid_scaling",
    "affine",
    "estimate_prealign",
    "RECOMMENDED",
]

affine_metric_dict = {"MI": MutualInformationMetric}

_TRANSFORMS = {
    "translation": TranslationTransform3D,
    "rigid": RigidTransform3D,
    "rigid_isoscaling": RigidIsoScalingTransform3D,
    "rigid_scaling": RigidScalingTransform3D,
    "affine": AffineTransform3D,
}

#: synflow's recommended settings for :func:`estimate_prealign` (per pipeline step).
#: ``level_iters`` are L-BFGS-B function-evaluation budgets, coarsest level first; a 0
#: skips that level.  Levels with more than ``max_samples`` static voxels (in the mask) use
#: DIPY's sparse sampling with ``sampling_proportion = max_samples / n`` (jittered regular
#: grid, masks honoured); smaller levels, e.g. every level of a 2 mm b0, stay dense.
RECOMMENDED: dict[str, Any] = {
    "factors": [4, 2, 1],
    "sigmas": [3.0, 1.0, 0.0],
    "level_iters": {
        "translation": [200, 50, 0],
        "rigid": [200, 50, 0],
        "rigid_isoscaling": [200, 50, 0],
        "rigid_scaling": [200, 50, 0],
        "affine": [300, 100, 30],
    },
    "max_samples": 1_500_000,
    "options": {"gtol": 1e-5, "ftol": 1e-7},
    "nbins": 32,
}


def _load(img: Any, affine: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Array + grid2world from an array, a ``Nifti1Image`` or a path."""
    if isinstance(img, (str, os.PathLike)):
        img = nib.load(os.fspath(img))
    if hasattr(img, "get_fdata") and hasattr(img, "affine"):
        data = np.asarray(img.dataobj)
        aff = img.affine if affine is None else affine
    else:
        data = img
        aff = affine
    data = _check_image(data, name, (3,))
    if aff is None:
        raise ValueError(f"{name}_affine is required when {name} is given as an array")
    return data, _grid2world(aff, 3, f"{name}_affine")


def _center_of_mass_affine(static, static_affine, moving, moving_affine, static_mask,
                           moving_mask) -> np.ndarray:
    s = static if static_mask is None else static * static_mask
    m = moving if moving_mask is None else moving * moving_mask
    for name, a in (("static", s), ("moving", m)):
        if not float(np.abs(a).sum()) > 0:
            raise ValueError(f"{name} is zero everywhere (inside its mask): "
                             "centre of mass undefined")
    return transform_centers_of_mass(s, static_affine, m, moving_affine).affine


def affine_registration(moving: Any, static: Any, moving_affine: np.ndarray | None = None,
                        static_affine: np.ndarray | None = None,
                        pipeline: Sequence[str | Callable] | None = None,
                        starting_affine: np.ndarray | None = None, metric: str = "MI",
                        level_iters: Sequence[int] | None = None,
                        sigmas: Sequence[float] | None = None,
                        factors: Sequence[int] | None = None, ret_metric: bool = False,
                        moving_mask: np.ndarray | None = None,
                        static_mask: np.ndarray | None = None,
                        optimizer_options: dict | None = None, **metric_kwargs: Any):
    """Affine registration of ``moving`` to ``static`` through a gradual pipeline (DIPY API).

    Parameters
    ----------
    moving, static : 3-D array, ``Nifti1Image`` or path.
    moving_affine, static_affine : 4x4 voxel -> world (mm) matrices; required for arrays,
        override the NIfTI affine otherwise.
    pipeline : steps run left to right, names or the step functions of this module; default
        ``['center_of_mass', 'translation', 'rigid', 'affine']`` (also ``rigid_isoscaling``,
        ``rigid_scaling``).
    starting_affine : 4x4 static-world -> moving-world initial guess (default identity).
    metric : only ``'MI'``; ``**metric_kwargs`` go to :class:`MutualInformationMetric`
        (``nbins``, ``sampling_proportion``).
    level_iters, sigmas, factors, optimizer_options : :class:`AffineRegistration` settings
        (DIPY defaults ``[1000, 500, 100]``, ``[3, 1, 0]``, ``[4, 2, 1]``).
    moving_mask, static_mask : restrict the metric (and the centre of mass) to these voxels.

    Returns
    -------
    resampled : float64 array on the static grid, ``moving`` pulled through the result.
    affine : 4x4 float64, **static-world -> moving-world** (mm).
    (xopt, fopt) of the last optimised step as well when ``ret_metric``.
    """
    pipeline = list(pipeline or ["center_of_mass", "translation", "rigid", "affine"])
    level_iters = [1000, 500, 100] if level_iters is None else list(level_iters)
    sigmas = list(sigmas or [3, 1, 0.0])
    factors = list(factors or [4, 2, 1])
    static, static_affine = _load(static, static_affine, "static")
    moving, moving_affine = _load(moving, moving_affine, "moving")
    start = np.eye(4) if starting_affine is None else check_affine(
        starting_affine, "starting_affine", 3)
    if metric not in affine_metric_dict:
        raise ValueError(f"metric must be one of {list(affine_metric_dict)}, got {metric!r}")
    for fi, func in enumerate(pipeline):
        if callable(func):
            for key, fn in _STEP_FUNCS.items():
                if func is fn:
                    pipeline[fi] = func = key
                    break
        if not isinstance(func, str) or func not in _STEP_FUNCS:
            raise ValueError(f"pipeline[{fi}] must be one of {list(_STEP_FUNCS)}, got {func!r}")
    if pipeline == ["center_of_mass"] and ret_metric:
        raise ValueError("center of mass registration cannot return any quality metric.")
    smask = _check_mask(static_mask, static.shape, "static_mask")
    mmask = _check_mask(moving_mask, moving.shape, "moving_mask")
    use_metric = affine_metric_dict[metric](**metric_kwargs)
    affreg = AffineRegistration(metric=use_metric, level_iters=level_iters, sigmas=sigmas,
                                factors=factors, options=optimizer_options, verbosity=0)
    affreg._cache = {}
    xopt = fopt = None
    for func in pipeline:
        if func == "center_of_mass":
            if starting_affine is not None:
                warnings.warn("starting_affine overwritten by center_of_mass transform",
                              UserWarning, stacklevel=2)
            start = _center_of_mass_affine(static, static_affine, moving, moving_affine,
                                           smask, mmask)
            continue
        xform, xopt, fopt = affreg.optimize(
            static, moving, _TRANSFORMS[func](), None, static_grid2world=static_affine,
            moving_grid2world=moving_affine, starting_affine=start, ret_metric=True,
            static_mask=smask, moving_mask=mmask)
        start = xform.affine
    final = np.array(start, dtype=np.float64)
    amap = AffineMap(final, domain_grid_shape=static.shape, domain_grid2world=static_affine,
                     codomain_grid_shape=moving.shape, codomain_grid2world=moving_affine)
    resampled = amap.transform(moving)
    if ret_metric:
        return resampled, final, xopt, fopt
    return resampled, final


center_of_mass = partial(affine_registration, pipeline=["center_of_mass"])
center_of_mass.__doc__ = "Centre-of-mass translation. Based on :func:`affine_registration`."
translation = partial(affine_registration, pipeline=["translation"])
translation.__doc__ = "Translation registration. Based on :func:`affine_registration`."
rigid = partial(affine_registration, pipeline=["rigid"])
rigid.__doc__ = "Rigid registration. Based on :func:`affine_registration`."
rigid_isoscaling = partial(affine_registration, pipeline=["rigid_isoscaling"])
rigid_isoscaling.__doc__ = "Rigid + isotropic scaling. Based on :func:`affine_registration`."
rigid_scaling = partial(affine_registration, pipeline=["rigid_scaling"])
rigid_scaling.__doc__ = "Rigid + per-axis scaling. Based on :func:`affine_registration`."
affine = partial(affine_registration, pipeline=["affine"])
affine.__doc__ = "Full affine registration. Based on :func:`affine_registration`."

_STEP_FUNCS: dict[str, Callable] = {
    "center_of_mass": center_of_mass,
    "translation": translation,
    "rigid_isoscaling": rigid_isoscaling,
    "rigid_scaling": rigid_scaling,
    "rigid": rigid,
    "affine": affine,
}


def estimate_prealign(static: np.ndarray, moving: np.ndarray, static_affine: np.ndarray,
                      moving_affine: np.ndarray, static_mask: np.ndarray | None = None,
                      moving_mask: np.ndarray | None = None,
                      pipeline: Sequence[str] = ("center_of_mass", "translation", "rigid",
                                                 "affine"),
                      **kw: Any) -> np.ndarray:
    """Fast affine pre-alignment for SyN: 4x4 **static-world -> moving-world** (mm).

    Runs ``pipeline`` like :func:`affine_registration` with synflow's recommended settings
    (:data:`RECOMMENDED`): small evaluation budgets, the full-resolution level only for the
    last step, and MI sampled (jittered regular grid, masks honoured) only on levels with
    more than ``max_samples`` voxels.  Pass the result as ``prealign`` to SyN.

    Parameters
    ----------
    static, moving : 3-D arrays; static_affine, moving_affine : voxel -> world mm.
    static_mask, moving_mask : optional masks (same shape as their image).
    pipeline : steps among ``center_of_mass``, ``translation``, ``rigid``,
        ``rigid_isoscaling``, ``rigid_scaling``, ``affine``.
    **kw : overrides of :data:`RECOMMENDED` keys (``level_iters`` may be a list, applied to
        every step, or a dict per step; ``max_samples=None`` always uses dense MI) and
        ``starting_affine`` (4x4, static-world -> moving-world, replaced by a
        ``center_of_mass`` step).

    Raises
    ------
    ValueError
        empty/constant/non-finite images, bad affines or masks, or no overlap.
    """
    unknown = set(kw) - set(RECOMMENDED) - {"starting_affine"}
    if unknown:
        raise TypeError(f"estimate_prealign got unexpected keyword(s) {sorted(unknown)}")
    cfg = {**RECOMMENDED, **{k: v for k, v in kw.items() if k != "starting_affine"}}
    static, static_affine = _load(static, static_affine, "static")
    moving, moving_affine = _load(moving, moving_affine, "moving")
    smask = _check_mask(static_mask, static.shape, "static_mask")
    mmask = _check_mask(moving_mask, moving.shape, "moving_mask")
    start = kw.get("starting_affine")
    start = np.eye(4) if start is None else check_affine(start, "starting_affine", 3)
    pipeline = list(pipeline)
    for fi, step in enumerate(pipeline):
        if step not in _STEP_FUNCS:
            raise ValueError(f"pipeline[{fi}] must be one of {list(_STEP_FUNCS)}, got {step!r}")
    cache: dict = {}
    for step in pipeline:
        if step == "center_of_mass":
            start = _center_of_mass_affine(static, static_affine, moving, moving_affine,
                                           smask, mmask)
            continue
        iters = cfg["level_iters"]
        iters = list(iters[step] if isinstance(iters, dict) else iters)
        metric = _LevelSampledMI(nbins=cfg["nbins"], max_samples=cfg["max_samples"])
        reg = AffineRegistration(metric=metric, level_iters=iters, sigmas=cfg["sigmas"],
                                 factors=cfg["factors"], options=cfg["options"], verbosity=0)
        reg._cache = cache
        amap = reg.optimize(static, moving, _TRANSFORMS[step](), None,
                            static_grid2world=static_affine, moving_grid2world=moving_affine,
                            starting_affine=start, static_mask=smask, moving_mask=mmask)
        start = amap.affine
    out = np.array(start, dtype=np.float64)
    check_affine(out, "estimated prealign", 3)
    return out


class _LevelSampledMI(MutualInformationMetric):
    """MI that is dense on levels with <= ``max_samples`` voxels and sampled above."""

    def __init__(self, nbins: int = 32, max_samples: int | None = 1_500_000) -> None:
        super().__init__(nbins=nbins, sampling_proportion=None)
        if max_samples is not None and int(max_samples) < 1000:
            raise ValueError(f"max_samples must be None or >= 1000, got {max_samples!r}")
        self.max_samples = None if max_samples is None else int(max_samples)

    def setup(self, transform: Any, static: np.ndarray, moving: np.ndarray,
              static_grid2world: np.ndarray | None = None,
              moving_grid2world: np.ndarray | None = None,
              starting_affine: np.ndarray | None = None, static_mask: np.ndarray | None = None,
              moving_mask: np.ndarray | None = None) -> None:
        n = int(np.size(static) if static_mask is None else np.count_nonzero(static_mask))
        self.sampling_proportion = None
        if self.max_samples is not None and n > self.max_samples:
            self.sampling_proportion = self.max_samples / n
        super().setup(transform, static, moving, static_grid2world=static_grid2world,
                      moving_grid2world=moving_grid2world, starting_affine=starting_affine,
                      static_mask=static_mask, moving_mask=moving_mask)
