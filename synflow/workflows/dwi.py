"""Workflows for one DWI series: b0 -> mask -> affine -> SyN -> QC figures -> derivatives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from synflow.interfaces import (
    AffinePrealign,
    ApplyMask,
    ApplyRegistration,
    DerivativesDataSink,
    ExtractB0,
    MedianOtsu,
    RegistrationReportlets,
    SyNRegistration,
)
from synflow.interfaces.registration import QCStatus

#: Engine defaults (DIPY's ``SymmetricDiffeomorphicRegistration`` + ``CCMetric``), except
#: ``level_iters``: DIPY's default is [100, 100, 25]; on pre-aligned 2 mm b0s [50, 50, 10]
#: is synflow's recommended setting (bench/RESULTS.md: 0.50 mm mean end-point error in 5.8 s
#: vs 0.67 mm in 3.2 s for DIPY's tutorial value [10, 10, 5]; on the demo dataset
#: 1.08 -> 0.96 mm and 1.21 -> 1.09 mm for +2.7 s per series).
DEFAULT_SYN: dict[str, Any] = {
    "level_iters": [50, 50, 10], "cc_radius": 4, "sigma_diff": 2.0, "step_length": 0.25,
    "ss_sigma_factor": 0.2, "opt_tol": 1e-5, "inv_iter": 20, "inv_tol": 1e-3,
}
#: median-Otsu settings (DIPY's tutorial values).
DEFAULT_MASK: dict[str, Any] = {"median_radius": 4, "numpass": 4}
#: Margin (mm) added around both brain masks for SyN's inputs (see init_dwi_registration_wf).
DEFAULT_MASK_DILATION_MM: float = 6.0

#: Voxels of the bundled 2 mm template grid (98 x 116 x 94), the default reference.
TEMPLATE_VOXELS = 98 * 116 * 94

_OUTPUT_FIELDS = [
    "b0_file", "mask_file", "b0_brain", "prealign", "affine_xfm", "mapping",
    "forward_xfm", "inverse_xfm", "b0_ref", "b0_brain_ref", "qc", "dipy_meta", "parameters",
    "n_b0", "figures", "figure_descs", "series_record",
]


def syn_settings(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:data:`DEFAULT_SYN` updated with ``overrides`` (unknown keys raise ``ValueError``)."""
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULT_SYN.items()}
    for key, value in (overrides or {}).items():
        if key not in out:
            raise ValueError(f"unknown SyN setting {key!r}; known: {sorted(out)}")
        if value is not None:
            out[key] = list(value) if key == "level_iters" else value
    return out


def estimate_mem_gb(ref_voxels: int = TEMPLATE_VOXELS, dwi_bytes: int = 0) -> dict[str, float]:
    """Memory (GB) to declare per node so MultiProc does not overcommit.

    SyN keeps ~20 vector fields (forward/backward, their inverses, the CC factors and
    gradients at the finest level) plus scalar copies: ~100 float32 values per
    reference voxel, plus Python/NumPy overhead.  Measured peak on the 2 mm template
    grid: ~0.5 GB (bench/bench_pipeline.py); these numbers round up.
    """
    gb = 1024 ** 3
    syn = 0.3 + ref_voxels * 4 * 100 / gb
    return {
        "b0": round(0.2 + 2.5 * dwi_bytes / gb, 2),
        "mask": 0.3,
        "affine": round(0.3 + ref_voxels * 4 * 20 / gb, 2),
        "syn": round(syn, 2),
        "apply": round(0.2 + ref_voxels * 4 * 40 / gb, 2),
        "figures": round(0.4 + ref_voxels * 4 * 30 / gb, 2),
    }


