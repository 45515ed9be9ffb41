"""reslice benchmark: DIPY 1.12 vs synflow, same input, side by side.

Input: a 1 mm MNI-sized series (182 x 218 x 182, ``--volumes`` volumes, default 10) of a
smooth random head-like image plus noise, float32 (``--dtype float64`` for DIPY's usual
``get_fdata`` input).  Each case reslices the whole series to 2 mm and to 1.5 mm with
``order`` 1 and 3 (``mode='constant'``), with ``dipy.align.reslice.reslice`` and
``synflow.align.reslice.reslice``; prints wall times, the DIPY/synflow ratio and the largest
difference (relative to the data range).  ``--repeat N`` alternates the two N times per case
(interleaved, for a shared machine) and reports each one's best time.

Usage::

    python bench/bench_reslice.py [--volumes 10] [--dtype float32] [--orders 1 3] [--repeat 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _series(nvol: int, dtype: str, seed: int = 0) -> np.ndarray:
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    shape = (182, 218, 182)
    base = ndi.gaussian_filter(rng.random((46, 55, 46)).astype(np.float32), 2)
    base = ndi.zoom(base, np.array(shape) / np.array(base.shape), order=1)[: shape[0],
                                                                          : shape[1], : shape[2]]
    out = np.empty(shape + (nvol,), dtype=dtype)
    for t in range(nvol):
        out[..., t] = 1000 * base * (1 + 0.05 * t) + 20 * rng.standard_normal(shape)
    return out


def _time(fn, *args, **kwargs):
    t0 = time.perf_counter()
    res = fn(*args, **kwargs)
    return time.perf_counter() - t0, res


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--orders", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--repeat", type=int, default=1,
                        help="interleaved DIPY/synflow runs per case (best time reported)")
    args = parser.parse_args(argv)

    from dipy.align.reslice import reslice as dipy_reslice

    from synflow.align.reslice import reslice

    data = _series(args.volumes, args.dtype)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-90, -126, -72]
    span = float(data.max() - data.min())
    print(f"input {data.shape} {data.dtype}, {data.nbytes / 2**20:.0f} MiB")
    print(f"{'new zooms':>10} {'order':>5} {'DIPY s':>8} {'synflow s':>10} {'ratio':>6} "
          f"{'max |diff| / range':>19}")
    for new in (2.0, 1.5):
        for order in args.orders:
            zooms, new_zooms = (1.0, 1.0, 1.0), (new, new, new)
            t_d = t_s = float("inf")
            for _ in range(max(1, args.repeat)):
                t, (ref, aff_d) = _time(dipy_reslice, data, affine, zooms, new_zooms,
                                        order=order)
                t_d = min(t_d, t)
                t, (res, aff_s) = _time(reslice, data, affine, zooms, new_zooms, order=order)
                t_s = min(t_s, t)
            assert res.shape == ref.shape and np.allclose(aff_d, aff_s)
            diff = float(np.abs(res.astype(np.float64) - ref).max()) / span
            print(f"{new:>10} {order:>5} {t_d:>8.2f} {t_s:>10.2f} {t_d / t_s:>6.1f} "
                  f"{diff:>19.1e}")
            del ref, res


if __name__ == "__main__":
    main()
