"""DIPY's one-call ``register_dwi_to_template`` and ``resample`` (``dipy.align._public``).

Same signatures, defaults and meaning as DIPY 1.12, with two documented differences:

* ``template=None`` uses synflow's bundled 2 mm MNI152NLin2009aSym **b0** template
  (:func:`synflow.data.get_template`; DIPY downloads its MNI T2 template);
* ``gtab`` may be a DIPY ``GradientTable`` or anything with a boolean ``b0s_mask``
  attribute, a ``(bvals, bvecs)`` pair of arrays or of file paths (FSL text files), or a
  1-D sequence of b-values; b0 volumes are those with ``b <= 50`` s/mm^2 (DIPY's default
  ``b0_threshold``) -- their mean is what is registered.

Matrices map **static-world -> moving-world** points (mm), as everywhere in synflow.
"""

from __future__ import annotations

import os
from typing import Any

import nibabel as nib
import numpy as np

from synflow.align._inputs import check_image
from synflow.align.imaffine import AffineMap

__all__ = ["B0_THRESHOLD", "b0_mask", "register_dwi_to_template", "resample"]

#: b-values (s/mm^2) at or below this count as b0 (DIPY's ``gradient_table`` default).
B0_THRESHOLD = 50.0


def read_img_arr_or_path(data: Any, affine: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` from an array + affine, a nibabel image or a path (DIPY's rule:
    an ``affine`` given with an image or a path overrides the stored one)."""
    if isinstance(data, (str, os.PathLike)):
        data = nib.load(os.fspath(data))
    if hasattr(data, "affine") and hasattr(data, "dataobj"):
        aff = data.affine if affine is None else affine
        data = np.asarray(data.dataobj)
    else:
        aff = affine
        data = np.asarray(data)
    if aff is None:
        raise ValueError(f"{name}_affine is required when {name} is given as an array")
    aff = np.asarray(aff, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"{name}_affine must be a 4x4 matrix, got shape {aff.shape}")
    return data, aff


def _read_vector(v: Any, name: str) -> np.ndarray:
    try:
        if isinstance(v, (str, os.PathLike)):
            return np.loadtxt(os.fspath(v), dtype=np.float64)
        return np.asarray(v, dtype=np.float64)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{name}: cannot read b-values ({exc})") from exc


def b0_mask(gtab: Any, n_volumes: int) -> np.ndarray:
    """Boolean b0 mask of the ``n_volumes`` volumes described by ``gtab`` (see module)."""
    if hasattr(gtab, "b0s_mask"):
        mask = np.asarray(gtab.b0s_mask, dtype=bool).ravel()
    else:
        pair = isinstance(gtab, (list, tuple)) and len(gtab) == 2 and (
            isinstance(gtab[0], (str, os.PathLike)) or np.ndim(gtab[0]) >= 1)
        if pair:
            bvals = _read_vector(gtab[0], "gtab[0] (bvals)")
        elif isinstance(gtab, (list, tuple, np.ndarray)):
            bvals = _read_vector(gtab, "gtab")
        else:
            raise ValueError("gtab should be a GradientTable object (or an object with "
                             "b0s_mask), a tuple of (bvals, bvecs) or a sequence of b-values, "
                             f"got {type(gtab).__name__}")
        bvals = np.atleast_1d(bvals).ravel()
        if not np.all(np.isfinite(bvals)):
            raise ValueError("gtab: the b-values contain non-finite entries")
        mask = bvals <= B0_THRESHOLD
    if mask.size != n_volumes:
        raise ValueError(f"gtab describes {mask.size} volumes but dwi has {n_volumes} "
                         "(last axis)")
    if not mask.any():
        raise ValueError(f"gtab has no b0 volume (b <= {B0_THRESHOLD:g} s/mm^2)")
    return mask


def register_dwi_to_template(dwi: Any, gtab: Any, *, dwi_affine: np.ndarray | None = None,
                             template: Any = None, template_affine: np.ndarray | None = None,
                             reg_method: str = "syn", **reg_kwargs: Any):
    """Register DWI data to a template through the mean of its b0 volumes (DIPY 1.12).

    ``dwi``: 4-D array (+ ``dwi_affine``), nibabel image or path.  ``template``: 3-D
    image (default: synflow's MNI b0 template).  ``reg_method``: ``"syn"``
    (:func:`synflow.align.syn_registration`) or ``"aff"``
    (:func:`synflow.align.affine_registration`); ``reg_kwargs`` go to that function.
    Returns ``(warped_b0, mapping)``: the mean b0 on the template grid and a
    ``DiffeomorphicMap`` (syn) or the 4x4 template-world -> dwi-world matrix (aff).
    """
    from synflow.align._affine_public import affine_registration
    from synflow.align._syn_public import syn_registration

    method = str(reg_method).lower()
    if method not in ("syn", "aff"):
        raise ValueError(f"reg_method should be one of 'aff' or 'syn', but you provided "
                         f"{reg_method!r}")
    dwi_data, dwi_affine = read_img_arr_or_path(dwi, dwi_affine, "dwi")
    if dwi_data.ndim != 4:
        raise ValueError(f"dwi must be a 4-D series (volumes on the last axis), got shape "
                         f"{dwi_data.shape}")
    if template is None:
        from synflow.data import get_template
        template = get_template("b0")
    template_data, template_affine = read_img_arr_or_path(template, template_affine,
                                                          "template")
    template_data = check_image(template_data, "template", (3,))
    mask = b0_mask(gtab, dwi_data.shape[-1])
    mean_b0 = np.mean(dwi_data[..., mask], -1)
    register = syn_registration if method == "syn" else affine_registration
    return register(mean_b0, template_data, moving_affine=dwi_affine,
                    static_affine=template_affine, **reg_kwargs)


def resample(moving: Any, static: Any, *, moving_affine: np.ndarray | None = None,
             static_affine: np.ndarray | None = None,
             between_affine: np.ndarray | None = None) -> nib.Nifti1Image:
    """Resample ``moving`` onto the grid of ``static`` (DIPY 1.12), linear interpolation.

    ``between_affine`` (static-world -> moving-world mm, default identity) is applied in
    between.  Returns a ``Nifti1Image`` with the static affine.
    """
    static_data, static_affine = read_img_arr_or_path(static, static_affine, "static")
    moving_data, moving_affine = read_img_arr_or_path(moving, moving_affine, "moving")
    moving_data = check_image(moving_data, "moving", (3,))
    if static_data.ndim < 3:
        raise ValueError(f"static must be 3-D (or 4-D), got shape {static_data.shape}")
    shape = static_data.shape[:3]
    amap = AffineMap(np.eye(4) if between_affine is None else between_affine,
                     domain_grid_shape=shape, domain_grid2world=static_affine,
                     codomain_grid_shape=moving_data.shape, codomain_grid2world=moving_affine)
    return nib.Nifti1Image(amap.transform(moving_data), static_affine)
