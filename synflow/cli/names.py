"""Which files PyBIDS found are DWI series synflow may process: BIDS paths and labels.

PyBIDS indexes whatever lies under a participant folder: a stray copy in
``sub-01/dwi/old/``, the endless ``sub-01/dwi/loop/loop/...`` of a symlink loop
(``loop -> .``), a file named ``sub-01_acq-<img src=x>_dwi.nii.gz``.  Entity values are
copied into derivative file names and the HTML report, and two such files give two series
the same outputs.  So, before anything is built:

* a file that is not at a BIDS path (``sub-<l>/[ses-<l>/]dwi/<name>``, the folders matching
  the name's ``sub``/``ses`` entities) is **ignored** and listed in the run's log;
* a file at a BIDS path whose entities are not BIDS-valid (unknown key, a value that is not
  alphanumeric, a ``run`` that is not a number) is a **data error of that series** (65);
* a participant folder whose label is not alphanumeric (``sub-a b``, ``sub-ü1``) is
  reported as not valid BIDS (16), not as "without DWI".
"""

from __future__ import annotations

import re
from pathlib import Path

from synflow.interfaces.bids import RAW_ENTITIES, parse_entities

__all__ = ["bids_path_problem", "entity_problem", "label_problem"]

_LABEL = re.compile(r"[A-Za-z0-9]+")
#: Entities BIDS allows in a DWI file name (``dwi`` datatype, ``dwi`` suffix).
DWI_ENTITIES = ("sub", "ses", "acq", "rec", "dir", "run", "part", "chunk")


def label_problem(label: str) -> str | None:
    """Why ``label`` (of a ``sub-``/``ses-`` folder) is not a BIDS label, or None."""
    if _LABEL.fullmatch(label):
        return None
    return (f"{label!r} is not a valid BIDS label (letters A-Z, a-z and digits 0-9 only, "
            "no spaces, accents or punctuation)")


def bids_path_problem(fname: str, bids_dir: Path) -> str | None:
    """Why ``fname`` is not at a BIDS DWI path under ``bids_dir``, or None.

    Compares the path as found (symlinks are not resolved: a DataLad dataset's files
    are links), then, if ``bids_dir`` was given through a link, as resolved.
    """
    path = Path(fname)
    for root in (bids_dir, bids_dir.resolve()):
        try:
            rel = path.relative_to(root).parts
            break
        except ValueError:
            continue
    else:
        return f"not under {bids_dir}"
    try:
        ent = parse_entities(path.name)
    except ValueError as exc:
        return str(exc).split(": ", 1)[-1]
    want = [f"sub-{ent['sub']}"] + ([f"ses-{ent['ses']}"] if "ses" in ent else []) + ["dwi"]
    if list(rel[:-1]) != want:
        return (f"not at a BIDS path: expected {'/'.join(want)}/{path.name}, found in "
                f"{'/'.join(rel[:-1])}/ (a stray copy, a sub-folder or a symlink loop)")
    return None


def entity_problem(fname: str) -> str | None:
    """Why the entities of DWI file ``fname`` are not BIDS-valid, or None."""
    try:
        ent = parse_entities(Path(fname).name)
    except ValueError as exc:
        return str(exc)
    bad = []
    for key, value in ent.items():
        if key in ("suffix", "extension"):
            continue
        if key not in DWI_ENTITIES:
            known = "" if key in RAW_ENTITIES else " unknown"
            bad.append(f"{key!r} is a{known} entity not allowed in a DWI file name")
        elif not _LABEL.fullmatch(value):
            bad.append(f"{key}-{value!r} is not an alphanumeric BIDS label")
        elif key in ("run", "chunk") and not value.isdigit():
            bad.append(f"{key}-{value!r} must be a number")
    if not bad:
        return None
    return (f"{fname}: {'; '.join(bad)}. Rename the file with valid BIDS entities "
            f"({', '.join(DWI_ENTITIES)}; labels are letters and digits).")
