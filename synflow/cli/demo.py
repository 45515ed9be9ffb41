"""``synflow --demo OUTPUT_DIR``: generate the demo dataset, process it, score it.

1. :func:`synflow.data.demo.make_demo_dataset` writes a 3-participant BIDS DWI dataset
   (template anatomy deformed by known diffeomorphisms + affines) to
   ``OUTPUT_DIR/demo_bids`` (kept if it is already there, so a rerun is fast);
2. the normal participant pipeline runs on it: outputs in ``OUTPUT_DIR/derivatives``,
   work directory ``OUTPUT_DIR/work`` (unless ``-w``), same options as a real run;
3. for each series that finished, the saved DIPY-layout mapping is read back and its
   end-point error against the known truth is printed (mm, over the template brain).
"""

from __future__ import annotations

import sys
import time
from argparse import Namespace
from typing import TextIO

import numpy as np


def pull_points(mapping) -> np.ndarray:
    """World points (moving space, mm) that ``mapping.transform`` samples, per voxel.

    For the map ``SymmetricDiffeomorphicRegistration.optimize`` returns (DIPY:
    ``is_inverse=True``, ``prealign`` = P^-1): ``pull(x) = P @ (x + b(x))`` with ``b``
    = ``get_forward_field()`` on the displacement grid (= the reference grid).
    """
    from synflow.data.phantom import grid_world_points

    if not getattr(mapping, "is_inverse", False):
        raise ValueError("pull_points expects the map returned by optimize() (is_inverse)")
    disp = np.asarray(mapping.get_forward_field(), dtype=np.float64)
    grid2world = mapping.disp_grid2world if mapping.disp_grid2world is not None else np.eye(4)
    x = grid_world_points(disp.shape[:3], grid2world)
    q = np.eye(4) if mapping.prealign is None else np.asarray(mapping.prealign, np.float64)
    p = np.linalg.inv(q)
    return (x + disp) @ p[:3, :3].T + p[:3, 3]


def run_demo(opts: Namespace, stream: TextIO | None = None) -> int:
    """Run the demo (see the module docstring); returns the pipeline's exit code."""
    from synflow.align import read_mapping
    from synflow.cli.run import run_participant
    from synflow.data.demo import demo_registration_error, make_demo_dataset
    from synflow.interfaces.bids import build_derivative_name, derivative_dir, parse_entities

    stream = stream or sys.stdout
    out = opts.demo.absolute()
    bids = out / "demo_bids"
    t0 = time.monotonic()
    if not (bids / "dataset_description.json").exists():
        make_demo_dataset(bids, n_participants=3, seed=0)
        print(f"demo dataset written to {bids} ({time.monotonic() - t0:.1f} s)", file=stream)
    else:
        print(f"reusing the demo dataset in {bids}", file=stream)
    if opts.reference is not None or opts.reference_participant is not None:
        print("note: the demo scores against the bundled template; --reference/"
              "--reference-participant runs are not scored", file=stream)
    opts.bids_dir, opts.output_dir = bids, out / "derivatives"
    opts.analysis_level = "participant"
    opts.work_dir = opts.work_dir or out / "work"
    code = run_participant(opts, stream=stream)

    scored = opts.reference is None and opts.reference_participant is None
    if scored:
        from synflow.data import TEMPLATE_SPACE

        rows = []
        for dwi in sorted(bids.glob("sub-*/**/dwi/*_dwi.nii.gz")):
            ent = parse_entities(dwi)
            mapping_file = derivative_dir(opts.output_dir, dwi, "dwi") / build_derivative_name(
                dwi, "xfm", ".nii.gz", from_="dwiref", to=TEMPLATE_SPACE, mode="image",
                desc="dipy")
            name = dwi.name.replace("_dwi.nii.gz", "")
            if not mapping_file.exists():
                rows.append(f"  {name:<22} (not processed)")
                continue
            try:
                err = demo_registration_error(bids / "sourcedata" / "truth", ent["sub"],
                                              pull_points(read_mapping(mapping_file)),
                                              session=ent.get("ses"), run=ent.get("run"))
            except Exception as exc:  # scoring must not hide the pipeline's result
                rows.append(f"  {name:<22} could not be scored: {exc}")
                continue
            rows.append(f"  {name:<22} mean {err['mean']:5.2f}  median {err['median']:5.2f}"
                        f"  p95 {err['p95']:5.2f}  max {err['max']:5.2f}")
        print("\nRegistration error against the known truth (end-point error in the "
              "template brain, mm):", file=stream)
        print("\n".join(rows), file=stream)
    print(f"\nDemo finished in {time.monotonic() - t0:.1f} s. Open the QC reports in a "
          f"browser:\n  " + "\n  ".join(str(p) for p in sorted(
              (out / "derivatives").glob("sub-*.html"))), file=stream)
    return code
