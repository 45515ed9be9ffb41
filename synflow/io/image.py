"""NIfTI input/output, mirroring ``dipy.io.image``, plus synflow's atomic-write helper.

* :func:`load_nifti` / :func:`save_nifti` keep DIPY's signatures and return values; failures
  raise :class:`NiftiError` (a ``ValueError``, also an ``OSError``) naming the file and the cause
  (missing, not NIfTI, truncated / unreadable voxel data).
* :func:`load_volume` is synflow's one loader for a single volume (float32, a trailing
  length-1 fourth axis dropped, plus the affine and the image); :func:`nifti_like` builds
  an image on another image's grid (affine, sform/qform codes, units).
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
    "atomic_path",
    "atomic_write_nifti",
    "load_nifti",
    "load_nifti_data",
    "load_volume",
    "nifti_like",
    "save_nifti",
    "split_ext",
]

class NiftiError(ValueError, OSError):
    """A NIfTI file is missing, unreadable or truncated (message names the file)."""


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
    world RAS mm.  Errors are :class:`NiftiError` naming the file, as :func:`load_nifti`.
    """
    img = _open_nifti(fname)
    data = _read_data(img, fname, True, dtype)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return data, img.affine, img


def nifti_like(data: np.ndarray, like: nib.spatialimages.SpatialImage,
               dtype: Any = np.float32) -> nib.Nifti1Image:
    """``data`` (cast to ``dtype``) as a NIfTI-1 image on ``like``'s voxel grid.

    Takes ``like``'s affine, its sform/qform codes (an unset code becomes 1, "scanner")
    and its spatial/temporal units, but not its scaling (``scl_slope``) or data type.
    """
    out = nib.Nifti1Image(np.asarray(data, dtype=dtype), like.affine)
    out.header.set_xyzt_units(*like.header.get_xyzt_units())
    out.header.set_sform(like.affine, int(like.header["sform_code"]) or 1)
    out.header.set_qform(like.affine, int(like.header["qform_code"]) or 1)
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
