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
4. a plain Nipype ``DataSink`` collects what you want to keep;
5. a figure to look at: the template's grey matter (p > 0.5), brought into native DWI
   space, outlined in red on the participant's mean b0 (``OUT_DIR/gm_on_b0.png``).

Run::

    python workflows/use_in_your_pipeline.py --out OUT_DIR [--level-iters 10 10 5] [--fast]

It prints the files it wrote, then the path of the figure.  Nothing here is specific
to the ``synflow`` command: any Nipype workflow can embed these factories the same
way (``wf.connect`` to the ``inputnode``/``outputnode`` fields listed in each factory's
docstring).
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


def plot_gm_on_b0(results: Path, out_png: Path) -> Path:
    """The native-space grey matter (p > 0.5) outlined in red on the mean b0, as a PNG."""
    from synflow.io.image import load_volume
    from synflow.viz import plot_mask_contour
    from synflow.viz.reportlets import intensity_window

    native = results / "native"
    gm_file = next(native.glob("*GM*_native.nii*"))
    b0_file = next(p for p in native.glob("*.nii*") if "GM" not in p.name
                   and "mask" not in p.name)
    b0, aff, _ = load_volume(b0_file)
    brain, _, _ = load_volume(next(native.glob("*_mask.nii*")))
    gm, _, _ = load_volume(gm_file)
    return plot_mask_contour(b0, gm > 0.5, out_png, grid2world=aff,
                             limits=intensity_window(b0, brain > 0),
                             title="template grey matter (p > 0.5) in native DWI space, "
                                   "on the mean b0")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="use_in_your_pipeline.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python workflows/use_in_your_pipeline.py --out /tmp/my-pipeline "
               "--fast")
    parser.add_argument("--out", dest="out_dir", type=Path, metavar="OUT_DIR",
                        help="folder to write to: the demo dataset (OUT_DIR/demo_bids), "
                             "Nipype's work folder (OUT_DIR/work), the kept files "
                             "(OUT_DIR/results) and the figure (OUT_DIR/gm_on_b0.png); "
                             "default: a new temporary folder")
    parser.add_argument("--level-iters", type=int, nargs="+", default=[10, 10, 5],
                        metavar="N",
                        help="SyN iterations per resolution level, coarsest first "
                             "(default: 10 10 5; synflow's command uses 50 50 10)")
    parser.add_argument("--fast", action="store_true",
                        help="very few iterations (level_iters 2 2 1): checks that the "
                             "pipeline runs, in well under a minute; the registration is "
                             "rough")
    parser.add_argument("--nprocs", type=int, default=2, metavar="N",
                        help="processes Nipype's MultiProc plugin may run at once "
                             "(default: 2)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    """Run the example; returns the figure's path."""
    opts = _parser().parse_args(argv)
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
    figure = plot_gm_on_b0(results, out_dir / "gm_on_b0.png")
    print(f"figure: {figure}")
    return figure


if __name__ == "__main__":
    main()
