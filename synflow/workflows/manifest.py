"""The per-series manifest: what the workflow says it wrote, read back by the CLI.

The last node of each series' derivatives workflow (``ds_manifest``, after every sink)
writes ``<manifest_dir>/sub-<label>/<series>.json`` atomically::

    {"run": "<run id>", "participant": "01", "series": "sub-01_dwi",
     "outputs": ["/out/sub-01/dwi/sub-01_desc-b0_dwiref.nii.gz", ...],
     "figures": {"brainmask": "/out/sub-01/figures/...svg", ...}, "qc": {...}}

The manifest lives in the work directory (the derivatives stay BIDS-clean).  Like the sinks
it always runs, so a rerun that reuses every step still writes this run's manifest.  A
series is finished in a run when :func:`read_manifest` returns its manifest: present,
written by that run, and every listed output still on disk -- not when files with the
expected names happen to exist.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    Str,
    TraitedSpec,
    isdefined,
    traits,
)

from synflow._atomic import atomic_path

__all__ = ["WriteManifest", "manifest_path", "read_manifest"]


def manifest_path(manifest_dir: str | os.PathLike, participant: str, series: str) -> Path:
    """``<manifest_dir>/sub-<participant>/<series>.json`` (``series``: the file-name stem)."""
    return Path(manifest_dir) / f"sub-{participant}" / f"{series}.json"


def read_manifest(path: str | os.PathLike, run_id: str) -> dict[str, Any] | None:
    """The manifest at ``path`` if ``run_id`` wrote it and all its outputs exist, else None."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("run") != run_id:
        return None
    listed = list(data.get("outputs") or []) + list((data.get("figures") or {}).values())
    if not data.get("outputs") or not all(Path(p).is_file() for p in listed):
        return None
    return data


class _WriteManifestInputSpec(BaseInterfaceInputSpec):
    manifest_file = Str(mandatory=True, desc="where to write the manifest (JSON)")
    run_id = Str("", usedefault=True, desc="the run that writes it")
    participant = Str("", usedefault=True, desc="participant label (without sub-)")
    series = Str("", usedefault=True, desc="series name (the DWI file-name stem)")
    out_files = InputMultiObject(File(exists=True), mandatory=True,
                                 desc="the data files the sinks wrote")
    figures = InputMultiObject(File(exists=True), desc="the figures the sink wrote")
    figure_descs = InputMultiObject(Str, desc="their desc entities, in the same order")
    qc = traits.Dict(Str, traits.Any, desc="QC numbers of the registration")


class _WriteManifestOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the manifest")


class WriteManifest(SimpleInterface):
    """Write the series manifest (see :mod:`synflow.workflows.manifest`); always runs."""

    input_spec = _WriteManifestInputSpec
    output_spec = _WriteManifestOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        from synflow.interfaces.bids import to_jsonable

        inputs = self.inputs
        figures: dict[str, str] = {}
        if isdefined(inputs.figures) and inputs.figures:
            descs = list(inputs.figure_descs) if isdefined(inputs.figure_descs) else []
            if len(descs) != len(inputs.figures):
                raise ValueError(f"WriteManifest: {len(inputs.figures)} figures but "
                                 f"{len(descs)} figure_descs")
            figures = {d: str(Path(f).absolute()) for d, f in zip(descs, inputs.figures,
                                                                   strict=True)}
        record = {"run": inputs.run_id, "participant": inputs.participant,
                  "series": inputs.series,
                  "outputs": [str(Path(f).absolute()) for f in inputs.out_files],
                  "figures": figures,
                  "qc": to_jsonable(dict(inputs.qc)) if isdefined(inputs.qc) else {}}
        with atomic_path(inputs.manifest_file) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        self._results["out_file"] = str(Path(inputs.manifest_file).absolute())
        return runtime
