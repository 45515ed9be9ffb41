"""Affine pre-alignment benchmark: DIPY 1.12 vs synflow, same inputs, one run.

Case: :func:`synflow.data.phantom.make_registration_case` -- a whole-head b0-like pair
(98x116x94 at 2 mm, MNI152-derived tissues, CSF > GM > WM contrast, scalp, bias field and
Rician noise) with a known random affine (a few degrees / mm / percent) **and** a
non-linear deformation (mean 2.5 mm over the brain).

Chain: centre of mass -> translation -> rigid -> affine.

* ``dipy``: ``dipy.align.affine_registration`` with its defaults (dense MI, level_iters
  [1000, 500, 100]); run with BLAS limited to one thread (DIPY's imaffine is single-threaded;
  this also spares its L-BFGS-B from OpenBLAS thread wake-ups on a busy machine).
* ``synflow recommended``: :func:`synflow.align.estimate_prealign` (what the workflow
  feeds SyN), with 1 thread and with the default thread count.
* ``synflow dipy-defaults``: :func:`synflow.align._affine_public.affine_registration` with
  DIPY's defaults (same algorithm and budget as DIPY, vectorised engine).

Errors are in mm over the brain mask: ``|A x - P x|`` against the true affine ``P``
(static-world -> moving-world), and the end-point error against the full truth
(affine + non-linear part, which no affine can recover).

Usage::

    python bench/bench_affine.py [--seed 0] [--skip-dipy] [--out bench/RESULTS_affine.md]
    python bench/bench_affine.py --api [--repeat 3]

``--api`` times DIPY's one-call functions (``center_of_mass``, ``translation``,
``rigid``, ``affine``, ``affine_registration``, ``resample``,
``register_dwi_to_template(reg_method="aff")``) against synflow's with the same
arguments on the bundled b0 pair (81x106x76 at 2 mm, 1 BLAS thread for both, best of
``--repeat`` runs), and prints the table (nothing is written).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np


def _affine_error_mm(case, affine: np.ndarray) -> float:
    pts = case.static_world_points[case.brain_mask]
    p = case.prealign
    est = pts @ affine[:3, :3].T + affine[:3, 3]
    true = pts @ p[:3, :3].T + p[:3, 3]
    return float(np.sqrt(((est - true) ** 2).sum(-1)).mean())


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _api_calls(mod, s, m, sa, ma, dwi, bvals):
    """name -> zero-argument call of ``mod``'s one-call API (DIPY's signatures)."""
    bvecs = np.zeros((bvals.size, 3))
    bvecs[bvals > 0, 0] = 1.0
    kw = dict(moving_affine=ma, static_affine=sa, level_iters=[100, 50, 10])
    return {
        "center_of_mass": lambda: mod.center_of_mass(m, s, moving_affine=ma, static_affine=sa),
        "translation": lambda: mod.translation(m, s, **kw),
        "rigid": lambda: mod.rigid(m, s, **kw),
        "affine": lambda: mod.affine(m, s, **kw),
        "affine_registration (com, translation, rigid)": lambda: mod.affine_registration(
            m, s, pipeline=["center_of_mass", "translation", "rigid"], **kw),
        "resample": lambda: mod.resample(m, s, moving_affine=ma, static_affine=sa),
        "register_dwi_to_template (aff, com+translation)": lambda: mod.register_dwi_to_template(
            dwi, (bvals, bvecs), dwi_affine=ma, template=s,
            template_affine=sa, reg_method="aff", pipeline=["center_of_mass", "translation"],
            level_iters=[100, 50, 10]),
    }


def _bench_api(repeat: int) -> int:
    import logging

    import dipy.align as dipy_align
    import nibabel as nib
    from threadpoolctl import threadpool_limits

    import synflow.align as synflow_align
    from synflow._parallel import get_num_threads
    from synflow.data import get_fnames

    logging.getLogger("dipy").setLevel(logging.WARNING)
    static_f, moving_f, _ = get_fnames("b0_pair")
    si, mi = nib.load(static_f), nib.load(moving_f)
    s, m = si.get_fdata(), mi.get_fdata()
    dwi = np.stack([m, 0.4 * m, m, 0.3 * m], -1)
    bvals = np.array([0.0, 1000.0, 0.0, 1000.0])
    calls = {name: _api_calls(mod, s, m, si.affine, mi.affine, dwi, bvals)
             for name, mod in (("dipy", dipy_align), ("synflow", synflow_align))}
    print(f"b0 pair {s.shape} / {m.shape}; synflow threads: {get_num_threads()}; "
          f"best of {repeat}")
    print("| function | DIPY 1.12 (s) | synflow (s) | synflow / DIPY |")
    print("|---|---:|---:|---:|")
    for name in calls["dipy"]:
        best = {}
        for lib in ("dipy", "synflow"):
            times = []
            for _ in range(repeat):
                with threadpool_limits(1, user_api="blas"):
                    _, t = _timed(calls[lib][name])
                times.append(t)
            best[lib] = min(times)
        print(f"| {name} | {best['dipy']:.3f} | {best['synflow']:.3f} | "
              f"{best['synflow'] / best['dipy']:.2f}x |", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-dipy", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS_affine.md")))
    parser.add_argument("--api", action="store_true", help="time the one-call API vs DIPY")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.api:
        return _bench_api(args.repeat)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:]))
    print("command:", command, flush=True)

    from synflow._parallel import get_num_threads, set_num_threads
    from synflow.align._affine_public import affine_registration, estimate_prealign
    from synflow.data.phantom import make_registration_case

    case, t_case = _timed(lambda: make_registration_case(seed=args.seed))
    print(f"case: static {case.static.shape} moving {case.moving.shape} "
          f"(built in {t_case:.1f} s); true affine:\n{np.round(case.prealign, 4)}", flush=True)
    s, m, sa, ma = case.static, case.moving, case.static_affine, case.moving_affine
    pipeline = ["center_of_mass", "translation", "rigid", "affine"]
    rows = []

    def record(name: str, affine: np.ndarray, seconds: float) -> None:
        err = _affine_error_mm(case, affine)
        epe = case.endpoint_error_of_affine(affine)["mean"]
        rows.append((name, seconds, err, epe))
        print(f"{name:38s} {seconds:8.2f} s   affine error {err:.3f} mm   "
              f"end-point error {epe:.3f} mm", flush=True)

    if not args.skip_dipy:
        from dipy.align import affine_registration as dipy_affine_registration
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            (_, a_dipy), t = _timed(lambda: dipy_affine_registration(
                m, s, moving_affine=ma, static_affine=sa, pipeline=pipeline))
        record("dipy 1.12 affine_registration", a_dipy, t)

    nthreads = get_num_threads()
    set_num_threads(1)
    try:
        a, t = _timed(lambda: estimate_prealign(s, m, sa, ma))
        record("synflow estimate_prealign, 1 thread", a, t)
        (_, a), t = _timed(lambda: affine_registration(m, s, moving_affine=ma,
                                                       static_affine=sa, pipeline=pipeline))
        record("synflow dipy-defaults, 1 thread", a, t)
    finally:
        set_num_threads(None)
    if nthreads > 1:
        a, t = _timed(lambda: estimate_prealign(s, m, sa, ma))
        record(f"synflow estimate_prealign, {nthreads} threads", a, t)

    t_dipy = rows[0][1] if not args.skip_dipy else None
    lines = [
        "## Affine pre-alignment (centre of mass -> translation -> rigid -> affine)",
        "",
        f"Case: `synflow.data.phantom.make_registration_case(seed={args.seed})`, whole-head "
        f"b0-like pair {s.shape} at 2 mm with a known random affine and a non-linear "
        "deformation (mean 2.5 mm). Errors over the brain mask: *affine error* = "
        "mean |A x - P x| against the true affine P; *end-point error* = against the full "
        "truth (affine + non-linear, not recoverable by an affine).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        "(shared, timings noisy). DIPY run with BLAS limited to 1 thread.",
        "",
        "| method | time (s) | vs DIPY | affine error (mm) | end-point error (mm) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, sec, err, epe in rows:
        ratio = f"{sec / t_dipy:.3f}x" if t_dipy else "-"
        lines.append(f"| {name} | {sec:.2f} | {ratio} | {err:.3f} | {epe:.3f} |")
    lines += ["", f"Command: `{command}`", ""]
    text = "\n".join(lines)
    print()
    print(text)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
