"""b0 contrast, smooth bias fields and Rician noise.

* :data:`B0_CONTRAST`, :func:`b0_like` -- b0-like image from tissue probability maps;
* :func:`bias_field` -- smooth multiplicative bias field;
* :func:`add_rician_noise` -- magnitude of complex Gaussian noise.
"""

from __future__ import annotations

import numpy as np

from synflow.align.affine_checks import check_affine
from synflow.data.phantom.grid import _check_shape, _rng, grid_world_points

__all__ = ["B0_CONTRAST", "bias_field", "add_rician_noise", "b0_like"]

#: b0 contrast, in units of the WM signal-free scale (``scale`` argument of :func:`b0_like`).
B0_CONTRAST: dict[str, float] = {"CSF": 1.0, "GM": 0.42, "WM": 0.30, "scalp": 0.12}



def bias_field(shape: tuple[int, int, int], grid2world: np.ndarray, strength: float = 0.2,
               rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Smooth multiplicative bias field ``exp(strength * p(x))`` (float32 ``shape``).

    ``p`` is a random 2nd-order polynomial of the world coordinates (normalised by the
    field-of-view half-extent), scaled so ``max |p| = 1`` on the grid: the field lies in
    ``[exp(-strength), exp(strength)]``. ``strength = 0`` gives ones.
    """
    shape = _check_shape(shape)
    if not np.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return np.ones(shape, np.float32)
    rng = _rng(rng)
    a = check_affine(grid2world, "grid2world")
    # separable evaluation: coordinates along each voxel axis of the normalised world frame
    pts = grid_world_points(shape, a).astype(np.float32)
    ctr = pts.reshape(-1, 3).mean(0)
    half = np.abs(pts.reshape(-1, 3) - ctr).max(0) + 1e-6
    q = (pts - ctr) / half
    x, y, z = q[..., 0], q[..., 1], q[..., 2]
    terms = [x, y, z, x * y, x * z, y * z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3]
    coef = rng.standard_normal(len(terms))
    coef[3:] *= 0.5
    p = sum(float(ci) * t for ci, t in zip(coef, terms, strict=True))
    p /= max(float(np.abs(p).max()), 1e-6)
    return np.exp(np.float32(strength) * p).astype(np.float32)


def add_rician_noise(img: np.ndarray, sigma: float,
                     rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Magnitude of ``img + N(0, sigma) + i N(0, sigma)`` (Rician), float32."""
    img = np.asarray(img, dtype=np.float32)
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return img.copy()
    rng = _rng(rng)
    re = img + np.float32(sigma) * rng.standard_normal(img.shape, dtype=np.float32)
    im = np.float32(sigma) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im).astype(np.float32)


def b0_like(
    csf: np.ndarray,
    gm: np.ndarray,
    wm: np.ndarray,
    scalp: np.ndarray | None = None,
    rng: np.random.Generator | int | None = None,
    noise: float = 0.04,
    bias: float = 0.2,
    grid2world: np.ndarray | None = None,
    scale: float = 1000.0,
    contrast: dict[str, float] | None = None,
) -> np.ndarray:
    """b0-like image from tissue probability maps (float32, same grid).

    Noise-free signal ``scale * (1.0 CSF + 0.42 GM + 0.30 WM + 0.12 scalp)`` (see
    :data:`B0_CONTRAST`; override with ``contrast``), i.e. CSF > GM > WM > scalp > 0;
    multiplied by a smooth :func:`bias_field` of strength ``bias``; then Rician noise with
    ``sigma = noise * WM signal`` (``noise = 0.04`` -> SNR 25 in WM). ``noise = bias = 0``
    gives the clean image. ``grid2world`` (needed for ``bias > 0``) defines the bias frame.
    """
    c = dict(B0_CONTRAST)
    if contrast:
        c.update(contrast)
    csf, gm, wm = (np.asarray(x, dtype=np.float32) for x in (csf, gm, wm))
    if not (csf.shape == gm.shape == wm.shape) or csf.ndim != 3:
        raise ValueError("csf, gm, wm must be 3-D arrays of one shape")
    img = c["CSF"] * csf + c["GM"] * gm + c["WM"] * wm
    if scalp is not None:
        img = img + c["scalp"] * np.asarray(scalp, dtype=np.float32)
    img = (np.float32(scale) * img).astype(np.float32)
    rng = _rng(rng)
    if bias > 0:
        if grid2world is None:
            raise ValueError("grid2world is required when bias > 0")
        img *= bias_field(img.shape, grid2world, bias, rng)
    return add_rician_noise(img, noise * scale * c["WM"], rng)

