"""SyN side by side: synflow vs DIPY 1.12 (and greedy when installed), same inputs, same run.

Each method runs in its own fresh process on the same case (loaded from a temporary
.npz), so peak memory is measured without the other library's footprint:
``peak MB = max RSS during the registration - RSS just before it`` (the kernel's peak-RSS
mark is reset just before the registration starts).

Cases are built by ``synflow.data.phantom.make_registration_case``: a whole-head b0-like
pair from the MNI152 2009a tissue maps with a known smooth diffeomorphism (mean
~2.5 mm) and a known affine given as ``prealign``.  Errors are end-point errors of the
pull map against the truth, over the brain, in mm.

Usage:
    python bench/bench_syn.py                 # 2 mm case, DIPY [10,10,5] vs synflow
    python bench/bench_syn.py --grids 2 1     # add the 1 mm grid (slow for DIPY)
    python bench/bench_syn.py --markdown bench/RESULTS_syn.md
    python bench/bench_syn.py --metric em-gn  # EMMetric, Gauss-Newton step (also cc,
                                              # ssd-demons, ssd-gn, em-demons)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0).

    Without this the peak would include transients from before the registration (loading
    and decompressing the case), which at 1 mm are larger than SyN itself.
    """
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


#: ``--metric`` choices: (class name, constructor keywords); the same for both libraries.
METRICS = {
    "cc": ("CCMetric", {}),
    "ssd-demons": ("SSDMetric", {"step_type": "demons"}),
    "ssd-gn": ("SSDMetric", {"step_type": "gauss_newton"}),
    "em-demons": ("EMMetric", {"step_type": "demons"}),
    "em-gn": ("EMMetric", {"step_type": "gauss_newton"}),
}


def _make_metric(module, metric: str, radius: int, recommended: bool = False):
    name, kwargs = METRICS[metric]
    if name == "CCMetric":
        kwargs = dict(kwargs, radius=radius)
        if recommended:
            from synflow.align.imwarp import RECOMMENDED

            kwargs = dict(RECOMMENDED["metric"])
    return getattr(module, name)(3, **kwargs)


def _registration_kwargs(method: str, level_iters: list[int], extra: dict) -> dict:
    """Constructor keywords: ``level_iters`` (+ ``extra``), or synflow's RECOMMENDED."""
    if method == "synflow (recommended)":
        from synflow.align.imwarp import RECOMMENDED

        return dict(RECOMMENDED["registration"], **extra)
    return dict(extra, level_iters=level_iters)


