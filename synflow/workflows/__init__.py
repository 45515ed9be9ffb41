"""Nipype workflow factories (fMRIPrep style: ``init_*_wf(...)`` -> ``Workflow``).

* :func:`init_dwi_registration_wf` -- one DWI series: mean b0 -> median-Otsu ->
  affine -> SyN -> b0 in reference space (+ QC figures);
* :func:`init_dwi_derivatives_wf` -- write one series' outputs as BIDS-Derivatives;
* :func:`init_reference_wf` -- prepare the reference (template, image or participant);
* :func:`init_single_subject_wf` -- every series of one participant;
* :func:`init_synflow_wf` -- the whole participant level (``synflow_0_1_wf``).

:mod:`~synflow.workflows.manifest` -- the per-series manifest the workflow writes last and
the CLI reads; :mod:`~synflow.workflows.graph` -- the graph drawing in the docstrings.
"""

from synflow.workflows.base import (
    DWISeries,
    init_single_subject_wf,
    init_synflow_wf,
    workflow_name,
)
from synflow.workflows.dwi import (
    DEFAULT_SYN,
    init_dwi_derivatives_wf,
    init_dwi_registration_wf,
)
from synflow.workflows.reference import Reference, init_reference_wf

__all__ = [
    "DEFAULT_SYN",
    "DWISeries",
    "Reference",
    "init_dwi_derivatives_wf",
    "init_dwi_registration_wf",
    "init_reference_wf",
    "init_single_subject_wf",
    "init_synflow_wf",
    "workflow_name",
]
