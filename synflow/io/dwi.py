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
from .image import (
    SHEAR_TOLERANCE,
    NiftiError,
    _open_nifti,
    affine_shear,
    affine_source,
    atomic_write_nifti,
    check_real,
    nifti_like,
)

__all__ = ["B0_THRESHOLD", "b0_indices", "mean_b0", "extract_b0", "read_mean_b0"]

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


def _nonfinite_voxels(vols: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """``(mask, n_values)``: voxels non-finite in any volume, and the non-finite values."""
    bad = np.zeros(vols[0].shape, dtype=bool)
    n_values = 0
    for v in vols:
        if np.issubdtype(v.dtype, np.floating):
            vbad = ~np.isfinite(v)
            n_values += int(np.count_nonzero(vbad))
            bad |= vbad
    return bad, n_values


def mean_b0(data: np.ndarray, affine: np.ndarray, bvals: Sequence[float] | np.ndarray,
            b0_threshold: float = B0_THRESHOLD, align: bool = False, *,
            nonfinite: str = "raise") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    nonfinite : ``"raise"`` or ``"zero"``
        What to do with NaN/inf voxels in the b0 volumes: raise (default), or set them to 0
        in each b0 volume before averaging (:func:`read_mean_b0` reports where they were).

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
        NaN/inf voxels in the b0 volumes with ``nonfinite="raise"`` (the message gives how
        many), complex data.
    """
    mean, affine, idx, _ = _mean_b0(data, affine, bvals, b0_threshold, align, "data",
                                    "bvals", nonfinite)
    return mean, affine, idx


def _read_b0_volumes(data, idx: np.ndarray, data_name: str) -> list[np.ndarray]:
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
    if vols and np.iscomplexobj(vols[0]):
        raise ValueError(f"{data_name}: complex data is not supported (data type "
                         f"{vols[0].dtype}); give the magnitude image")
    return vols


def _mean_b0(data: np.ndarray, affine: np.ndarray, bvals: Sequence[float] | np.ndarray,
             b0_threshold: float, align: bool, data_name: str, bval_name: str,
             nonfinite: str = "raise"
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, int]]:
    if nonfinite not in ("raise", "zero"):
        raise ValueError(f"nonfinite must be 'raise' or 'zero', got {nonfinite!r}")
    name = "affine" if data_name == "data" else f"affine of {data_name}"
    affine = check_affine(affine, name, invertible=False)
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
    vols = _read_b0_volumes(data, idx, data_name)
    bad, nbad = _nonfinite_voxels(vols)
    if nbad and nonfinite == "raise":
        raise ValueError(
            f"{data_name} has {nbad} NaN/inf voxels in its b0 volumes {idx.tolist()}; "
            "fix or mask them before extracting the b0"
        )
    if nbad:
        vols = [np.where(np.isfinite(v), v, 0).astype(v.dtype, copy=False) for v in vols]
    return _mean_of(vols, affine, align), affine, idx, (bad, nbad)


def read_mean_b0(dwi_file: str | os.PathLike, bval_file: str | os.PathLike,
                 b0_threshold: float = B0_THRESHOLD, align: bool = False, *,
                 nonfinite: str = "raise") -> tuple[nib.Nifti1Image, np.ndarray, dict]:
    """Mean b0 of a DWI file, where its non-finite voxels were, and what its header says.

    Returns
    -------
    img : float32 3-D image (as :func:`extract_b0`).
    nonfinite_mask : bool 3-D array (DWI grid): voxels NaN/inf in at least one b0 volume
        (set to 0 there before averaging with ``nonfinite="zero"``).
    info : dict
        ``NonFiniteVoxels`` (voxels of ``nonfinite_mask``), ``NonFiniteValues`` (NaN/inf
        values over all b0 volumes), ``AffineSource`` (``"sform"``/``"qform"``/``"fallback"``,
        nibabel's rule, :func:`synflow.io.image.affine_source`), ``AffineShear`` (largest
        |cosine| between voxel axes) and ``DataWarnings`` (sentences naming the file by its
        base name, empty when none).
    """
    bvals, _ = read_bvals_bvecs(bval_file, None)
    img = _open_nifti(dwi_file, keep_file_open=True)
    check_real(img, dwi_file)
    name = f"DWI file {Path(dwi_file)}"
    mean, _, _, (bad, nbad) = _mean_b0(img.dataobj, img.affine, bvals, b0_threshold, align,
                                       name, f"b-values file {bval_file}", nonfinite)
    source = affine_source(img.header)
    shear = affine_shear(img.affine)
    name = Path(dwi_file).name  # the warnings go into sidecars: no host paths
    warnings: list[str] = []
    if source == "fallback":
        warnings.append(f"{name}: sform_code and qform_code are both 0, so the affine is "
                        "nibabel's fall-back (voxel sizes only, orientation unknown)")
    if shear > SHEAR_TOLERANCE:
        warnings.append(f"{name}: the {source} affine is sheared (axes {shear:.3g} from "
                        "orthogonal, as |cosine|); a qform cannot hold shear, so the outputs "
                        "carry it in the sform only (qform_code 0)")
    if nbad:
        warnings.append(f"{name}: {int(bad.sum())} voxels were NaN/inf in the b0 volumes "
                        f"({nbad} values); set to 0")
    info = {"NonFiniteVoxels": int(bad.sum()), "NonFiniteValues": int(nbad),
            "AffineSource": source, "AffineShear": round(shear, 6),
            "DataWarnings": warnings}
    return nifti_like(mean, img), bad, info


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
        NaN voxels (gives how many), complex data.  (:func:`read_mean_b0` with
        ``nonfinite="zero"`` sets NaN voxels to 0 instead and reports them.)
    """
    out, _, _ = read_mean_b0(dwi_file, bval_file, b0_threshold, align)
    if out_file is not None:
        atomic_write_nifti(out, out_file)
    return out