def _worker(method: str, case_file: str, level_iters: list[int], radius: int,
            extra: dict, queue, metric: str = "cc") -> None:
    """Run one registration in this (fresh) process and report time, memory, errors."""
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    data = dict(np.load(case_file))
    from synflow.data.phantom import dice, jacobian_determinant

    static, moving = data["static"], data["moving"]
    s_aff, m_aff, prealign = data["static_affine"], data["moving_affine"], data["prealign"]
    if method.startswith("synflow"):
        from synflow.align import metrics as metric_module
        from synflow.align.imwarp import SymmetricDiffeomorphicRegistration
    elif method.startswith("dipy"):
        from dipy.align import metrics as metric_module
        from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    elif method.startswith("greedy"):
        from picsl_greedy import Greedy3D  # noqa: F401
    _reset_peak_rss()
    rss0 = _status_mb("VmRSS")
    t0 = time.perf_counter()
    if method.startswith("greedy"):
        pull, field = _run_greedy(static, moving, s_aff, m_aff, prealign, level_iters, radius)
    elif method == "prealign only":  # the affine alone: what SyN starts from
        field = np.zeros(static.shape + (3,))
        elapsed = 0.0
    else:
        metric_obj = _make_metric(metric_module, metric, radius,
                                  recommended=method == "synflow (recommended)")
        sdr = SymmetricDiffeomorphicRegistration(
            metric_obj, **_registration_kwargs(method, level_iters, extra))
        mapping = sdr.optimize(static, moving, static_grid2world=s_aff,
                               moving_grid2world=m_aff, prealign=prealign)
        elapsed = time.perf_counter() - t0
        level_iters = list(getattr(sdr, "iterations_per_level", None) or level_iters)
        field = np.asarray(mapping.get_forward_field(), dtype=np.float64)
    if method.startswith("greedy"):
        elapsed = time.perf_counter() - t0
    peak = _status_mb("VmHWM") - rss0

    # End-point error of the pull map P(x + b(x)) against the truth, over the brain.
    ijk = np.indices(static.shape, dtype=np.float64).reshape(3, -1)
    x = (s_aff[:3, :3] @ ijk + s_aff[:3, 3:4]).T.reshape(static.shape + (3,))
    true = (x + data["true_displacement"]) @ prealign[:3, :3].T + prealign[:3, 3]
    if not method.startswith("greedy"):
        pull = (x + field) @ prealign[:3, :3].T + prealign[:3, 3]
    brain = data["brain_mask"].astype(bool)
    err = np.linalg.norm(pull - true, axis=-1)[brain]
    # Labels of the moving image pulled onto the static grid (nearest neighbour).
    vox = (np.linalg.inv(m_aff) @ np.c_[pull.reshape(-1, 3), np.ones(pull[..., 0].size)].T)[:3]
    idx = np.rint(vox).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(moving.shape)[:, None]), axis=0)
    labels = np.zeros(idx.shape[1], np.uint8)
    labels[inside] = data["moving_labels"][tuple(idx[:, inside])]
    labels = labels.reshape(static.shape)
    jac = jacobian_determinant(field.astype(np.float32), s_aff)
    queue.put({
        "method": method,
        "iterations": level_iters,
        "seconds": elapsed,
        "peak_mb": peak,
        "epe_mean": float(err.mean()),
        "epe_p95": float(np.percentile(err, 95)),
        "dice_gm": float(dice(labels == 2, data["static_labels"] == 2)),
        "dice_wm": float(dice(labels == 3, data["static_labels"] == 3)),
        "folding_pct": float(100.0 * np.mean(jac[brain] <= 0)),
    })


def _run_greedy(static, moving, s_aff, m_aff, prealign, level_iters, radius):
    """greedy (picsl-greedy) NCC with the same pyramid depth; returns pull points (mm)."""
    import nibabel as nib
    from picsl_greedy import Greedy3D

    g = Greedy3D()
    with tempfile.TemporaryDirectory() as tmp:
        fs, fm = os.path.join(tmp, "s.nii.gz"), os.path.join(tmp, "m.nii.gz")
        nib.save(nib.Nifti1Image(static.astype(np.float32), s_aff), fs)
        nib.save(nib.Nifti1Image(moving.astype(np.float32), m_aff), fm)
        # greedy's matrix files map fixed (static) to moving points in RAS mm (checked:
        # an LPS matrix gives ~10 mm errors); its warp is an ITK (LPS) displacement on the
        # fixed grid, and the pull point of x is prealign @ (x + w(x)).
        fa = os.path.join(tmp, "a.mat")
        np.savetxt(fa, prealign)
        its = "x".join(str(n) for n in level_iters)
        fw = os.path.join(tmp, "w.nii.gz")
        # greedy's C++ log goes straight to file descriptor 1: silence it there.
        devnull, saved = os.open(os.devnull, os.O_WRONLY), os.dup(1)
        os.dup2(devnull, 1)
        try:
            g.execute(f"-d 3 -i {fs} {fm} -it {fa} -m NCC {radius}x{radius}x{radius} "
                      f"-n {its} -o {fw} -threads 2")
        finally:
            os.dup2(saved, 1)
            os.close(devnull)
            os.close(saved)
        warp = nib.load(fw)
        disp = np.asarray(warp.dataobj, dtype=np.float64).reshape(static.shape + (3,))
        disp[..., :2] *= -1  # LPS -> RAS
    ijk = np.indices(static.shape, dtype=np.float64).reshape(3, -1)
    x = (s_aff[:3, :3] @ ijk + s_aff[:3, 3:4]).T.reshape(static.shape + (3,))
    return (x + disp) @ prealign[:3, :3].T + prealign[:3, 3], disp


def run_method(method, case_file, level_iters, radius=4, extra=None, metric="cc") -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker,
                       args=(method, case_file, level_iters, radius, extra or {}, queue,
                             metric))
    proc.start()
    result = queue.get()
    proc.join()
    result["level_iters"] = level_iters
    return result