def init_dwi_registration_wf(
    *,
    b0_threshold: float = 50.0,
    syn: Mapping[str, Any] | None = None,
    mask: Mapping[str, Any] | None = None,
    omp_nthreads: int = 1,
    mem_gb: Mapping[str, float] | None = None,
    series_name: str = "dwi",
    reportlets: bool = True,
    mask_dilation_mm: float = DEFAULT_MASK_DILATION_MM,
    name: str = "dwi_registration_wf",
) -> pe.Workflow:
    """Register the mean b0 of one DWI series to a reference with affine + SyN.

    Workflow graph, node -> the nodes it feeds
    (:func:`~synflow.workflows.graph.graph_text`, checked by a test)::

        inputnode -> affine_prealign, extract_b0, reportlets, syn
        extract_b0 -> b0_to_reference, median_otsu, outputnode, reportlets, syn_input
        median_otsu -> affine_prealign, outputnode, qc_status, reportlets, syn_input
        affine_prealign -> outputnode, reportlets, syn
        syn_input -> syn
        syn -> b0_to_reference, outputnode, qc_status, reportlets
        b0_to_reference -> outputnode
        qc_status -> outputnode, reportlets
        reportlets -> outputnode
        outputnode

    (``extract_b0``: ExtractB0, ``median_otsu``: MedianOtsu, ``syn_input``: ApplyMask with
    the grown mask, ``affine_prealign``: AffinePrealign, ``syn``: SyNRegistration,
    ``qc_status``: QCStatus (QC numbers + data record + verdict ``QCStatus``/``QCWarnings``),
    ``b0_to_reference``: ApplyRegistration, ``reportlets``: RegistrationReportlets, only
    with ``reportlets=True``.)

    Parameters
    ----------
    b0_threshold
        Volumes with ``b <= b0_threshold`` (s/mm^2) are averaged into the mean b0.
    syn
        Overrides of :data:`DEFAULT_SYN` (``level_iters``, ``cc_radius``, ``sigma_diff``,
        ``step_length``, ``ss_sigma_factor``, ``opt_tol``, ``inv_iter``, ``inv_tol``).
    mask
        Overrides of :data:`DEFAULT_MASK` (median-Otsu ``median_radius``, ``numpass``).
    omp_nthreads
        Threads of the engine nodes (declared as the node's ``n_procs``).
    mem_gb
        Per-node memory declarations (keys as :func:`estimate_mem_gb`).
    series_name
        Name of the series in the QC report.
    reportlets
        Also draw the QC figures (``RegistrationReportlets``).
    mask_dilation_mm
        SyN sees the mean b0 masked by its median-Otsu mask grown by this distance (mm);
        give the reference the same treatment (:func:`~synflow.workflows.reference.
        init_reference_wf` with the same value).  0 = skull-stripped exactly at the mask,
        as in DIPY's tutorial.  Why not 0: the two masks' borders do not correspond, and SyN
        then spends its effort matching two artificial edges; a margin of ~6 mm puts the
        cut in the CSF/skull of both images (on the demo dataset: end-point error 1.41 ->
        1.12 mm and 1.86 -> 1.22 mm, as good as registering the whole heads).  The affine
        step always uses the exact masks.

    Inputs (``inputnode``)
    ----------------------
    dwi_file, bval_file
        The 4-D DWI series and its ``.bval``.
    reference, reference_mask
        The reference image, masked by its brain mask grown by ``mask_dilation_mm``
        (``init_reference_wf``'s ``reference``), and its brain mask.

    Outputs (``outputnode``)
    ------------------------
    b0_file, mask_file, b0_brain
        Mean b0, brain mask and skull-stripped mean b0 (native grid).
    prealign
        4x4 prealign (reference-world -> b0-world, text).
    affine_xfm, forward_xfm, inverse_xfm, mapping
        ITK affine (.txt), ITK composite (.h5) b0->reference and reference->b0, and the
        DIPY-layout mapping (.nii.gz).
    b0_ref, b0_brain_ref
        Mean b0 (whole head) and skull-stripped b0 resampled onto the reference.
    qc, parameters, n_b0
        QC numbers (with ``QCStatus``, ``QCWarnings`` and the data record, see
        :func:`synflow.interfaces.registration.qc_status`) and engine parameters (dicts),
        number of b0 volumes averaged.
    dipy_meta
        What DIPY's own ``read_mapping`` needs to use ``mapping`` (grids, prealign).
    figures, figure_descs, series_record
        QC figures, their ``desc`` entities, and the JSON record for ``QCReport``.
    """
    syn_params = syn_settings(syn)
    mask_params = {**DEFAULT_MASK, **(mask or {})}
    mem = {**estimate_mem_gb(), **(mem_gb or {})}
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=["dwi_file", "bval_file", "reference", "reference_mask"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=_OUTPUT_FIELDS), name="outputnode")

    extract_b0 = pe.Node(ExtractB0(b0_threshold=b0_threshold), name="extract_b0",
                         mem_gb=mem["b0"])
    skullstrip = pe.Node(MedianOtsu(**mask_params), name="median_otsu", mem_gb=mem["mask"])
    syn_input = pe.Node(ApplyMask(dilation_mm=mask_dilation_mm), name="syn_input",
                        mem_gb=mem["mask"])
    prealign = pe.Node(AffinePrealign(num_threads=omp_nthreads), name="affine_prealign",
                       n_procs=omp_nthreads, mem_gb=mem["affine"])
    syn_node = pe.Node(SyNRegistration(num_threads=omp_nthreads, **syn_params),
                       name="syn", n_procs=omp_nthreads, mem_gb=mem["syn"])
    status = pe.Node(QCStatus(), name="qc_status", run_without_submitting=True, mem_gb=0.1)
    # the whole-head mean b0 goes to the reference space with the saved mapping: the
    # same code path users get from ApplyRegistration on any other image
    b0_to_ref = pe.Node(ApplyRegistration(direction="forward", interpolation="linear",
                                          out_suffix="_ref", num_threads=omp_nthreads),
                        name="b0_to_reference", n_procs=omp_nthreads, mem_gb=mem["apply"])

    workflow.connect([
        (inputnode, extract_b0, [("dwi_file", "in_file"), ("bval_file", "in_bval")]),
        (extract_b0, skullstrip, [("out_file", "in_file"), ("out_nonfinite", "nonfinite_mask"),
                                  ("data_qc", "data_qc")]),
        (inputnode, prealign, [("reference", "reference_file"),
                               ("reference_mask", "reference_mask")]),
        (skullstrip, prealign, [("out_file", "moving_file"), ("out_mask", "moving_mask")]),
        (inputnode, syn_node, [("reference", "reference_file"),
                               ("reference_mask", "reference_mask")]),
        (extract_b0, syn_input, [("out_file", "in_file")]),
        (skullstrip, syn_input, [("out_mask", "in_mask")]),
        (syn_input, syn_node, [("out_file", "moving_file")]),
        (prealign, syn_node, [("out_matrix", "prealign_file")]),
        (extract_b0, b0_to_ref, [("out_file", "in_file")]),
        (syn_node, b0_to_ref, [("out_mapping", "mapping_file")]),
        (extract_b0, outputnode, [("out_file", "b0_file"), ("n_b0", "n_b0")]),
        (skullstrip, outputnode, [("out_mask", "mask_file"), ("out_file", "b0_brain")]),
        (prealign, outputnode, [("out_matrix", "prealign")]),
        (syn_node, outputnode, [("out_affine_xfm", "affine_xfm"), ("out_mapping", "mapping"),
                                ("out_forward_xfm", "forward_xfm"),
                                ("out_inverse_xfm", "inverse_xfm"),
                                ("out_file", "b0_brain_ref"),
                                ("dipy_meta", "dipy_meta"),
                                ("parameters", "parameters")]),
        (syn_node, status, [("qc", "qc")]),
        (skullstrip, status, [("data_qc", "data_qc")]),
        (status, outputnode, [("qc", "qc")]),
        (b0_to_ref, outputnode, [("out_file", "b0_ref")]),
    ])
    if reportlets:
        figures = pe.Node(RegistrationReportlets(series_name=series_name,
                                                 parameters={"b0_threshold": b0_threshold,
                                                             "median_otsu": mask_params,
                                                             "syn": syn_params}),
                          name="reportlets", mem_gb=mem["figures"])
        workflow.connect([
            (extract_b0, figures, [("out_file", "b0_file")]),
            (skullstrip, figures, [("out_mask", "mask_file")]),
            (inputnode, figures, [("reference", "reference_file"),
                                  ("reference_mask", "reference_mask")]),
            (prealign, figures, [("out_file", "affine_file")]),
            (syn_node, figures, [("out_unaligned", "unaligned_file"),
                                 ("out_file", "warped_file"),
                                 ("out_mapping", "mapping_file")]),
            (status, figures, [("qc", "qc")]),
            (figures, outputnode, [("out_figures", "figures"), ("out_descs", "figure_descs"),
                                   ("out_series", "series_record")]),
        ])
    return workflow


