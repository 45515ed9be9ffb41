"""The one validator for homogeneous affine matrices used anywhere in synflow.

Every layer (engine, io, data, interfaces) checks a user's matrix with
:func:`check_affine`, so a matrix accepted in one place is accepted everywhere and a
rejected one gets the same message.

The rule
--------
A ``(dim + 1, dim + 1)`` matrix of finite numbers whose last row is ``[0, ..., 0, 1]``
to within :data:`LAST_ROW_ATOL` (absolute; e.g. ``1 + 1e-12`` written by another tool's
float arithmetic is accepted, ``0.5`` is not) and, unless ``invertible=False``, whose
linear part is invertible (condition number at most :data:`MAX_CONDITION`).  The
returned copy is float64 with the last row set exactly to ``[0, ..., 0, 1]``.

Errors are :class:`AffineInvalidValuesError` (not numeric, not finite, wrong last row)
and :class:`AffineInversionError` (wrong shape, singular), both ``ValueError``
subclasses, with DIPY's class names (``dipy.align.imaffine`` raises the same two).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "LAST_ROW_ATOL",
    "MAX_CONDITION",
    "AffineInvalidValuesError",
    "AffineInversionError",
    "check_affine",
]

#: Largest absolute deviation of the last row from ``[0, ..., 0, 1]`` that is accepted.
LAST_ROW_ATOL = 1e-6
#: Largest condition number of the linear part accepted as invertible.
MAX_CONDITION = 1e12


class AffineInversionError(ValueError):
    """A matrix has the wrong shape or cannot be inverted (DIPY's name)."""


class AffineInvalidValuesError(ValueError):
    """A matrix holds non-numeric or non-finite values, or its last row is wrong (DIPY's name)."""


def check_affine(matrix: Any, name: str = "affine", dim: int | None = 3, *,
                 allow_none: bool = False, invertible: bool = True) -> np.ndarray | None:
    """Return ``matrix`` as a validated float64 homogeneous matrix.

    Parameters
    ----------
    matrix : array-like, shape ``(dim + 1, dim + 1)``
        e.g. a voxel -> world (RAS mm) ``grid2world`` or a world -> world transform.
    name : the argument's name, used in every message.
    dim : spatial dimension (2 or 3); ``None`` accepts any square size >= 2.
    allow_none : if true, ``None`` (and the string ``'identity'``) return ``None``
        (the caller's identity) instead of raising.
    invertible : if true (default), a singular linear part raises.
    """
    if matrix is None or (isinstance(matrix, str) and matrix == "identity"):
        if allow_none:
            return None
        raise AffineInvalidValuesError(f"{name} must be a matrix, got {matrix!r}")
    try:
        a = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise AffineInvalidValuesError(f"{name} must be a numeric matrix, got {matrix!r}") from exc
    expected = "a square matrix" if dim is None else f"a {dim + 1}x{dim + 1} matrix"
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2 or (
            dim is not None and a.shape[0] != dim + 1):
        raise AffineInversionError(f"{name} must be {expected}, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = int(a.size - np.isfinite(a).sum())
        raise AffineInvalidValuesError(f"{name} has {bad} non-finite entries (NaN or inf)")
    n = a.shape[0] - 1
    last = np.zeros(n + 1)
    last[n] = 1.0
    if np.max(np.abs(a[n] - last)) > LAST_ROW_ATOL:
        row = np.array2string(a[n], precision=17, separator=", ")
        raise AffineInvalidValuesError(
            f"{name}: the last row of a homogeneous matrix must be [0, ..., 0, 1] "
            f"(within {LAST_ROW_ATOL:g}), got {row}")
    a[n] = last
    if invertible:
        lin = a[:n, :n]
        if np.linalg.cond(lin) > MAX_CONDITION:
            raise AffineInversionError(
                f"{name} is singular: its linear part (upper-left {n}x{n}) cannot be inverted")
    return a
