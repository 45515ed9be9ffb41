"""median_otsu benchmark: DIPY 1.12 vs synflow, same input, one run; plus b0 extraction timing.

Input: a whole-head b0-like volume on the bundled 2 mm MNI152NLin2009aSym grid (98x116x94,
~1.07 M voxels) from :mod:`synflow.data.phantom` (CSF > GM > WM > scalp contrast, smooth bias
field, Rician noise, SNR 25 in WM).  The true brain mask is the template's brain mask.

1. ``median_otsu(b0, median_radius=4, numpass=4)`` with DIPY and synflow: wall and CPU time,
   time ratio, Dice of synflow's mask vs DIPY's, Dice of each vs the true brain mask, and
   synflow's peak traced memory.
2. ``synflow.io.dwi.extract_b0`` on a 100-volume series (10 b0s) written as int16 ``.nii.gz``
   and ``.nii``: total time vs the time nibabel needs to read the same b0 volumes.

Usage::

    python bench/bench_mask.py [--seed 0] [--repeat 3] [--skip-dipy] [--skip-b0]
                               [--out bench/RESULTS_mask.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

NOTES = """How synflow gets there (see `synflow/segment/mask.py`): the median of integer codes is
`#{k : C_k < h}` with `C_k` = box count of `[code <= k]` (three separable sums of shifted
slices on the flattened, reflect-padded slab, uint8/uint16, two threads over slabs).  The median
commutes with monotone maps, so for floating-point input the mask is computed exactly: min/max of
the filtered volume by bisection over the input values (1-level probes), the exact 256-bin Otsu
histogram as the repeated median of the input coded by those bin edges, then the mask as the
repeated median of `[v > t]`.  Hence "0 voxels differ" is by construction, not by luck.
"""


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    den = a.sum() + b.sum()
    return float(2.0 * np.count_nonzero(a & b) / den) if den else 1.0


def make_b0(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(b0 float32, true brain mask, affine, description)."""
    try:
        from synflow.data.phantom import b0_like, load_template_tissues

        tis = load_template_tissues(2.0)
        b0 = b0_like(tis.csf, tis.gm, tis.wm, tis.scalp, rng=seed, noise=0.04, bias=0.2,
                     grid2world=tis.affine)
        return b0, tis.brain_mask, tis.affine, "synflow.data.phantom.b0_like (noise 0.04, bias 0.2)"
    except ImportError:  # phantom module not available: template b0 + Rician noise
        import nibabel as nib

        from synflow.data import get_template

        img = nib.load(str(get_template("b0")))
        clean = 1000.0 * img.get_fdata(dtype=np.float32)
        mask = np.asarray(nib.load(str(get_template("brainmask"))).dataobj) > 0
        rng = np.random.default_rng(seed)
        sig = 12.0
        b0 = np.hypot(clean + rng.normal(0, sig, clean.shape), rng.normal(0, sig, clean.shape))
        return b0.astype(np.float32), mask, img.affine, "template b0 x1000 + Rician noise (12)"


def _timed(func, *args, **kwargs):
    w0, c0 = time.perf_counter(), time.process_time()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - w0, time.process_time() - c0


