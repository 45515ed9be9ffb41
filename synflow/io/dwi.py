"""b0 selection and averaging for DWI series (engine level: NumPy/nibabel, no Nipype).

Convention: a volume is a b0 when ``bval <= b0_threshold`` (s/mm^2), as DIPY's
``gradient_table(b0_threshold=50)``.  The default 50 also catches scanners that write b0 as
b=5 (Siemens) or b=10; raise it for data whose "b0" are written as larger values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from synflow.align.affine_checks import check_affine

from .gradients import read_bvals_bvecs
from .image import NiftiError, _open_nifti, atomic_write_nifti, nifti_like

__all__ = ["B0_THRESHOLD", "b0_indices", "mean_b0", "extract_b0"]

#: Default b0 threshold (s/mm^2): DIPY's gradient_table, QSIPrep's ExtractB0s, dmriprep.
B0_THRESHOLD: float = 50.0


def _check_threshold(b0_threshold: float) -> float:
    try:
        thr = float(b0_threshold)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"b0_threshold must be a number (s/mm^2), got {b0_threshold!r}") from exc
    if not np.isfinite(thr) or thr < 0:
        raise ValueError(f"b0_threshold must be a finite number >= 0 (s/mm^2), got {thr}")
    return thr


def _check_bvals(bvals: Sequence[float] | np.ndarray, name: str = "bvals") -> np.ndarray:
    arr = np.asarray(bvals, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of b-values, got shape "
                         f"{arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite b-values")
    if np.any(arr < 0):
        raise ValueError(f"{name} contains negative b-values (min {arr.min():g})")
    return arr


def b0_indices(bvals: Sequence[float] | np.ndarray, b0_threshold: float = B0_THRESHOLD,
               *, name: str = "bvals") -> np.ndarray:
    """Indices of the b0 volumes: ``bvals <= b0_threshold`` (b-values in s/mm^2).

    Raises
    ------
    ValueError
        If no b-value is under the threshold; the message gives the smallest b-value found and
        suggests the threshold to use.
    """
    thr = _check_threshold(b0_threshold)
    arr = _check_bvals(bvals, name)
    idx = np.flatnonzero(arr <= thr)
    if idx.size == 0:
        bmin = float(arr.min())
        raise ValueError(
            f"no b0 volume in {name}: the smallest b-value is {bmin:g} s/mm^2, above "
            f"b0_threshold={thr:g}. If those volumes are your b0s, raise the threshold "
            f"(b0_threshold >= {bmin:g}, --b0-threshold on the command line)."
        )
    return idx


def _aligned_mean(vols: list[np.ndarray], affine: np.ndarray) -> np.ndarray:
    """Rigidly align every volume to the first (MI, DIPY pipeline) and average (float64)."""
    try:
        from synflow.align import affine_registration
    except ImportError as exc:  # pragma: no cover - depends on the engine being installed
        raise ImportError("align=True needs synflow.align.affine_registration") from exc
    ref = vols[0].astype(np.float32)
    total = ref.astype(np.float64)
    for vol in vols[1:]:
        resampled, _ = affine_registration(
            vol.astype(np.float32), ref, moving_affine=affine, static_affine=affine,
            pipeline=["center_of_mass", "translation", "rigid"],
        )
        total += np.asarray(resampled, dtype=np.float64)
    return total


def _mean_of(vols: list[np.ndarray], affine: np.ndarray, align: bool) -> np.ndarray:
    if align and len(vols) > 1:
        total = _aligned_mean(vols, affine)
    else:
        total = np.zeros(vols[0].shape, dtype=np.float64)
        for vol in vols:
            total += vol
    return (total / len(vols)).astype(np.float32)


def _count_nan(vols: list[np.ndarray]) -> int:
    return int(sum(np.count_nonzero(~np.isfinite(v)) for v in vols
                   if np.issubdtype(v.dtype, np.floating)))


def mean_b0(data: np.ndarray, affine: np.ndarray, bvals: Sequence[float] | np.ndarray,
            b0_threshold: float = B0_THRESHOLD,
            align: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the b0 volumes of a DWI series.

    Parameters
    ----------
    data : 4-D array ``[i, j, k, volume]``
        DWI series (any units; must be finite in the b0 volumes).
    affine : (4, 4) array
        Voxel -> world (RAS mm) matrix of ``data``; returned unchanged.
    bvals : (N,) b-values in s/mm^2, one per volume.
    b0_threshold : float
        Volumes with ``bval <= b0_threshold`` are b0s.
    align : bool
        Rigidly register each b0 to the first b0 (mutual information, centre of mass ->
        translation -> rigid) before averaging; output stays on the grid of ``data``.

    Returns
    -------
    mean : float32 3-D array
        Mean b0 (same units as ``data``).
    affine : (4, 4) float64 array
    indices : int array of the b0 volumes used.

    Raises
    ------
    ValueError
        ``data`` not 4-D, number of b-values != number of volumes, no b0 under the threshold,
        NaN/inf voxels in the b0 volumes (the message gives how many).
    """
    return _mean_b0(data, affine, bvals, b0_threshold, align, "data", "bvals")


