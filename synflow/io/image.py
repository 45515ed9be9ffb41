"""NIfTI input/output, mirroring ``dipy.io.image``, plus synflow's atomic-write helper.

* :func:`load_nifti` / :func:`save_nifti` keep DIPY's signatures and return values; failures
  raise :class:`NiftiError` (a ``ValueError``, also an ``OSError``) naming the file and the cause
  (missing, not NIfTI, truncated / unreadable voxel data).
* :func:`load_volume` is synflow's one loader for a single volume (float32, a trailing
  length-1 fourth axis dropped, plus the affine and the image); :func:`nifti_like` builds
  an image on another image's grid (affine, sform/qform codes, units).
* :func:`affine_source` / :func:`affine_shear` say which header field gives the affine
  (nibabel's ``get_best_affine`` rule) and whether it holds shear, which a qform cannot.
* :func:`atomic_path` is the helper every synflow writer uses: it yields a hidden temporary path
  in the destination directory (same extension, so nibabel picks the same format) and
  ``os.replace``-s it onto the destination only if the block succeeds, so readers never see a
  partial file.  :func:`atomic_write_nifti` saves a nibabel image that way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from synflow._atomic import atomic_path, split_ext
from synflow.align.affine_checks import check_affine

__all__ = [
    "NiftiError",
    "SHEAR_TOLERANCE",
    "affine_shear",
    "affine_source",
    "atomic_path",
    "atomic_write_nifti",
    "check_real",
    "load_nifti",
    "load_nifti_data",
    "load_volume",
    "nifti_like",
    "save_nifti",
    "split_ext",
]

#: Largest |cosine| between two voxel axes (world directions) still called orthogonal.
#: Stored sforms are float32: rounding gives ~1e-7; scanners' oblique sforms are orthogonal.
SHEAR_TOLERANCE: float = 1e-4


class NiftiError(ValueError, OSError):
    """A NIfTI file is missing, unreadable or truncated (message names the file)."""


def affine_source(header: nib.Nifti1Header) -> str:
    """Which header field ``img.affine`` comes from: ``"sform"``, ``"qform"`` or ``"fallback"``.

    nibabel's rule (``Nifti1Header.get_best_affine``): the sform when ``sform_code > 0``,
    else the qform when ``qform_code > 0``, else the fall-back (voxel sizes only, no
    orientation; ``get_base_affine``).  Non-NIfTI headers give ``"fallback"``.
    """
    try:
        if int(header["sform_code"]) > 0:
            return "sform"
        if int(header["qform_code"]) > 0:
            return "qform"
    except (KeyError, ValueError, TypeError):
        pass
    return "fallback"


def affine_shear(affine: np.ndarray) -> float:
    """Shear of an affine: largest |cosine| between the world directions of two voxel axes.

    0 for a rotation times voxel sizes (what a qform can store); a qform cannot hold shear,
    so an sform with ``affine_shear > SHEAR_TOLERANCE`` has no equal qform.
    """
    lin = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(lin, axis=0)
    if not np.all(np.isfinite(lin)) or np.any(norms == 0):
        return float("nan")
    unit = lin / norms
    gram = unit.T @ unit
    return float(np.abs(gram - np.diag(np.diag(gram))).max())


def check_real(img: nib.spatialimages.SpatialImage, fname: str | os.PathLike) -> None:
    """Raise :class:`NiftiError` naming ``fname`` if its voxels are complex (or RGB records)."""
    dtype = np.dtype(img.get_data_dtype())
    if dtype.kind == "c":
        raise NiftiError(f"{os.fspath(fname)}: complex data is not supported (data type "
                         f"{dtype}); give the magnitude image")
    if dtype.kind not in "biuf":
        raise NiftiError(f"{os.fspath(fname)}: data type {dtype} is not supported (synflow "
                         "reads real-valued scalar images)")


def atomic_write_nifti(img: nib.spatialimages.SpatialImage, fname: str | os.PathLike) -> Path:
    """Save a nibabel image to ``fname`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(fname) as tmp:
        nib.save(img, str(tmp))
    return Path(fname)


def _open_nifti(fname: str | os.PathLike, **kwargs: Any) -> nib.spatialimages.SpatialImage:
    """``nib.load(fname, **kwargs)``; :class:`NiftiError` naming the file if that fails."""
    path = Path(os.fspath(fname))
    if not path.exists():
        raise NiftiError(f"NIfTI file not found: {path}")
    if path.is_dir():
        raise NiftiError(f"expected a NIfTI file, got a directory: {path}")
    try:
        return nib.load(str(path), **kwargs)
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, OSError, ...
        raise NiftiError(f"cannot read NIfTI file {path}: {type(exc).__name__}: {exc}") from exc


def _read_data(img: nib.spatialimages.SpatialImage, fname: str | os.PathLike,
               as_ndarray: bool, dtype: Any = None) -> Any:
    if not as_ndarray:
        return img.dataobj
    try:
        return np.asanyarray(img.dataobj, dtype=dtype)
    except Exception as exc:  # truncated gzip / short file: EOFError, OSError, ValueError
        raise NiftiError(
            f"cannot read the voxel data of {os.fspath(fname)} (truncated or corrupt file?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def load_nifti(fname: str | os.PathLike, return_img: bool = False, return_voxsize: bool = False,
               return_coords: bool = False, as_ndarray: bool = True) -> tuple:
    """Load a NIfTI file, as ``dipy.io.image.load_nifti``.

    Parameters
    ----------
    fname : str or Path
        NIfTI-1/2 file (``.nii`` or ``.nii.gz``).
    return_img, return_voxsize, return_coords : bool
        Also return the nibabel image, the voxel size (mm, first three zooms) and the axis codes
        (``nib.aff2axcodes``), in that order.
    as_ndarray : bool
        Read the voxels into an array (scaled by ``scl_slope``/``scl_inter`` as nibabel does);
        ``False`` returns the lazy ``img.dataobj``.

    Returns
    -------
    tuple
        ``(data, affine[, img][, vox_size][, axcodes])``; ``affine`` maps voxel indices to
        world RAS mm.

    Raises
    ------
    NiftiError
        (``ValueError``/``OSError``) naming the file when it is missing, not NIfTI, or truncated.
    """
    img = _open_nifti(fname)
    data = _read_data(img, fname, as_ndarray)
    ret: list[Any] = [data, img.affine]
    if return_img:
        ret.append(img)
    if return_voxsize:
        ret.append(img.header.get_zooms()[:3])
    if return_coords:
        ret.append(nib.aff2axcodes(img.affine))
    return tuple(ret)


def load_nifti_data(fname: str | os.PathLike, as_ndarray: bool = True) -> Any:
    """Only the voxel array of a NIfTI file (``dipy.io.image.load_nifti_data``)."""
    return _read_data(_open_nifti(fname), fname, as_ndarray)


def load_volume(fname: str | os.PathLike, dtype: Any = np.float32
                ) -> tuple[np.ndarray, np.ndarray, nib.spatialimages.SpatialImage]:
    """One volume of a NIfTI file: ``(data, affine, img)``.

    ``data`` is read as ``dtype`` (float32 by default; ``scl_slope``/``scl_inter`` applied)
    and an ``(X, Y, Z, 1)`` image is returned as ``(X, Y, Z)``; other shapes are returned
    as stored (the caller checks the dimension it needs).  ``affine`` maps voxel indices to
    world RAS mm.  Errors are :class:`NiftiError` naming the file, as :func:`load_nifti`;
    complex data is refused (:func:`check_real`).
    """
    img = _open_nifti(fname)
    check_real(img, fname)
    data = _read_data(img, fname, True, dtype)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return data, img.affine, img


def nifti_like(data: np.ndarray, like: nib.spatialimages.SpatialImage,
               dtype: Any = np.float32) -> nib.Nifti1Image:
    """``data`` (cast to ``dtype``) as a NIfTI-1 image on ``like``'s voxel grid.

    Takes ``like.affine`` (nibabel's rule, :func:`affine_source`) and writes it as both the
    sform and the qform, with ``like``'s codes (an unset code becomes 1, "scanner"), so any
    reader gets the same matrix.  A qform cannot hold shear: when the affine is sheared
    (:func:`affine_shear`), only the sform is set and ``qform_code`` is 0 (no qform), so no
    reader falls back to a shear-stripped matrix.  Spatial/temporal units are copied, not
    the scaling (``scl_slope``) or data type.
    """
    affine = np.asarray(like.affine, dtype=np.float64)
    out = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    out.header.set_xyzt_units(*like.header.get_xyzt_units())
    code_s = int(like.header["sform_code"]) or 1
    code_q = int(like.header["qform_code"]) or 1
    out.header.set_sform(affine, code_s)
    if affine_shear(affine) > SHEAR_TOLERANCE:
        out.header.set_qform(None)
    else:
        out.header.set_qform(affine, code_q)
    return out


def save_nifti(fname: str | os.PathLike, data: np.ndarray, affine: np.ndarray,
               hdr: nib.Nifti1Header | None = None, dtype: Any = None) -> None:
    """Save an array as NIfTI-1, as ``dipy.io.image.save_nifti`` (written atomically).

    Parameters
    ----------
    fname : str or Path
        Destination (``.nii`` or ``.nii.gz``).
    data : ndarray
        Voxel array ``[i, j, k(, t)]``.
    affine : (4, 4) array
        Voxel -> world (RAS mm) matrix.
    hdr : nibabel header, optional
        Header to copy (intent, units, ...).
    dtype : dtype, optional
        On-disk data type.  As in DIPY, 64-bit integer data needs ``hdr`` or ``dtype``
        (many tools cannot read int64 NIfTI).
    """
    data = np.asanyarray(data)
    affine = check_affine(affine, "affine", invertible=False)
    if hdr is None and dtype is None and data.dtype in (np.dtype("int64"), np.dtype("uint64")):
        raise ValueError(
            f"Image data has type {data.dtype}, which may cause incompatibilities with other "
            "tools (Analyze formats did not support 64-bit integer data). Pass `hdr` or `dtype`, "
            f"e.g. np.asarray(data, dtype=np.int32), to save {os.fspath(fname)}."
        )
    img = nib.Nifti1Image(data, affine, header=hdr, dtype=dtype)
    atomic_write_nifti(img, fname)