def bench_median_otsu(b0, truth, repeat: int, skip_dipy: bool) -> dict:
    from synflow import _parallel
    from synflow.segment import median_otsu

    res: dict = {"threads": _parallel.get_num_threads()}
    runs = []
    for _ in range(repeat):
        (_, mask), wall, cpu = _timed(median_otsu, b0, median_radius=4, numpass=4)
        runs.append((wall, cpu))
    res["sf_wall"] = float(np.median([r[0] for r in runs]))
    res["sf_cpu"] = float(np.median([r[1] for r in runs]))
    res["sf_wall_min"] = float(min(r[0] for r in runs))
    _parallel.set_num_threads(1)
    try:
        (_, mask1), wall1, cpu1 = _timed(median_otsu, b0, median_radius=4, numpass=4)
    finally:
        _parallel.set_num_threads(None)
    res["sf1_wall"], res["sf1_cpu"] = wall1, cpu1
    assert np.array_equal(mask, mask1), "thread count changed the mask"
    tracemalloc.start()
    median_otsu(b0, median_radius=4, numpass=4)
    res["sf_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    res["sf_mask"] = mask
    res["sf_dice_truth"] = _dice(mask, truth)
    if not skip_dipy:
        import dipy.segment.mask as dipy_mask
        from dipy.segment.mask import median_otsu as dipy_median_otsu
        from dipy.segment.threshold import otsu as dipy_otsu

        # DIPY calls scikit-image's threshold_otsu when scikit-image is installed and its own
        # otsu otherwise; synflow always follows DIPY's own rule, so compare with that one.
        dipy_mask.otsu = dipy_otsu

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (_, dmask), dwall, dcpu = _timed(dipy_median_otsu, b0, median_radius=4, numpass=4)
        res["dipy_wall"], res["dipy_cpu"] = dwall, dcpu
        res["dice_vs_dipy"] = _dice(mask, dmask)
        res["n_diff"] = int(np.count_nonzero(mask != dmask))
        res["dipy_dice_truth"] = _dice(dmask, truth)
    return res


def bench_extract_b0(b0, affine, seed: int, nvol: int = 100, every: int = 10,
                     repeat: int = 2) -> list[dict]:
    import nibabel as nib

    from synflow.io.dwi import extract_b0

    rng = np.random.default_rng(seed + 1)
    bvals = np.where(np.arange(nvol) % every == 0, 5.0, 1000.0)
    data = np.empty(b0.shape + (nvol,), dtype=np.int16)
    for i, b in enumerate(bvals):
        att = 1.0 if b < 50 else rng.uniform(0.2, 0.5)
        vol = np.hypot(b0 * att + rng.normal(0, 12, b0.shape), rng.normal(0, 12, b0.shape))
        data[..., i] = np.clip(np.rint(vol), 0, 32767).astype(np.int16)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        fbval = Path(tmp) / "dwi.bval"
        fbval.write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
        for ext in (".nii.gz", ".nii"):
            f = Path(tmp) / f"dwi{ext}"
            nib.save(nib.Nifti1Image(data, affine), str(f))
            idx = np.flatnonzero(bvals <= 50)

            def read_b0s(f=f, idx=idx):
                img = nib.load(str(f), keep_file_open=True)
                return [np.array(img.dataobj[..., int(i)]) for i in idx]  # force the read

            def read_all(f=f):
                return np.asanyarray(nib.load(str(f)).dataobj).copy()  # force the read

            t_read, t_total = [], []
            for _ in range(repeat):  # interleaved, best of `repeat` (shared, noisy machine)
                t_read.append(_timed(read_b0s)[1])
                t_total.append(_timed(extract_b0, f, fbval, Path(tmp) / f"b0{ext}")[1])
            t_read, t_total = min(t_read), min(t_total)
            _, t_all, _ = _timed(read_all)
            out.append({"ext": ext, "size_mb": f.stat().st_size / 2**20, "read_b0s": t_read,
                        "extract_b0": t_total, "read_all": t_all, "nb0": idx.size})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="synflow runs (median reported)")
    p.add_argument("--skip-dipy", action="store_true")
    p.add_argument("--skip-b0", action="store_true")
    p.add_argument("--out", default=None, help="write a Markdown section here")
    args = p.parse_args(argv)
    cmd = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:]))
    print(f"command: {cmd}")

    b0, truth, affine, desc = make_b0(args.seed)
    print(f"input: {desc}, shape {b0.shape} ({b0.size / 1e6:.2f} M voxels), "
          f"true brain {int(truth.sum())} voxels")
    r = bench_median_otsu(b0, truth, args.repeat, args.skip_dipy)
    lines = []
    try:
        import dipy

        dipy_v = dipy.__version__
    except ImportError:
        dipy_v = "n/a"
    lines.append("## median_otsu (median_radius=4, numpass=4)\n")
    lines.append(f"Command: `{cmd}`  ")
    lines.append(f"Input: {desc}, {b0.shape[0]}x{b0.shape[1]}x{b0.shape[2]} "
                 f"({b0.size / 1e6:.2f} M voxels). Machine: {platform.machine()}, "
                 f"{os.cpu_count()} CPUs (shared, noisy); DIPY {dipy_v}; synflow threads "
                 f"{r['threads']}. Times in seconds (synflow: median of {args.repeat}).\n")
    lines.append("| run | wall s | CPU s | wall ratio vs DIPY | Dice vs DIPY mask | "
                 "Dice vs true brain |")
    lines.append("|---|---|---|---|---|---|")
    if "dipy_wall" in r:
        lines.append(f"| DIPY 1.12 `median_otsu` | {r['dipy_wall']:.2f} | {r['dipy_cpu']:.2f} | "
                     f"1 | 1 | {r['dipy_dice_truth']:.4f} |")
        ratio = r["sf_wall"] / r["dipy_wall"]
        ratio1 = r["sf1_wall"] / r["dipy_wall"]
        dd = f"{r['dice_vs_dipy']:.4f} ({r['n_diff']} voxels differ)"
    else:
        ratio = ratio1 = float("nan")
        dd = "n/a"
    lines.append(f"| synflow `median_otsu` ({r['threads']} threads) | {r['sf_wall']:.2f} | "
                 f"{r['sf_cpu']:.2f} | {ratio:.3f} | {dd} | {r['sf_dice_truth']:.4f} |")
    lines.append(f"| synflow `median_otsu` (1 thread) | {r['sf1_wall']:.2f} | {r['sf1_cpu']:.2f} | "
                 f"{ratio1:.3f} | same mask | {r['sf_dice_truth']:.4f} |")
    lines.append("")
    lines.append(f"synflow peak traced memory: {r['sf_peak_mb']:.0f} MiB. "
                 f"Best synflow wall time: {r['sf_wall_min']:.2f} s.")
    if "dipy_cpu" in r:
        lines.append(f"CPU-time ratio synflow/DIPY: {r['sf_cpu'] / r['dipy_cpu']:.3f} "
                     f"(1 thread: {r['sf1_cpu'] / r['dipy_cpu']:.3f}).")
    lines.append("")
    lines.append(NOTES)
    if not args.skip_b0:
        rows = bench_extract_b0(b0, affine, args.seed)
        lines.append("## b0 extraction (`synflow.io.dwi.extract_b0`)\n")
        lines.append("100-volume int16 series on the same 2 mm grid (98x116x94x100), 10 b0s "
                     "written as b=5 (default threshold 50). `read b0s` = nibabel reading the "
                     "same 10 volumes (the I/O part of `extract_b0`); `extract_b0` = read + "
                     "checks + float64 mean + atomic float32 write; `read all` = reading the "
                     "whole series for reference. Best of 2 interleaved runs. The `.nii` file was "
                     "just written, so it is read from the page cache.\n")
        lines.append("| file | size MiB | read b0s s | extract_b0 s | read share | read all s |")
        lines.append("|---|---|---|---|---|---|")
        for row in rows:
            lines.append(f"| `{row['ext']}` | {row['size_mb']:.0f} | {row['read_b0s']:.2f} | "
                         f"{row['extract_b0']:.2f} | "
                         f"{100 * row['read_b0s'] / row['extract_b0']:.0f}% | "
                         f"{row['read_all']:.2f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