def init_dwi_derivatives_wf(
    *,
    output_dir: str,
    space: str,
    source_file: str,
    sources: Sequence[str] = (),
    metadata: Mapping[str, Any] | None = None,
    spatial_reference: str | None = None,
    reportlets: bool = True,
    manifest_file: str | None = None,
    run_id: str = "",
    name: str = "dwi_derivatives_wf",
) -> pe.Workflow:
    """Write one series' outputs as BIDS-Derivatives (names from ``source_file``'s entities).

    Files (``<output_dir>/sub-X[/ses-Y]/dwi/``; ``<p>`` = the source's entities)::

        <p>_desc-b0_dwiref.nii.gz                               mean b0, native
        <p>_desc-brain_mask.nii.gz                              median-Otsu mask, native
        <p>_space-<space>_desc-b0_dwiref.nii.gz                 mean b0 on the reference
        <p>_from-dwiref_to-<space>_mode-image_xfm.h5            ITK composite, b0 -> ref
        <p>_from-<space>_to-dwiref_mode-image_xfm.h5            ITK composite, ref -> b0
        <p>_from-dwiref_to-<space>_mode-image_desc-affine_xfm.txt   ITK affine (prealign)
        <p>_from-dwiref_to-<space>_mode-image_desc-dipy_xfm.nii.gz  DIPY layout mapping

    each with a JSON sidecar (``Sources`` as BIDS URIs, every parameter, software
    versions, QC numbers for the registration outputs), and the figures in
    ``<output_dir>/sub-X/figures/<p>_desc-<figure>_dwi.svg``.

    Workflow graph, with ``reportlets`` and ``manifest_file``
    (:func:`~synflow.workflows.graph.graph_text`, checked by a test)::

        inputnode -> ds_affine_xfm, ds_b0, ds_b0_ref, ds_dipy_xfm, ds_figures, ds_fwd_xfm,
                     ds_inv_xfm, ds_manifest, ds_mask
        ds_affine_xfm -> merge_outputs
        ds_b0 -> merge_outputs
        ds_b0_ref -> merge_outputs
        ds_dipy_xfm -> merge_outputs
        ds_figures -> ds_manifest
        ds_fwd_xfm -> merge_outputs
        ds_inv_xfm -> merge_outputs
        ds_mask -> merge_outputs
        merge_outputs -> ds_manifest, outputnode
        ds_manifest
        outputnode

    Parameters
    ----------
    output_dir
        Root of the derivatives dataset.
    space
        ``space``/``to`` entity of the reference (e.g. ``MNI152NLin2009aSym``).
    source_file
        The raw DWI file (its entities name the outputs).
    sources
        BIDS URIs of the raw inputs (``bids:raw:sub-01/dwi/sub-01_dwi.nii.gz``, ...).
    metadata
        Extra sidecar metadata common to every output (parameters, software...).
    spatial_reference
        ``SpatialReference`` for outputs in the reference space (needed when ``space``
        is not a standard template identifier).
    manifest_file, run_id
        If given, a last node (``ds_manifest``) writes the series manifest there once every
        sink has run, stamped with ``run_id`` (see :mod:`synflow.workflows.manifest`).

    Inputs (``inputnode``)
    ----------------------
    The fields of :func:`init_dwi_registration_wf`'s ``outputnode`` (``b0_file``,
    ``mask_file``, ``b0_ref``, ``forward_xfm``, ``inverse_xfm``, ``affine_xfm``,
    ``mapping``, ``qc``, ``figures``, ``figure_descs``).

    Outputs (``outputnode``)
    ------------------------
    out_files
        The stored data files.
    """
    from synflow.interfaces.bids import build_derivative_name

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=_OUTPUT_FIELDS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    common = dict(metadata or {})
    b0_name = build_derivative_name(source_file, "dwiref", ".nii.gz", desc="b0")
    mask_name = build_derivative_name(source_file, "mask", ".nii.gz", desc="brain")
    rel = _rel_dwi_dir(source_file)
    ref_meta = {"SpatialReference": spatial_reference} if spatial_reference else {}

    def sink(name_: str, meta: dict, srcs: Sequence[str], **kwargs) -> pe.Node:
        return pe.Node(DerivativesDataSink(base_directory=output_dir, source_file=source_file,
                                           meta_dict={**meta, **common}, sources=list(srcs),
                                           **kwargs),
                       name=name_, run_without_submitting=True, mem_gb=0.05)

    xfm_sources = [f"bids::{rel}/{b0_name}"] + ([f"bids::{rel}/{mask_name}"])
    specs = [
        ("ds_b0", "b0_file", sink("ds_b0", {"Description": "Mean of the b0 volumes"},
                                  sources, suffix="dwiref", desc="b0")),
        ("ds_mask", "mask_file", sink("ds_mask", {"Type": "Brain",
                                                  "Description": "median-Otsu brain mask"},
                                      [f"bids::{rel}/{b0_name}"], suffix="mask", desc="brain")),
        ("ds_b0_ref", "b0_ref", sink("ds_b0_ref", {**ref_meta, "Description":
                                                   "Mean b0 resampled onto the reference "
                                                   "(affine + SyN, trilinear)"},
                                     xfm_sources, suffix="dwiref", desc="b0", space=space)),
        ("ds_fwd_xfm", "forward_xfm", sink(
            "ds_fwd_xfm", {"Description": "ITK/ANTs composite transform (affine + SyN "
                           "displacement field): resamples a b0-space image onto the "
                           "reference (antsApplyTransforms -t this)", **ref_meta},
            xfm_sources, suffix="xfm", from_="dwiref", to=space, mode="image")),
        ("ds_inv_xfm", "inverse_xfm", sink(
            "ds_inv_xfm", {"Description": "ITK/ANTs composite transform: resamples a "
                           "reference-space image onto the b0 grid", **ref_meta},
            xfm_sources, suffix="xfm", from_=space, to="dwiref", mode="image")),
        ("ds_affine_xfm", "affine_xfm", sink(
            "ds_affine_xfm", {"Description": "Affine pre-alignment (ITK text transform)",
                              **ref_meta},
            xfm_sources, suffix="xfm", from_="dwiref", to=space, mode="image", desc="affine")),
        ("ds_dipy_xfm", "mapping", sink(
            "ds_dipy_xfm", {"Description": "SyN mapping in DIPY's write_mapping layout "
                            "(X,Y,Z,3,2); synflow.align.read_mapping(fname) restores it; "
                            "for DIPY's own read_mapping see DIPYReadMapping",
                            **ref_meta},
            xfm_sources, suffix="xfm", from_="dwiref", to=space, mode="image", desc="dipy")),
    ]
    merge = pe.Node(niu.Merge(len(specs)), name="merge_outputs", run_without_submitting=True)
    for i, (_, field, node) in enumerate(specs, start=1):
        workflow.connect(inputnode, field, node, "in_file")
        workflow.connect(node, "out_file", merge, f"in{i}")
        if field not in ("b0_file", "mask_file"):
            workflow.connect(inputnode, "qc", node, "qc")
    ds_dipy = next(node for name_, _, node in specs if name_ == "ds_dipy_xfm")
    workflow.connect(inputnode, "dipy_meta", ds_dipy, "extra_meta")
    workflow.connect(merge, "out", outputnode, "out_files")
    if reportlets:
        ds_figures = pe.Node(DerivativesDataSink(base_directory=output_dir,
                                                 source_file=source_file, datatype="figures",
                                                 suffix="dwi", write_sidecar=False),
                             name="ds_figures", run_without_submitting=True, mem_gb=0.05)
        workflow.connect([(inputnode, ds_figures, [("figures", "in_file"),
                                                   ("figure_descs", "desc")])])
    if manifest_file:
        from synflow.interfaces.bids import parse_entities, split_ext
        from synflow.workflows.manifest import WriteManifest

        manifest = pe.Node(WriteManifest(manifest_file=str(manifest_file), run_id=run_id,
                                         participant=parse_entities(source_file)["sub"],
                                         series=Path(split_ext(source_file)[0]).name),
                           name="ds_manifest", run_without_submitting=True, mem_gb=0.05)
        workflow.connect([(merge, manifest, [("out", "out_files")]),
                          (inputnode, manifest, [("qc", "qc")])])
        if reportlets:
            workflow.connect([(ds_figures, manifest, [("out_file", "figures")]),
                              (inputnode, manifest, [("figure_descs", "figure_descs")])])
    return workflow


def _rel_dwi_dir(source_file: str) -> str:
    """``sub-X[/ses-Y]/dwi`` of a source file (for ``bids::`` URIs of our own outputs)."""
    from synflow.interfaces.bids import parse_entities

    ent = parse_entities(source_file)
    return "/".join([f"sub-{ent['sub']}"] + ([f"ses-{ent['ses']}"] if "ses" in ent else [])
                    + ["dwi"])
