"""Input side of the command: validate the dataset, find DWI series, check them early.

Checks that need only headers and ``.bval`` files (3-D "DWI", bval count, no b0 under
the threshold, unreadable header) run here, before the workflow is built, so the
message comes in seconds and names the file.  Checks that need the voxel data (NaN
voxels, truncated data) run inside ``ExtractB0`` and are reported per series after
the run.  Either way the other series are processed.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from synflow.cli.errors import ExitCode, SynflowError
from synflow.cli.plugins import container_mount_hint
from synflow.workflows.base import DWISeries


@dataclass
class Problem:
    """A participant or series that will not be processed, and why."""

    participant: str
    series: str
    message: str
    code: ExitCode


@dataclass
class Selection:
    """What the run will process, and what it cannot."""

    participants: dict[str, list[DWISeries]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    #: files PyBIDS found that are not at a BIDS path, and why (listed, not processed)
    ignored: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Validation:
    """The outcome of :func:`validate_dataset`: what ran, and the participants it rejected
    (label -> the validator's error lines about files in that participant's folder)."""

    how: str
    invalid: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def problems(self) -> list[Problem]:
        """One :class:`Problem` per rejected participant (exit 16, BIDS-Apps)."""
        return [Problem(label, "-", (
            f"not valid BIDS ({len(lines)} validator error(s)): " + "; ".join(lines[:5]).rstrip(".")
            + (" ..." if len(lines) > 5 else "")
            + ". Fix them, or use --skip-bids-validation to process it anyway."),
            ExitCode.BIDS_INVALID) for label, lines in sorted(self.invalid.items())]


def validate_dataset(bids_dir: Path, participants: list[str] | None = None) -> Validation:
    """Validate ``bids_dir``; raise :class:`SynflowError` (exit 16) if it is not BIDS.

    Runs the BIDS validator (:mod:`synflow.cli.validator`) on the selected
    ``participants`` (all when None).  Errors about dataset-level files stop the run; errors
    inside one participant's folder reject that participant only (the others run: see
    :meth:`Validation.problems`); warnings are counted.  Without a validator installed, a
    structural check (``dataset_description.json`` with ``Name`` and ``BIDSVersion``, at
    least one ``sub-*`` folder, ``DatasetType`` not ``derivative``) catches the usual
    mistakes (wrong folder, a derivatives folder, a mount that did not happen).
    """
    from synflow.cli.validator import find_validator, run_validator

    _structural_check(bids_dir)  # the usual mistakes, with a clearer message than the tool's
    command = find_validator()
    if command is None:
        return Validation("structural check only (no BIDS validator installed: "
                          "pip install 'synflow[validator]')")
    try:
        result = run_validator(command, bids_dir, participants)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        raise SynflowError(f"the BIDS validator could not run on {bids_dir}: {exc}. "
                           "Use --skip-bids-validation to skip validation.",
                           ExitCode.BIDS_INVALID) from exc
    tool = Path(result.tool).name
    if result.errors:
        shown = "\n  ".join(result.errors[:30])
        more = f"\n  ... and {len(result.errors) - 30} more" if len(result.errors) > 30 else ""
        raise SynflowError(
            f"{bids_dir} is not a valid BIDS dataset ({tool}, {len(result.errors)} "
            f"error(s)):\n  {shown}{more}\nFix the errors above, or use "
            "--skip-bids-validation.", ExitCode.BIDS_INVALID)
    which = "all participants" if participants is None else (
        "participant(s) " + ", ".join(participants))
    bad = f", {len(result.participant_errors)} participant(s) rejected" if (
        result.participant_errors) else ""
    return Validation(f"{tool} on {which}: {result.n_warnings} warning(s){bad}",
                      dict(result.participant_errors))


def _structural_check(bids_dir: Path) -> None:
    """The checks made when no validator is installed (see :func:`validate_dataset`)."""
    desc = bids_dir / "dataset_description.json"
    if not desc.is_file():
        raise SynflowError(
            f"{bids_dir} is not a BIDS dataset: {desc.name} is missing. Point BIDS_DIR at the "
            "dataset root (the folder holding dataset_description.json and the sub-* "
            "folders).", ExitCode.BIDS_INVALID)
    try:
        meta = json.loads(desc.read_text())
    except (OSError, ValueError) as exc:
        raise SynflowError(f"{desc} is not valid JSON ({exc}); fix it or use "
                           "--skip-bids-validation.", ExitCode.BIDS_INVALID) from exc
    missing = [k for k in ("Name", "BIDSVersion") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise SynflowError(f"{desc} lacks the required field(s) {', '.join(missing)}; add "
                           "them or use --skip-bids-validation.", ExitCode.BIDS_INVALID)
    if str(meta.get("DatasetType", "raw")).lower() == "derivative":
        raise SynflowError(f"{bids_dir} is a derivatives dataset (DatasetType=derivative); "
                           "give the raw BIDS dataset.", ExitCode.BIDS_INVALID)
    if not any(p.is_dir() for p in bids_dir.glob("sub-*")):
        raise SynflowError(f"{bids_dir} holds no sub-<label> folders: not a BIDS dataset "
                           "root.", ExitCode.BIDS_INVALID)


def load_filters(path: Path | None) -> dict[str, Any]:
    """Read ``--bids-filter-file``: ``{"dwi": {entity: value}}`` (null/"*" as PyBIDS)."""
    if path is None:
        return {}
    from bids.layout import Query

    if not path.is_file():
        raise SynflowError(f"--bids-filter-file {path} does not exist."
                           f"{container_mount_hint(path)}", ExitCode.NO_INPUT)
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise SynflowError(f"--bids-filter-file {path} is not valid JSON: {exc}",
                           ExitCode.USAGE) from exc
    if not isinstance(data, dict) or any(not isinstance(v, dict) for v in data.values()):
        raise SynflowError(f"--bids-filter-file {path} must hold {{\"dwi\": {{entity: value}}}}",
                           ExitCode.USAGE)
    unknown = set(data) - {"dwi"}
    if unknown:
        raise SynflowError(f"--bids-filter-file {path}: unknown query {sorted(unknown)}; "
                           "synflow reads only \"dwi\"", ExitCode.USAGE)

    if "subject" in data.get("dwi", {}):  # it filed sub-03's data under sub-01 (issue 10)
        raise SynflowError(
            f"--bids-filter-file {path}: 'subject' may not be set in a filter (a filter "
            "narrows the DWI query within each participant; it cannot choose the "
            "participant). Use --participant-label instead.", ExitCode.USAGE)

    def conv(v: Any) -> Any:
        if v is None:
            return Query.NONE
        if v == "*":
            return Query.ANY
        return v
    return {k: conv(v) for k, v in data.get("dwi", {}).items()}


def make_layout(bids_dir: Path, database_dir: Path, reset: bool,
                participants: list[str] | None):
    """PyBIDS layout with its database in ``database_dir`` (per run, as fMRIPrep)."""
    import re

    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    ignore: list[Any] = ["code", "stimuli", "sourcedata", "models", "derivatives",
                         re.compile(r"^\.")]
    if participants:
        # Skip indexing the other participants (big datasets); unknown labels are
        # reported from the folder listing instead.
        keep = "|".join(re.escape(p) for p in participants)
        # (fMRIPrep's pattern: a folder *or file* name of another participant)
        ignore.append(re.compile(rf"sub-(?!({keep})(\b|_))"))
    database_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        return BIDSLayout(str(bids_dir), validate=False, database_path=str(database_dir),
                          reset_database=reset,
                          indexer=BIDSLayoutIndexer(validate=False, ignore=ignore))
    except Exception as exc:  # pybids raises many types for broken datasets
        raise SynflowError(f"PyBIDS could not index {bids_dir}: {exc}",
                           ExitCode.BIDS_INVALID) from exc


def select_series(layout, bids_dir: Path, participant_labels: list[str] | None,
                  session_labels: list[str] | None, filters: dict[str, Any],
                  b0_threshold: float) -> Selection:
    """Find and pre-check every DWI series to process (see the module docstring)."""
    from synflow.cli.names import label_problem

    sel = Selection()
    on_disk = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
    wanted = on_disk if participant_labels is None else participant_labels
    for label in wanted:
        bad_label = label_problem(label)
        if bad_label is not None:
            sel.problems.append(Problem(label, "-", (
                f"folder {bids_dir / ('sub-' + label)}: {bad_label}. Rename the folder (and "
                "the files in it)."), ExitCode.BIDS_INVALID))
            continue
        if label not in on_disk:
            hint = container_mount_hint(bids_dir / f"sub-{label}")
            sel.problems.append(Problem(label, "-", (
                f"participant sub-{label} does not exist in {bids_dir} (found: "
                f"{', '.join(on_disk[:10]) or 'none'}{' ...' if len(on_disk) > 10 else ''}). "
                f"Check --participant-label.{hint}"), ExitCode.NO_INPUT))
            continue
        query: dict[str, Any] = {"subject": label, "datatype": "dwi", "suffix": "dwi",
                                 "extension": [".nii.gz", ".nii"], "return_type": "file"}
        if session_labels:
            query["session"] = session_labels
        query.update(filters)
        files = sorted(layout.get(**query))
        narrowed = bool(session_labels or filters)
        if not files and narrowed and layout.get(subject=label, datatype="dwi", suffix="dwi",
                                                 extension=[".nii.gz", ".nii"]):
            sel.problems.append(Problem(label, "-", (
                f"participant sub-{label} has DWI series, but none matches "
                f"{'--session-label ' + ' '.join(session_labels) if session_labels else ''}"
                f"{' and ' if session_labels and filters else ''}"
                f"{'the --bids-filter-file query ' + json.dumps(filters) if filters else ''}"
                ". Check the labels and the filter."), ExitCode.FILTER_EMPTY))
            continue
        if not files:
            where = f" in session(s) {', '.join(session_labels)}" if session_labels else ""
            sel.problems.append(Problem(label, "-", (
                f"participant sub-{label} has no DWI series{where} "
                f"(looked for {bids_dir}/sub-{label}/[ses-*/]dwi/*_dwi.nii[.gz]"
                f"{' with the --bids-filter-file query' if filters else ''}). Add the data "
                f"or leave the participant out with --participant-label."),
                ExitCode.NO_INPUT))
            continue
        sel.participants[label] = _check_files(sel, layout, label, files, bids_dir,
                                               b0_threshold)
    return sel


def _check_files(sel: Selection, layout, label: str, files: list[str], bids_dir: Path,
                 b0_threshold: float) -> list[DWISeries]:
    """The series of ``files`` that pass; the others go to ``sel.ignored``/``sel.problems``
    (see :mod:`synflow.cli.names`)."""
    from synflow.cli.names import bids_path_problem, entity_problem

    kept = []
    for dwi in files:
        why = bids_path_problem(dwi, bids_dir)
        if why is None:
            kept.append(dwi)
        else:
            sel.ignored.append((dwi, why))
    series = []
    twins: dict[str, list[str]] = {}
    for dwi in kept:  # same series name (.nii and .nii.gz): same outputs, same nodes
        twins.setdefault(DWISeries(dwi, "").wf_name, []).append(dwi)
    for dwi in kept:
        same = twins[DWISeries(dwi, "").wf_name]
        bad = entity_problem(dwi)
        if bad is None and len(same) > 1:
            bad = (f"{dwi}: the same series exists as {' and '.join(sorted(same))}; keep "
                   "one of them (they would write the same outputs).")
        if bad is not None:
            sel.problems.append(Problem(label, Path(dwi).name, bad, ExitCode.DATA_ERROR))
            continue
        item, problem = check_series(layout, dwi, b0_threshold)
        if problem is not None:
            sel.problems.append(Problem(label, item.name if item else Path(dwi).name,
                                        problem[0], problem[1]))
        else:
            series.append(item)
    return series


def _mode(fname: str) -> str:
    try:
        return oct(Path(fname).stat().st_mode & 0o777)[2:].zfill(3)
    except OSError:
        return "?"


def _sidecar(layout, dwi: str, kind: str) -> str | None:
    """The ``.bval``/``.bvec`` file PyBIDS associates with ``dwi`` (inheritance included),
    or None: pybids 0.22's ``get_bval``/``get_bvec`` raise IndexError when there is none."""
    if layout is None:
        return None
    try:
        found = getattr(layout, f"get_{kind}")(dwi)
    except (IndexError, ValueError):
        return None
    return str(found) if found else None


