"""b-values / b-vectors files, mirroring ``dipy.io.gradients.read_bvals_bvecs``.

FSL format: ``.bval`` is one row of N b-values (s/mm^2); ``.bvec`` is 3 rows x N columns of unit
vectors (N x 3 is accepted too).  Tabs and commas count as separators, ``.npy`` files are
accepted, an empty path or ``None`` skips that file (as in DIPY).

Errors raise :class:`GradientFileError` (a ``ValueError``, also an ``OSError`` like DIPY's
errors) naming the file and what is wrong.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np

__all__ = ["GradientFileError", "read_bvals_bvecs"]

_TEXT_EXTS = {".bvals", ".bval", ".bvecs", ".bvec", ".txt", ".eddy_rotated_bvecs", ""}


class GradientFileError(ValueError, OSError):
    """A b-value / b-vector file is missing or malformed (message names the file)."""


def _read_table(fname: str | os.PathLike, what: str) -> np.ndarray:
    if not isinstance(fname, (str, Path, os.PathLike)):
        raise GradientFileError(f"{what}: a path to a file is required, got {fname!r}")
    path = Path(fname)
    if not path.is_file():
        raise GradientFileError(f"{what} file not found: {path}")
    ext = path.suffix
    try:
        if ext == ".npy":
            arr = np.load(path)
        elif ext in _TEXT_EXTS:
            content = path.read_text()
            if not content.strip():
                raise GradientFileError(f"{what} file is empty: {path}")
            arr = np.loadtxt(io.StringIO(re.sub(r"(\t|,)", " ", content)), ndmin=2)
        else:
            raise GradientFileError(f"{what} file type {ext!r} is not recognized: {path}")
    except GradientFileError:
        raise
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise GradientFileError(f"cannot parse {what} file {path}: {exc}") from exc
    arr = np.squeeze(np.asarray(arr, dtype=np.float64))
    if not np.all(np.isfinite(arr)):
        raise GradientFileError(f"{what} file {path} contains non-finite values")
    return arr


def read_bvals_bvecs(fbvals: str | os.PathLike | None,
                     fbvecs: str | os.PathLike | None) -> tuple[np.ndarray | None,
                                                                 np.ndarray | None]:
    """Read b-values and b-vectors from disk (``dipy.io.gradients.read_bvals_bvecs``).

    Parameters
    ----------
    fbvals : str or Path or None
        b-values file (s/mm^2); ``None`` or ``""`` to skip.
    fbvecs : str or Path or None
        b-vectors file (unit vectors in the image's voxel axes, FSL convention); ``None`` or
        ``""`` to skip.

    Returns
    -------
    bvals : (N,) float array or None
    bvecs : (N, 3) float array or None

    Raises
    ------
    GradientFileError
        Missing/unparsable file, b-values not a single row, b-vectors without a dimension of
        3, or different numbers of b-values and b-vectors (the message gives both counts).
    """
    bvals = None if fbvals is None or fbvals == "" else _read_table(fbvals, "b-values")
    bvecs = None if fbvecs is None or fbvecs == "" else _read_table(fbvecs, "b-vectors")
    if bvals is not None:
        if bvals.ndim == 0:
            bvals = bvals[None]
        if bvals.ndim != 1:
            raise GradientFileError(
                f"b-values file {fbvals} should have one row (or one column), got shape "
                f"{bvals.shape}"
            )
    if bvecs is None:
        return bvals, None
    if 3 not in bvecs.shape:
        raise GradientFileError(
            f"b-vectors file {fbvecs} should have three rows (x, y, z), got shape {bvecs.shape}"
        )
    if bvecs.ndim != 2:
        bvecs = bvecs[None, :]
        warnings.warn(
            f"Only one direction in {fbvecs}; diffusion datasets usually have at least 3.",
            stacklevel=2,
        )
    if bvecs.shape[1] != 3:
        bvecs = bvecs.T
    if bvals is None:
        return None, bvecs
    if bvals.shape[0] != bvecs.shape[0]:
        raise GradientFileError(
            f"b-values and b-vectors do not correspond: {bvals.shape[0]} b-values in {fbvals} "
            f"but {bvecs.shape[0]} b-vectors in {fbvecs}"
        )
    return bvals, bvecs
