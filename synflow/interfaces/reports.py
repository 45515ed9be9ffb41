"""QC interfaces: per-series figures ("reportlets") and the per-participant HTML report.

The figures of one DWI series are drawn by :class:`RegistrationReportlets` (one node,
so they run in parallel with other series under MultiProc); :class:`QCReport`
assembles ``sub-XX.html`` with :func:`synflow.viz.report.write_participant_report`.

The ``synflow`` command does not put :class:`QCReport` in its graph: Nipype skips
every node downstream of a crash, and the report must also show failed series
(with their error).  The command therefore assembles the report after the run, in a
``finally:`` block like fMRIPrep, with :func:`write_report` -- the same function this
interface wraps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    Str,
    TraitedSpec,
    isdefined,
    traits,
)

from synflow.interfaces.bids import to_jsonable, write_json_atomic
from synflow.io.image import load_volume

#: desc entity of each figure -> (title, caption, kind); the order is the report's order.
#: ``kind`` is one of synflow.viz.report's kinds: mask, overlay, flicker, grid, jacobian.
FIGURE_SPECS: dict[str, tuple[str, str, str]] = {
    "brainmask": ("Brain mask",
                  "Mean b0 (native space) with the median-Otsu brain mask outlined in red.",
                  "mask"),
    "overlaybefore": ("Before registration",
                      "Reference (red) and b0 (green) in world coordinates, no transform. "
                      "The three overlays share one brightness window per image.",
                      "overlay"),
    "overlayaffine": ("After the affine",
                      "Reference (red) and b0 (green) after the affine pre-alignment.",
                      "overlay"),
    "overlaysyn": ("After SyN",
                   "Reference (red) and b0 (green) after SyN; yellow where both agree.",
                   "overlay"),
    "flickersyn": ("Reference vs. registered b0",
                   "Hover or use the slider: reference and the b0 after SyN; the red outline "
                   "is the reference brain mask.", "flicker"),
    "affinesyn": ("Affine vs. SyN",
                  "Hover or use the slider: the b0 after the affine and after SyN.", "flicker"),
    "grid": ("Deformation", "A regular grid deformed by the SyN displacement field "
             "(reference space).", "grid"),
    "jacobian": ("Jacobian determinant",
                 "Local volume change of the SyN map (1 = none, blue < 1 < red); folding "
                 "(J <= 0) in green.", "jacobian"),
}


#: What the two layers of each flicker figure show: the report's button names.
FLICKER_LABELS: dict[str, tuple[str, str]] = {
    "flickersyn": ("reference", "b0 after SyN"),
    "affinesyn": ("b0 after affine", "b0 after SyN"),
}


def figure_entries(paths: Sequence[str | Path], descs: Sequence[str]) -> list[dict[str, str]]:
    """Report figure dicts (``title``, ``path``, ``caption``, ``kind``) in report order.

    Flicker figures also get ``before_label``/``after_label`` (:data:`FLICKER_LABELS`).
    """
    by_desc = dict(zip(descs, paths, strict=True))
    out = []
    for desc, (title, caption, kind) in FIGURE_SPECS.items():
        if desc in by_desc:
            entry = {"title": title, "path": str(by_desc[desc]), "caption": caption,
                     "kind": kind}
            if desc in FLICKER_LABELS:
                entry["before_label"], entry["after_label"] = FLICKER_LABELS[desc]
            out.append(entry)
    return out


def _arr(fname: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 voxels and affine of one volume (:func:`synflow.io.image.load_volume`)."""
    data, affine, _ = load_volume(fname)
    return data, affine


class _ReportletsInputSpec(BaseInterfaceInputSpec):
    b0_file = File(exists=True, mandatory=True, desc="mean b0 (native)")
    mask_file = File(exists=True, mandatory=True, desc="brain mask (native)")
    reference_file = File(exists=True, mandatory=True, desc="reference image")
    reference_mask = File(exists=True, desc="reference brain mask")
    unaligned_file = File(exists=True, mandatory=True, desc="b0 on the reference grid, no xfm")
    affine_file = File(exists=True, mandatory=True, desc="b0 after the affine (reference grid)")
    warped_file = File(exists=True, mandatory=True, desc="b0 after SyN (reference grid)")
    mapping_file = File(exists=True, mandatory=True, desc="SyN mapping (DIPY layout)")
    series_name = Str("dwi", usedefault=True, desc="name of the series in the report")
    qc = traits.Dict(desc="QC numbers (SyNRegistration.qc)")
    parameters = traits.Dict(desc="parameters to list in the report")
    timings = traits.Dict(desc="seconds per step")


class _ReportletsOutputSpec(TraitedSpec):
    out_figures = OutputMultiObject(File(exists=True), desc="figure files (report order)")
    out_descs = traits.List(Str, desc="desc entity of each figure")
    out_series = File(exists=True, desc="JSON series record for QCReport")


