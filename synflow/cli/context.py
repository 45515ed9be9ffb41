"""The facts of one ``synflow`` run, fixed once the run starts (one frozen record)."""

from __future__ import annotations

import sys
import time
from argparse import Namespace
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

from synflow.workflows.reference import Reference


@dataclass(frozen=True)
class RunContext:
    """Everything the run's steps share: options, folders, run id, plugin, reference.

    ``t_start`` is :func:`time.monotonic` at the start (elapsed times); ``command`` is the
    command line as run.  ``manifest_dir`` (in the work directory) holds the per-series
    manifests the workflow writes (:mod:`synflow.workflows.manifest`).
    """

    opts: Namespace
    bids_dir: Path
    output_dir: Path
    work_dir: Path
    run_uuid: str
    reference: Reference
    ref_voxels: int = 0
    plugin: str = "MultiProc"
    plugin_args: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    omp_nthreads: int = 1
    command: str = "synflow"
    stream: TextIO = field(default=sys.stdout, repr=False)
    t_start: float = field(default_factory=time.monotonic)

    @property
    def manifest_dir(self) -> Path:
        """``<work>/manifests``: one ``sub-<label>/<series>.json`` per series."""
        return self.work_dir / "manifests"

    @property
    def run_crash_dir(self) -> Path:
        """``<out>/logs/<run_uuid>``: crash files of nodes outside any participant."""
        return self.output_dir / "logs" / self.run_uuid

    def participant_crash_dir(self, label: str) -> Path:
        """``<out>/sub-<label>/log/<run_uuid>`` (fMRIPrep's place for crash files)."""
        return self.output_dir / f"sub-{label}" / "log" / self.run_uuid