def check_series(layout, dwi: str, b0_threshold: float
                 ) -> tuple[DWISeries | None, tuple[str, ExitCode] | None]:
    """Header-level checks of one DWI series; ``(series, None)`` or ``(?, (message, code))``."""
    bval = _sidecar(layout, dwi, "bval")
    if not bval:
        guess = str(dwi).replace(".nii.gz", ".bval").replace(".nii", ".bval")
        if Path(guess).is_file():
            bval = guess
    item = DWISeries(dwi_file=str(dwi), bval_file=str(bval or ""))
    if not bval:
        return item, (f"{dwi}: no .bval file found (expected {Path(dwi).name.split('.')[0]}"
                      ".bval next to it or inherited from a parent folder); add it.",
                      ExitCode.NO_INPUT)
    item.bvec_file = _sidecar(layout, dwi, "bvec")
    from synflow.interfaces.bids import build_derivative_name

    try:  # output names must exist and be unique before the graph is built
        build_derivative_name(dwi, "dwiref", ".nii.gz", desc="b0")
    except ValueError as exc:
        return item, (str(exc), ExitCode.DATA_ERROR)
    try:
        open(dwi, "rb").close()  # nibabel turns PermissionError into "Could not read file"
        img = nib.load(dwi)
        shape = img.shape
    except PermissionError:
        return item, (f"{dwi}: permission denied: this user cannot read the file (mode "
                      f"{_mode(dwi)}). Make it readable (chmod a+r) or run as its owner.",
                      ExitCode.NO_INPUT)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError...
        return item, (f"{dwi}: cannot read the NIfTI header ({type(exc).__name__}: {exc}). "
                      "The file is corrupt or not NIfTI; re-export or re-copy it.",
                      ExitCode.DATA_ERROR)
    item.nbytes = int(np.prod(shape)) * 4
    if len(shape) != 4 or (len(shape) == 4 and shape[3] == 1):
        return item, (f"{dwi}: a DWI series must be 4-D (x, y, z, volumes); this image is "
                      f"{len(shape)}-D with shape {tuple(shape)}. Is it a single b0 or a "
                      "fieldmap? Move it out of dwi/ or give the full series.",
                      ExitCode.DATA_ERROR)
    from synflow.io.dwi import b0_indices
    from synflow.io.gradients import read_bvals_bvecs

    try:  # the engine's own reader and rule, so what passes here also passes in the run
        bvals, _ = read_bvals_bvecs(bval, None)
    except (OSError, ValueError) as exc:
        return item, (f"{bval}: cannot read b-values ({exc}); it must be one row (or one "
                      "column) of numbers.", ExitCode.DATA_ERROR)
    if bvals.size != shape[3]:
        return item, (f"{bval}: {bvals.size} b-values but {dwi} has {shape[3]} volumes; "
                      "the .bval must list one b-value per volume.", ExitCode.DATA_ERROR)
    bad = np.flatnonzero(~np.isfinite(bvals) | (bvals < 0))
    if bad.size:
        found = ", ".join(f"{v:g} (volume {i})" for i, v in zip(bad[:5], bvals[bad[:5]],
                                                                   strict=True))
        return item, (f"{bval}: b-values must be finite numbers >= 0 s/mm^2; found {found}. "
                      "Fix the .bval file.", ExitCode.DATA_ERROR)
    try:
        b0_indices(bvals, b0_threshold, name=str(bval))
    except ValueError:
        return item, (f"{bval}: no b0 volume (smallest b-value {bvals.min():g} is above "
                      f"--b0-threshold {b0_threshold:g}). If this scanner writes b0s as "
                      "b=5..100, raise --b0-threshold.", ExitCode.DATA_ERROR)
    return item, None
