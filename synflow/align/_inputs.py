"""Input checks of the affine engine: images, masks, grid2world matrices.

Every failure is a ``ValueError`` naming the argument; matrices go through
:func:`synflow.align.affine_checks.check_affine`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synflow.align.affine_checks import check_affine

__all__ = ["check_grid2world", "check_image", "check_mask"]


def check_grid2world(g2w: Any, dim: int, name: str) -> np.ndarray:
    """A validated voxel -> world (mm) matrix; ``None`` is the identity."""
    if g2w is None:
        return np.eye(dim + 1)
    return check_affine(g2w, name, dim)


def check_image(img: Any, name: str, dims: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """Numeric, non-empty, finite 2-D/3-D array, else a ValueError naming ``name``."""
    if img is None:
        raise ValueError(f"{name} must be an array, got None")
    a = np.asarray(img)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.number)):
        raise ValueError(f"{name} must be a numeric array, got dtype {a.dtype}")
    if a.ndim not in dims:
        hint = ""
        if a.ndim == max(dims) + 1:
            hint = (f"; drop axis {a.ndim - 1} (of length {a.shape[-1]}), e.g. take one "
                    f"volume {name}[..., i] or the mean over that axis")
        raise ValueError(f"{name} must be a {' or '.join(map(str, dims))}-D array, "
                         f"got shape {a.shape}{hint}")
    if a.size == 0 or min(a.shape) < 2:
        raise ValueError(f"{name} is empty or degenerate (shape {a.shape}); need >= 2 voxels "
                         "along every axis")
    if np.iscomplexobj(a):
        raise ValueError(f"{name} must be real-valued")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values (NaN/inf)")
    return a


def check_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    """``mask != 0`` as a boolean array of ``shape`` (None stays None); not empty."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"{name} must have the image shape {tuple(shape)}, got {m.shape}")
    if not np.issubdtype(m.dtype, np.number) and m.dtype != bool:
        raise ValueError(f"{name} must be numeric or boolean")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains non-finite values")
    m = m != 0
    if not m.any():
        raise ValueError(f"{name} is empty (no non-zero voxel)")
    return m