def make_case_file(voxel_size: float, seed: int, folder: str) -> tuple[str, tuple]:
    from synflow.data.phantom import make_registration_case

    case = make_registration_case(voxel_size=voxel_size, seed=seed)
    path = os.path.join(folder, f"case_{voxel_size}mm_seed{seed}.npz")
    np.savez(path, static=case.static, moving=case.moving, static_affine=case.static_affine,
             moving_affine=case.moving_affine, prealign=case.prealign,
             true_displacement=case.true_displacement, brain_mask=case.brain_mask,
             static_labels=case.static_labels, moving_labels=case.moving_labels)
    return path, case.static.shape


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", type=float, nargs="+", default=[2.0], help="voxel sizes (mm)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dipy-long", action="store_true",
                    help="also run DIPY with [100, 100, 50] (slow)")
    ap.add_argument("--greedy", action="store_true", help="also run picsl-greedy if installed")
    ap.add_argument("--long-grids", type=float, nargs="*", default=[2.0],
                    help="grids (mm) on which the [100, 100, 50] runs of DIPY and greedy are "
                         "made (default: 2 mm only; DIPY needs ~15 min at 1 mm)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each short method (not the [100, 100, 50] ones) this many "
                         "times, each in a fresh process; report the fastest run and the "
                         "largest peak memory (the machine is shared: noise only adds time)")
    ap.add_argument("--metric", choices=sorted(METRICS), default="cc",
                    help="similarity metric of every SyN run, DIPY's and synflow's alike "
                         "(ssd/em: SSDMetric/EMMetric with the demons or Gauss-Newton step, "
                         "DIPY's other defaults)")
    ap.add_argument("--no-recommended", action="store_true",
                    help="skip synflow's recommended-iterations run")
    ap.add_argument("--markdown", help="write the table to this Markdown file")
    args = ap.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for vs in args.grids:
            case_file, shape = make_case_file(vs, args.seed, tmp)
            long = any(abs(vs - g) < 1e-6 for g in args.long_grids)
            plan = [("prealign only", [0]), ("dipy", [10, 10, 5]), ("synflow", [10, 10, 5])]
            if not args.no_recommended:
                # synflow.align.imwarp.RECOMMENDED: level_iters="auto" (energy stop)
                plan.append(("synflow (recommended)", [0]))
            if args.dipy_long and long:
                plan.append(("dipy", [100, 100, 50]))
            if args.greedy:
                plan.append(("greedy", [10, 10, 5]))
                plan.append(("greedy", [100, 50, 10]))
                if long:
                    plan.append(("greedy", [100, 100, 50]))
            for method, its in plan:
                runs = 1 if sum(its) > 150 or method == "prealign only" else max(1, args.repeat)
                trials = [run_method(method, case_file, its, metric=args.metric)
                          for _ in range(runs)]
                r = min(trials, key=lambda t: t["seconds"])
                r["peak_mb"] = max(t["peak_mb"] for t in trials)
                r["runs"] = runs
                r["metric"] = args.metric
                r["grid"] = f"{vs:g} mm {shape[0]}x{shape[1]}x{shape[2]}"
                rows.append(r)
                print(json.dumps(r), flush=True)

    lines = ["| grid | method | iterations used | runs | time (s) | time / DIPY[10,10,5] | "
             "peak MB | EPE mean (mm) | EPE p95 (mm) | Dice GM | Dice WM | folding % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = next(x for x in rows if x["grid"] == r["grid"] and x["method"] == "dipy"
                   and x["level_iters"] == [10, 10, 5])
        fold = f"{r['folding_pct']:.3f}"
        lines.append(
            f"| {r['grid']} | {r['method']} | {r['iterations']} | {r['runs']} | "
            f"{r['seconds']:.2f} | "
            f"{r['seconds'] / ref['seconds']:.2f} | {r['peak_mb']:.0f} | {r['epe_mean']:.3f} | "
            f"{r['epe_p95']:.3f} | {r['dice_gm']:.3f} | {r['dice_wm']:.3f} | {fold} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        cmd = "python bench/bench_syn.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.markdown).write_text(
            f"Command: `{cmd.strip()}`\n\nMachine: {os.cpu_count()} cores, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
