"""DWI signal simulation: tissue partial volumes, WM fibre directions, gradient tables.

* :func:`dwi_signal` -- noise-free multi-compartment signal;
* :func:`random_fibre_directions` -- smooth random unit vector field;
* :func:`unit_directions` -- well spread unit gradient directions;
* :func:`make_small_dwi` -- the bundled tiny 4-D series (:data:`SMALL_DWI_BVALS`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from synflow.align.affine_checks import check_affine
from synflow.data.phantom.contrast import B0_CONTRAST, add_rician_noise, bias_field
from synflow.data.phantom.grid import _rng, voxel_sizes
from synflow.data.phantom.subjects import make_subject, native_grid

__all__ = ["dwi_signal", "random_fibre_directions", "unit_directions", "SMALL_DWI_BVALS",
           "make_small_dwi"]

def dwi_signal(
    tissues: dict[str, np.ndarray],
    bvals: np.ndarray,
    bvecs: np.ndarray,
    fibre_dirs: np.ndarray,
    scale: float = 1000.0,
) -> np.ndarray:
    """Noise-free DWI signal (float32 ``grid + (n_volumes,)``).

    Per tissue ``S = scale * c_tissue * exp(-b D)`` summed with the partial volumes
    (:data:`B0_CONTRAST` for ``c``): CSF ``D = 3.0e-3``, GM ``0.8e-3``, scalp ``1.0e-3``
    mm^2/s; WM is a cylindrical tensor (``1.7e-3`` along ``fibre_dirs``, unit vectors
    ``grid + (3,)``, ``0.3e-3`` across). ``bvals`` in s/mm^2, ``bvecs`` (n, 3) unit (RAS-ish,
    voxel axes as FSL for axis-aligned grids).
    """
    bvals = np.asarray(bvals, dtype=np.float64).ravel()
    bvecs = np.asarray(bvecs, dtype=np.float64).reshape(-1, 3)
    if len(bvals) != len(bvecs):
        raise ValueError("bvals and bvecs must have the same number of volumes")
    c = B0_CONTRAST
    out = np.empty(tissues["CSF"].shape + (len(bvals),), np.float32)
    for n, (b, g) in enumerate(zip(bvals, bvecs, strict=True)):
        cos2 = (fibre_dirs @ g.astype(np.float32)) ** 2
        d_wm = 0.3e-3 + (1.7e-3 - 0.3e-3) * cos2
        s = (c["CSF"] * tissues["CSF"] * np.exp(-b * 3.0e-3)
             + c["GM"] * tissues["GM"] * np.exp(-b * 0.8e-3)
             + c["WM"] * tissues["WM"] * np.exp(-b * d_wm)
             + c["scalp"] * tissues["scalp"] * np.exp(-b * 1.0e-3))
        out[..., n] = np.float32(scale) * s
    return out


def random_fibre_directions(shape: tuple[int, int, int], grid2world: np.ndarray,
                            rng: np.random.Generator | int | None = None,
                            smoothness_mm: float = 10.0) -> np.ndarray:
    """Smooth random unit vector field (float32 ``shape + (3,)``), e.g. WM fibre directions."""
    rng = _rng(rng)
    sig = smoothness_mm / voxel_sizes(check_affine(grid2world, "grid2world"))
    v = np.stack([ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sig)
                  for _ in range(3)], axis=-1)
    v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    return v.astype(np.float32)


#: gradient table of the bundled ``small_dwi`` series (b in s/mm^2, unit bvecs).
SMALL_DWI_BVALS = np.array([0, 1000, 1000, 0, 1000, 1000, 1000, 1000], dtype=float)


def unit_directions(n: int) -> np.ndarray:
    """``n`` well spread unit vectors (Fibonacci half-sphere)."""
    i = np.arange(n) + 0.5
    z = 1 - i / n
    r = np.sqrt(1 - z * z)
    phi = np.pi * (1 + 5**0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def make_small_dwi(seed: int = 7, voxel_size: float = 4.0,
                   shape: tuple[int, int, int] = (40, 48, 40)) -> tuple[
                       np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bundled tiny 4-D DWI (``get_fnames("small_dwi")``): 2 b0 + 6 b=1000 volumes.

    Returns ``(data float32 grid+(8,), affine, bvals (8,), bvecs (8, 3))``; one synthetic
    subject on a 4 mm grid, SNR ~ 25 in WM on b0, no motion.
    """
    rng = np.random.default_rng(seed)
    subj = make_subject(rng, 2.5, max_rotation_deg=4.0, max_translation_mm=5.0)
    aff = native_grid(subj, voxel_size, shape)
    tis = subj.tissues_on(shape, aff)
    bvals = SMALL_DWI_BVALS.copy()
    bvecs = np.zeros((len(bvals), 3))
    bvecs[bvals > 0] = unit_directions(int((bvals > 0).sum()))
    fib = random_fibre_directions(shape, aff, rng)
    scale = 250.0
    sig = dwi_signal(tis, bvals, bvecs, fib, scale=scale)
    sig *= bias_field(shape, aff, 0.15, rng)[..., None]
    data = add_rician_noise(sig, 0.04 * scale * B0_CONTRAST["WM"], rng)
    return data, aff, bvals, bvecs

