"""``syn_registration``: DIPY's one-call SyN (``dipy.align.syn_registration``)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from synflow.align._inputs import check_image
from synflow.align.imwarp import DiffeomorphicMap, SymmetricDiffeomorphicRegistration
from synflow.align.metrics import CCMetric, EMMetric, SSDMetric

_METRICS = {"CC": CCMetric, "EM": EMMetric, "SSD": SSDMetric}


def _image_and_affine(img, affine, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Accept an array (+ affine), a nibabel image or a path, like DIPY's helpers."""
    if isinstance(img, (str, bytes)) or hasattr(img, "__fspath__"):
        img = nib.load(img)
    if hasattr(img, "affine") and hasattr(img, "get_fdata"):
        # DIPY's rule: an affine given with an image overrides the stored one
        return (np.asarray(img.dataobj, dtype=np.float32),
                img.affine if affine is None else np.asarray(affine, dtype=np.float64))
    return np.asarray(img), affine


def syn_registration(moving, static, *, moving_affine=None, static_affine=None,
                     step_length: float = 0.25, metric: str = "CC", dim: int = 3,
                     level_iters=None, prealign=None, **metric_kwargs
                     ) -> tuple[np.ndarray, DiffeomorphicMap]:
    """Register ``moving`` to ``static`` with SyN; returns ``(warped_moving, mapping)``.

    Same signature and defaults as DIPY 1.12 (``level_iters`` defaults to ``[10, 10, 5]``,
    coarsest first; ``prealign`` maps static-world to moving-world mm).  ``moving`` and
    ``static`` may be arrays (with their affines), nibabel images or file names.
    ``metric`` is 'CC', 'EM' or 'SSD' (DIPY's choices); ``metric_kwargs`` go to
    the metric's constructor.  An affine given with a nibabel image or path overrides the
    stored one (DIPY's rule); an array without its affine means identity (DIPY raises).
    """
    key = str(metric).upper()
    if key not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    moving, moving_affine = _image_and_affine(moving, moving_affine, "moving")
    static, static_affine = _image_and_affine(static, static_affine, "static")
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    moving = check_image(moving, "moving", (dim,))
    static = check_image(static, "static", (dim,))
    sdr = SymmetricDiffeomorphicRegistration(_METRICS[key](dim, **metric_kwargs),
                                             level_iters=level_iters or [10, 10, 5],
                                             step_length=step_length)
    mapping = sdr.optimize(static, moving, static_grid2world=static_affine,
                           moving_grid2world=moving_affine, prealign=prealign)
    return mapping.transform(moving), mapping
