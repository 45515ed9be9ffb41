"""Where SyN's iterations go: energy per iteration and level, end-point error, folding.

Study script for issue 12 (not a benchmark: one process, no DIPY).  Each argument is a
Python literal ``(level_iters, registration_kwargs, metric_kwargs)``; ``"recommended"``
runs ``synflow.align.imwarp.RECOMMENDED``.  Prints one JSON line per run with wall and
CPU seconds, the mean end-point error over the brain (mm), the folding percentage, the
iterations used per level and, per level, the relative energy gain over the last
``--window`` iterations (the quantity ``level_iters="auto"`` stops on).

    python bench/syn_convergence.py --grid 2 "([10, 10, 5],)" recommended \
        "([10, 10, 10], {'field_variance': 0.5}, {'sigma_diff': 3.0})"
"""

from __future__ import annotations

import argparse
import ast
import json
import time

import numpy as np

from synflow.align.imwarp import RECOMMENDED, SymmetricDiffeomorphicRegistration
from synflow.align.metrics import CCMetric
from synflow.data.phantom import jacobian_determinant, make_registration_case


def _gains(energies: list[float], window: int) -> list[float]:
    e = np.asarray(energies, dtype=np.float64)
    return [round(float((e[k - window] - e[k - window + 1:k + 1].min()) / abs(e[k - window])), 5)
            for k in range(window, len(e))]


def run(case, level_iters, reg_kw: dict, metric_kw: dict, window: int) -> dict:
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3, **metric_kw), level_iters=level_iters,
                                             **reg_kw)
    t0, c0 = time.perf_counter(), time.process_time()
    mapping = sdr.optimize(case.static, case.moving, case.static_affine, case.moving_affine,
                           case.prealign)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    jac = jacobian_determinant(mapping.get_forward_field(), case.static_affine)
    used = sdr.iterations_per_level
    bounds = np.cumsum([0] + used)
    profile = sdr.full_energy_profile
    return {"level_iters": str(level_iters), "registration": reg_kw, "metric": metric_kw,
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "epe_mm": round(case.endpoint_error_of_mapping(mapping, case.prealign)["mean"], 4),
            "folding_pct": round(float(100 * np.mean(jac[case.brain_mask] <= 0)), 4),
            "iterations": used,
            "gains": [_gains(profile[a:b], window) for a, b in zip(bounds[:-1], bounds[1:],
                                                                  strict=True)]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--grid", type=float, default=2.0, help="voxel size (mm)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--window", type=int, default=5)
    args = ap.parse_args(argv)
    case = make_registration_case(voxel_size=args.grid, seed=args.seed)
    for spec in args.runs:
        if spec == "recommended":
            reg = dict(RECOMMENDED["registration"])
            level_iters = reg.pop("level_iters")
            parts = (level_iters, reg, dict(RECOMMENDED["metric"]))
        else:
            parts = tuple(ast.literal_eval(spec)) + ({}, {})
        metric_kw = dict({"radius": 4}, **parts[2])
        print(json.dumps(run(case, parts[0], parts[1], metric_kw, args.window)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
