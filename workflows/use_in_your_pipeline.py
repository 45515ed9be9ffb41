#!/usr/bin/env python
"""Use synflow's workflow factories inside your own Nipype pipeline.

What it does (on the demo dataset, generated on the fly into OUT_DIR/demo_bids):

1. ``init_reference_wf`` prepares the reference (the bundled MNI152NLin2009aSym b0
   template, skull-stripped);
2. ``init_dwi_registration_wf`` registers one participant's mean b0 to it
   (b0 -> median-Otsu -> affine -> SyN);
3. *your own* node uses the result: here synflow's ``ApplyRegistration`` brings the
   template's grey-matter probability map into the participant's native DWI space
   (``direction="inverse"``), the usual reason to register a b0 to a template;
4. a plain Nipype ``DataSink`` collects what you want to keep.

Run::

    python workflows/use_in_your_pipeline.py --out OUT_DIR [--level-iters 10 10 5] [--fast]

It prints the files it wrote.  Nothing here is specific to the ``synflow`` command: any
Nipype workflow can embed these factories the same way (``wf.connect`` to the
``inputnode``/``outputnode`` fields listed in each factory's docstring).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from nipype.interfaces.io import DataSink
from nipype.pipeline import engine as pe

from synflow.data import get_template
from synflow.data.demo import make_demo_dataset
from synflow.interfaces import ApplyRegistration
from synflow.workflows import Reference, init_dwi_registration_wf, init_reference_wf


def build_pipeline(dwi: Path, bval: Path, out_dir: Path, level_iters: list[int]) -> pe.Workflow:
    """My pipeline: reference + synflow registration + my own use of the mapping."""
    wf = pe.Workflow(name="my_pipeline", base_dir=str(out_dir / "work"))

    ref_wf = init_reference_wf(Reference())  # bundled template (MNI152NLin2009aSym)
    reg_wf = init_dwi_registration_wf(syn={"level_iters": level_iters}, reportlets=False,
                                      name="b0_to_template_wf")
    reg_wf.inputs.inputnode.dwi_file = str(dwi)
    reg_wf.inputs.inputnode.bval_file = str(bval)

    # My own step: template grey matter -> native b0 grid (inverse of the registration).
    gm_to_native = pe.Node(ApplyRegistration(in_file=str(get_template("GM")),
                                             direction="inverse", interpolation="linear",
                                             out_suffix="_native"),
                           name="gm_to_native")
    sink = pe.Node(DataSink(base_directory=str(out_dir / "results"), parameterization=False),
                   name="sink")

    wf.connect([
        (ref_wf, reg_wf, [("outputnode.reference", "inputnode.reference"),
                          ("outputnode.reference_mask", "inputnode.reference_mask")]),
        (reg_wf, gm_to_native, [("outputnode.mapping", "mapping_file")]),
        (reg_wf, sink, [("outputnode.b0_file", "native.@b0"),
                        ("outputnode.mask_file", "native.@mask"),
                        ("outputnode.b0_ref", "template.@b0"),
                        ("outputnode.forward_xfm", "xfm.@fwd"),
                        ("outputnode.mapping", "xfm.@dipy")]),
        (gm_to_native, sink, [("out_file", "native.@gm")]),
    ])
    return wf


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", dest="out_dir", type=Path,
                        help="where to write (default: a temporary folder)")
    parser.add_argument("--level-iters", type=int, nargs="+", default=[10, 10, 5])
    parser.add_argument("--fast", action="store_true",
                        help="few iterations (level_iters 2 2 1), for a quick smoke run")
    parser.add_argument("--nprocs", type=int, default=2)
    opts = parser.parse_args(argv)
    if opts.fast:
        opts.level_iters = [2, 2, 1]
    out_dir = (opts.out_dir or Path(tempfile.mkdtemp(prefix="synflow-example-"))).absolute()

    bids = out_dir / "demo_bids"
    if not (bids / "dataset_description.json").exists():
        make_demo_dataset(bids, n_participants=1, seed=0)
    dwi = bids / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    wf = build_pipeline(dwi, dwi.with_name("sub-01_dwi.bval"), out_dir, opts.level_iters)
    wf.run(plugin="MultiProc", plugin_args={"n_procs": opts.nprocs, "raise_insufficient": False})

    results = out_dir / "results"
    for path in sorted(results.rglob("*")):
        if path.is_file():
            print(path)
    return results


if __name__ == "__main__":
    main()
