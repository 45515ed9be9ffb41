"""The derivatives dataset's own files: ``dataset_description.json`` and ``.bidsignore``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import synflow
from synflow._atomic import atomic_path
from synflow.interfaces.bids import write_json_atomic

CODE_URL = "https://github.com/synflow/synflow"
BIDS_VERSION = "1.10.0"
#: Not (yet) in the BIDS spec: transforms (BEP014), figures, logs, reports.
BIDSIGNORE = ["*_xfm.*", "figures/", "logs/", "*/log/", "*.html"]


def generated_by() -> dict[str, Any]:
    """``GeneratedBy`` entry: Name, Version, CodeURL, and Container inside the image."""
    entry: dict[str, Any] = {"Name": "synflow", "Version": synflow.__version__,
                             "CodeURL": CODE_URL}
    if os.environ.get("SYNFLOW_IN_CONTAINER", "").strip().lower() not in ("", "0", "false"):
        tag = os.environ.get("SYNFLOW_CONTAINER_TAG", f"synflow:{synflow.__version__}")
        entry["Container"] = {"Type": os.environ.get("SYNFLOW_CONTAINER_TYPE", "docker"),
                              "Tag": tag}
    return entry


def write_dataset_description(output_dir: Path, bids_dir: Path) -> Path:
    """Write (or update) ``<output_dir>/dataset_description.json`` atomically.

    ``SourceDatasets`` holds the raw dataset's URL/DOI/version when its description
    says so (else its path), and ``DatasetLinks.raw`` makes the ``bids:raw:`` URIs of
    the sidecars resolvable.  ``License`` is copied from the raw dataset.
    """
    raw: dict[str, Any] = {}
    try:
        raw = json.loads((bids_dir / "dataset_description.json").read_text())
    except (OSError, ValueError):
        pass
    source: dict[str, Any] = {"URL": bids_dir.absolute().as_uri()}
    if raw.get("DatasetDOI"):
        source["DOI"] = raw["DatasetDOI"]
    if raw.get("DatasetVersion") or raw.get("Version"):
        source["Version"] = raw.get("DatasetVersion") or raw.get("Version")
    desc: dict[str, Any] = {
        "Name": f"synflow derivatives of {raw.get('Name', bids_dir.name)}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by()],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": bids_dir.absolute().as_uri()},
        "HowToAcknowledge": "Please cite synflow and DIPY (Garyfallidis et al. 2014) and the "
                            "SyN paper (Avants et al. 2008).",
    }
    if raw.get("License"):
        desc["License"] = raw["License"]
    return write_json_atomic(output_dir / "dataset_description.json", desc)


def write_bidsignore(output_dir: Path) -> Path:
    """Write ``.bidsignore`` with :data:`BIDSIGNORE`, keeping lines a user added."""
    path = output_dir / ".bidsignore"
    lines = path.read_text().splitlines() if path.exists() else []
    for entry in BIDSIGNORE:
        if entry not in lines:
            lines.append(entry)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path


def existing_version(output_dir: Path) -> str | None:
    """synflow version that wrote ``output_dir`` before (None if none / unreadable)."""
    try:
        desc = json.loads((output_dir / "dataset_description.json").read_text())
        for entry in desc.get("GeneratedBy", []):
            if entry.get("Name") == "synflow":
                return str(entry.get("Version"))
    except (OSError, ValueError, AttributeError):
        return None
    return None


def participant_write_problem(output_dir: Path, label: str, run_uuid: str) -> str | None:
    """Why ``<out>/sub-<label>`` (and its ``dwi``, ``figures``, ``log/<run>`` folders) cannot
    be written, or None.  Checked before the run, so one read-only participant folder is
    that participant's failure -- not a scheduler stopped by Nipype's crash writer."""
    folder = Path(output_dir) / f"sub-{label}"
    try:
        (folder / "log" / run_uuid).mkdir(parents=True, exist_ok=True)
        for sub in (folder, folder / "dwi", folder / "figures", folder / "log" / run_uuid):
            if sub.is_dir():
                probe = sub / f".synflow-write-test-{os.getpid()}"
                probe.write_text("")
                probe.unlink()
    except OSError as exc:
        where = exc.filename or folder
        return (f"cannot write in {where} ({exc.strerror or exc}): sub-{label} is not "
                f"processed. Make {folder} writable (e.g. chmod -R u+w) and run again.")
    return None