class RegistrationReportlets(SimpleInterface):
    """Draw the QC figures of one series (see :data:`FIGURE_SPECS`) as SVG."""

    input_spec = _ReportletsInputSpec
    output_spec = _ReportletsOutputSpec

    def _run_interface(self, runtime):
        from synflow.align import read_mapping
        from synflow.align.qc import jacobian_determinant
        from synflow.viz import reportlets as rl

        t0 = time.perf_counter()
        cwd = Path(runtime.cwd)
        b0, b0_aff = _arr(self.inputs.b0_file)
        mask, _ = _arr(self.inputs.mask_file)
        ref, ref_aff = _arr(self.inputs.reference_file)
        ref_mask = (_arr(self.inputs.reference_mask)[0] > 0
                    if isdefined(self.inputs.reference_mask) else ref > 0)
        unaligned, _ = _arr(self.inputs.unaligned_file)
        affine, _ = _arr(self.inputs.affine_file)
        warped, _ = _arr(self.inputs.warped_file)
        figs: dict[str, Path] = {}
        figs["brainmask"] = rl.plot_mask_contour(b0, mask > 0, cwd / "brainmask.svg",
                                                 grid2world=b0_aff)
        # one display window per image for the whole series, so every panel shows it
        # with the same brightness: the reference's in its mask, the b0's from the b0
        # after SyN in that same mask (the one placement where both cover the same brain)
        ref_win = rl.intensity_window(ref, ref_mask)
        b0_win = rl.intensity_window(warped, ref_mask)
        for desc, moving in (("overlaybefore", unaligned), ("overlayaffine", affine),
                             ("overlaysyn", warped)):
            figs[desc] = rl.plot_overlay(ref, moving, cwd / f"{desc}.svg", mask=ref_mask,
                                         grid2world=ref_aff, fixed_limits=ref_win,
                                         moving_limits=b0_win)
        labels = FLICKER_LABELS["flickersyn"]
        figs["flickersyn"] = rl.plot_registration(
            ref, warped, cwd / "flickersyn.svg", mask=ref_mask, grid2world=ref_aff,
            fixed_label=labels[0], moving_label=labels[1], contour=ref_mask,
            fixed_limits=ref_win, moving_limits=b0_win)
        figs["affinesyn"] = rl.plot_before_after(
            ref, affine, warped, cwd / "affinesyn.svg", FLICKER_LABELS["affinesyn"],
            mask=ref_mask, grid2world=ref_aff, limits=b0_win)
        mapping = read_mapping(self.inputs.mapping_file)
        disp = np.asarray(mapping.get_forward_field(), dtype=np.float32)
        grid2world = getattr(mapping, "disp_grid2world", None)
        if grid2world is None:
            grid2world = ref_aff
        same_grid = disp.shape[:3] == ref.shape
        figs["grid"] = rl.plot_deformation_grid(
            disp, grid2world, cwd / "grid.svg", mask=ref_mask if same_grid else None,
            background=ref if same_grid else None)
        jac = jacobian_determinant(disp, grid2world)
        figs["jacobian"] = rl.plot_jacobian(jac, cwd / "jacobian.svg",
                                            background=ref if same_grid else None,
                                            mask=ref_mask if same_grid else None,
                                            grid2world=grid2world)
        descs = [d for d in FIGURE_SPECS if d in figs]
        paths = [str(figs[d]) for d in descs]
        timings = dict(self.inputs.timings) if isdefined(self.inputs.timings) else {}
        timings["figures"] = round(time.perf_counter() - t0, 3)
        from synflow.viz.report import series_record

        record = series_record(
            self.inputs.series_name, figures=figure_entries(paths, descs),
            qc=self.inputs.qc if isdefined(self.inputs.qc) else None,
            parameters=self.inputs.parameters if isdefined(self.inputs.parameters) else None,
            timings=timings)
        out_series = cwd / "series.json"
        write_json_atomic(out_series, record)
        self._results.update(out_figures=paths, out_descs=descs, out_series=str(out_series))
        return runtime


def write_report(out_html: str | Path, subject: str, series: Sequence[dict[str, Any]],
                 run_info: dict[str, Any] | None = None) -> Path:
    """Write ``sub-<subject>.html`` with :func:`synflow.viz.report.write_participant_report`.

    ``series`` are :func:`synflow.viz.report.series_record` records (failed series have
    ``status="failed"`` and the error text).
    """
    import synflow
    from synflow.viz.report import write_participant_report

    software = software_versions()
    software.setdefault("synflow", synflow.__version__)
    out = write_participant_report(str(out_html), subject, [to_jsonable(s) for s in series],
                                   software=software, run_info=to_jsonable(run_info or {}))
    return Path(out) if out else Path(out_html)


def software_versions() -> dict[str, str]:
    """Versions of synflow and the libraries whose numbers end up in the outputs."""
    import importlib.metadata as md

    import synflow

    out = {"synflow": synflow.__version__}
    for pkg in ("numpy", "scipy", "nibabel", "nipype", "pybids", "h5py", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


class _QCReportInputSpec(BaseInterfaceInputSpec):
    subject = Str(mandatory=True, desc="participant label (without 'sub-')")
    in_series = InputMultiObject(File(exists=True), mandatory=True,
                                 desc="series records (RegistrationReportlets.out_series)")
    out_report = File(desc="output HTML (default: sub-<subject>.html in the node folder)")


class _QCReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="participant HTML report")


class QCReport(SimpleInterface):
    """Assemble the participant's HTML QC report from per-series records."""

    input_spec = _QCReportInputSpec
    output_spec = _QCReportOutputSpec

    def _run_interface(self, runtime):
        series = [json.loads(Path(f).read_text()) for f in self.inputs.in_series]
        out = (self.inputs.out_report if isdefined(self.inputs.out_report)
               else str(Path(runtime.cwd) / f"sub-{self.inputs.subject}.html"))
        self._results["out_report"] = str(write_report(out, self.inputs.subject, series))
        return runtime