def _mean_b0(data: np.ndarray, affine: np.ndarray, bvals: Sequence[float] | np.ndarray,
             b0_threshold: float, align: bool, data_name: str,
             bval_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    affine = check_affine(affine, "affine", invertible=False)
    shape = tuple(data.shape)
    if len(shape) != 4:
        raise ValueError(
            f"{data_name} must be a 4-D DWI series [i, j, k, volume], got {len(shape)}-D shape "
            f"{shape}" + (" (a single volume: nothing to select b0s from)" if len(shape) == 3
                          else "")
        )
    arr = _check_bvals(bvals, bval_name)
    if arr.size != shape[3]:
        raise ValueError(
            f"{data_name} has {shape[3]} volumes but {bval_name} lists {arr.size} b-values; "
            "they must match one to one"
        )
    idx = b0_indices(arr, b0_threshold, name=bval_name)
    if isinstance(data, np.ndarray):
        vols = [data[..., int(i)] for i in idx]
    else:  # nibabel ArrayProxy: read only the b0 volumes, in file order
        try:
            vols = [np.asarray(data[..., int(i)]) for i in idx]
        except Exception as exc:  # EOFError, OSError, zlib.error, short-buffer ValueError
            raise NiftiError(
                f"cannot read the voxel data of {data_name} (truncated or corrupt file?): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    nbad = _count_nan(vols)
    if nbad:
        raise ValueError(
            f"{data_name} has {nbad} NaN/inf voxels in its b0 volumes {idx.tolist()}; "
            "fix or mask them before extracting the b0"
        )
    return _mean_of(vols, affine, align), affine, idx


def extract_b0(dwi_file: str | os.PathLike, bval_file: str | os.PathLike,
               out_file: str | os.PathLike | None = None,
               b0_threshold: float = B0_THRESHOLD, align: bool = False) -> nib.Nifti1Image:
    """Mean b0 of a DWI NIfTI file, optionally written (atomically) to ``out_file``.

    Only the b0 volumes are read (in file order).  The result is a float32 3-D image on the
    DWI grid with the DWI's affine, qform/sform codes and spatial units.

    Raises
    ------
    ValueError
        Naming ``dwi_file``/``bval_file``: unreadable/truncated NIfTI, 3-D input, b-value
        count != number of volumes, no b0 under ``b0_threshold`` (gives the smallest b-value),
        NaN voxels (gives how many).
    """
    bvals, _ = read_bvals_bvecs(bval_file, None)
    img = _open_nifti(dwi_file, keep_file_open=True)
    mean, _, _ = _mean_b0(img.dataobj, img.affine, bvals, b0_threshold, align,
                          f"DWI file {Path(dwi_file)}", f"b-values file {bval_file}")
    out = nifti_like(mean, img)
    if out_file is not None:
        atomic_write_nifti(out, out_file)
    return out
