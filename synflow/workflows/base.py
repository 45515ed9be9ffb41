"""Top-level workflows: all participants, one participant (fMRIPrep-style factories)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nipype.pipeline import engine as pe

import synflow
from synflow.interfaces.bids import bids_uri, parse_entities, split_ext
from synflow.workflows.dwi import (
    DEFAULT_MASK,
    DEFAULT_MASK_DILATION_MM,
    TEMPLATE_VOXELS,
    estimate_mem_gb,
    init_dwi_derivatives_wf,
    init_dwi_registration_wf,
    syn_settings,
)
from synflow.workflows.manifest import manifest_path
from synflow.workflows.reference import Reference, init_reference_wf


def workflow_name() -> str:
    """``synflow_<major>_<minor>_wf``: caches of incompatible versions are not reused."""
    major, minor = synflow.__version__.split(".")[:2]
    return f"synflow_{major}_{minor}_wf"


@dataclass
class DWISeries:
    """One DWI series to process: the NIfTI, its ``.bval`` and where it came from."""

    dwi_file: str
    bval_file: str
    bvec_file: str | None = None
    nbytes: int = 0
    entities: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.entities:
            self.entities = parse_entities(self.dwi_file)

    @property
    def subject(self) -> str:
        return self.entities["sub"]

    @property
    def name(self) -> str:
        """File-name stem, e.g. ``sub-01_ses-1_run-1_dwi`` (the series' name in reports)."""
        return split_ext(Path(self.dwi_file).name)[0]

    @property
    def wf_name(self) -> str:
        """Nipype-safe workflow name, unique within the participant."""
        stem = re.sub(r"^sub-[A-Za-z0-9]+_?", "", self.name)
        stem = re.sub(r"_?dwi$", "", stem)
        stem = re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_")
        return f"dwi_{stem}_wf" if stem else "dwi_wf"


def init_single_subject_wf(
    subject: str,
    series: Sequence[DWISeries],
    *,
    output_dir: str,
    reference: Reference,
    bids_dir: str | None = None,
    b0_threshold: float = 50.0,
    syn: Mapping[str, Any] | None = None,
    omp_nthreads: int = 1,
    ref_voxels: int = TEMPLATE_VOXELS,
    reportlets: bool = True,
    mask_dilation_mm: float = DEFAULT_MASK_DILATION_MM,
    manifest_dir: str | None = None,
    run_id: str = "",
    name: str | None = None,
) -> pe.Workflow:
    """Process every DWI series of one participant (registration + derivatives).

    One :func:`~synflow.workflows.dwi.init_dwi_registration_wf` and one
    :func:`~synflow.workflows.dwi.init_dwi_derivatives_wf` per series, named after the
    series (``dwi_<entities>_wf``), so series run in parallel under MultiProc and a crash
    in one does not stop the others.  With ``manifest_dir``, each series ends by writing its
    manifest (:func:`~synflow.workflows.manifest.manifest_path`, stamped with ``run_id``).

    Workflow graph for one series ``sub-01_dwi`` (``dwi_wf``: registration, ``ds_wf``:
    derivatives; ``ses-1_run-2`` would give ``dwi_ses_1_run_2_wf``...)
    (:func:`~synflow.workflows.graph.graph_text`, checked by a test)::

        inputnode -> dwi_wf
        dwi_wf -> ds_wf
        ds_wf

    Inputs (``inputnode``)
    ----------------------
    reference, reference_mask
        Reference and its mask (from :func:`init_reference_wf`, same ``mask_dilation_mm``).

    Outputs: none; everything is written to ``output_dir`` by the sinks.
    """
    from nipype.interfaces import utility as niu

    from synflow.interfaces.reports import software_versions

    workflow = pe.Workflow(name=name or f"sub_{subject}_wf")
    inputnode = pe.Node(niu.IdentityInterface(fields=["reference", "reference_mask"]),
                        name="inputnode")
    syn_params = syn_settings(syn)
    parameters = {"B0Threshold": b0_threshold, "MedianOtsu": dict(DEFAULT_MASK),
                  "SyN": syn_params, "SyNMaskDilationMM": float(mask_dilation_mm),
                  "Reference": reference.describe()}
    metadata = {"Parameters": parameters, "SoftwareVersions": software_versions()}
    for item in series:
        reg_wf = init_dwi_registration_wf(
            b0_threshold=b0_threshold, syn=syn_params, omp_nthreads=omp_nthreads,
            mem_gb=estimate_mem_gb(ref_voxels, item.nbytes), series_name=item.name,
            reportlets=reportlets, mask_dilation_mm=mask_dilation_mm, name=item.wf_name)
        reg_wf.inputs.inputnode.dwi_file = item.dwi_file
        reg_wf.inputs.inputnode.bval_file = item.bval_file
        sources = [bids_uri(item.dwi_file, bids_dir), bids_uri(item.bval_file, bids_dir)]
        ds_wf = init_dwi_derivatives_wf(
            output_dir=str(output_dir), space=reference.space, source_file=item.dwi_file,
            sources=sources, metadata=metadata,
            spatial_reference=reference.spatial_reference, reportlets=reportlets,
            manifest_file=(str(manifest_path(manifest_dir, subject, item.name))
                           if manifest_dir else None), run_id=run_id,
            name=item.wf_name.replace("dwi_", "ds_", 1))
        workflow.connect([
            (inputnode, reg_wf, [("reference", "inputnode.reference"),
                                 ("reference_mask", "inputnode.reference_mask")]),
        ])
        for fld in ("b0_file", "mask_file", "b0_ref", "forward_xfm", "inverse_xfm",
                    "affine_xfm", "mapping", "qc", "dipy_meta") + (("figures", "figure_descs")
                                                      if reportlets else ()):
            workflow.connect(reg_wf, f"outputnode.{fld}", ds_wf, f"inputnode.{fld}")
    return workflow


def init_synflow_wf(
    participants: Mapping[str, Sequence[DWISeries]],
    *,
    output_dir: str,
    reference: Reference | None = None,
    bids_dir: str | None = None,
    b0_threshold: float = 50.0,
    syn: Mapping[str, Any] | None = None,
    omp_nthreads: int = 1,
    ref_voxels: int = TEMPLATE_VOXELS,
    reportlets: bool = True,
    mask_dilation_mm: float = DEFAULT_MASK_DILATION_MM,
    crashdump_dirs: Mapping[str, str] | None = None,
    manifest_dir: str | None = None,
    run_id: str = "",
    name: str | None = None,
) -> pe.Workflow:
    """The whole participant-level pipeline: one reference, every participant's series.

    Parameters
    ----------
    participants
        ``{label: [DWISeries, ...]}`` (labels without ``sub-``).
    output_dir
        Root of the BIDS-Derivatives dataset to write.
    reference
        What to register to (default: the bundled MNI152NLin2009aSym b0 template).
    bids_dir
        Raw dataset root, to write ``Sources`` as ``bids:raw:...`` URIs.
    b0_threshold, syn, omp_nthreads, mask_dilation_mm
        See :func:`~synflow.workflows.dwi.init_dwi_registration_wf`.
    ref_voxels
        Voxels of the reference grid (memory declarations).
    crashdump_dirs
        ``{label: folder}`` for each participant's Nipype crash files
        (``<out>/sub-X/log/<run_uuid>``, as fMRIPrep).
    manifest_dir, run_id
        Where each series writes its manifest, and the run id stamped in it
        (:mod:`synflow.workflows.manifest`); None: no manifests.
    name
        Defaults to :func:`workflow_name` (``synflow_0_1_wf``).

    Returns a workflow without inputs or outputs (it reads the files named in
    ``participants`` and writes to ``output_dir``).

    Workflow graph for one participant ``01`` (one ``sub_<label>_wf`` each)
    (:func:`~synflow.workflows.graph.graph_text`, checked by a test)::

        reference_wf -> sub_01_wf
        sub_01_wf
    """
    reference = reference or Reference()
    workflow = pe.Workflow(name=name or workflow_name())
    ref_wf = init_reference_wf(reference, omp_nthreads=omp_nthreads,
                               mask_dilation_mm=mask_dilation_mm)
    for label, series in participants.items():
        if not series:
            continue
        sub_wf = init_single_subject_wf(
            label, series, output_dir=output_dir, reference=reference, bids_dir=bids_dir,
            b0_threshold=b0_threshold, syn=syn, omp_nthreads=omp_nthreads,
            ref_voxels=ref_voxels, reportlets=reportlets, mask_dilation_mm=mask_dilation_mm,
            manifest_dir=manifest_dir, run_id=run_id)
        if crashdump_dirs and label in crashdump_dirs:
            # Nipype 1.11 does not pass a sub-workflow's config down to its nodes (only
            # the top workflow's), so each node of the participant gets its crash folder
            set_node_config(sub_wf, {"execution": {"crashdump_dir":
                                                   str(Path(crashdump_dirs[label]))}})
        workflow.connect([(ref_wf, sub_wf, [
            ("outputnode.reference", "inputnode.reference"),
            ("outputnode.reference_mask", "inputnode.reference_mask")])])
    return workflow


def set_node_config(workflow: pe.Workflow, config: Mapping[str, Mapping[str, Any]]) -> None:
    """Merge ``config`` into every node of ``workflow`` (recursively)."""
    for node_name in workflow.list_node_names():
        node = workflow.get_node(node_name)
        node.config = node.config or {}
        for section, values in config.items():
            node.config.setdefault(section, {}).update(values)
