"""The BIDS validator: find it, run it on the selected participants, read its verdict.

synflow runs the schema-based validator people use today (the Deno build of
``bids-standard/bids-validator``), installed from PyPI as ``bids-validator-deno``
(``pip install 'synflow[validator]'``; the container images ship it).  An executable
``bids-validator`` on ``PATH`` (the npm or Deno build) is used when the PyPI one is absent.
pybids' ``bids-validator`` *Python* package is only a filename checker with no
executable, so it does not count.

Only the selected participants are validated: the validator is pointed at a temporary
folder of symbolic links holding the dataset's top-level files and folders and the
selected ``sub-<label>`` folders only (the validator has no participant option), so one
broken participant outside the selection never blocks a run (as ``--participant-label``
promises).  The input dataset is only read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ValidatorResult", "find_validator", "run_validator"]

#: Longest a validator run may take, seconds.
TIMEOUT_S = 600


@dataclass(frozen=True)
class ValidatorResult:
    """What the validator said, and which tool said it.

    ``errors`` are the dataset-level errors (each one line), ``participant_errors`` the
    errors located inside one ``sub-<label>`` folder (label -> lines): a broken
    participant is reported and skipped while the others run.
    """

    tool: str
    errors: tuple[str, ...]
    participant_errors: dict[str, tuple[str, ...]]
    n_warnings: int


def find_validator() -> list[str] | None:
    """The command line that runs the validator (``[..., DATASET]`` appended), or None.

    Prefers ``bids-validator-deno`` next to this Python (the PyPI package), then on PATH,
    then a ``bids-validator`` executable on PATH.
    """
    here = Path(sys.executable).parent / "bids-validator-deno"
    candidates = [str(here)] if here.is_file() else []
    candidates += [c for c in (shutil.which("bids-validator-deno"), shutil.which("bids-validator"))
                   if c]
    return [candidates[0]] if candidates else None


def _selected_view(bids_dir: Path, participants: Iterable[str] | None, where: Path) -> Path:
    """A folder of symlinks: the dataset without the ``sub-*`` folders not selected."""
    keep = None if participants is None else {f"sub-{p}" for p in participants}
    view = where / bids_dir.name
    view.mkdir()
    for entry in bids_dir.iterdir():
        if entry.name.startswith("sub-") and keep is not None and entry.name not in keep:
            continue
        os.symlink(entry.resolve(), view / entry.name)
    return view


def _issue_lines(report: dict) -> tuple[list[tuple[str, str]], int]:
    """Errors as ``(location, "CODE: location: message")``, and the number of warnings.

    Reads the schema validator's report (``issues.issues``, each with a severity) and the
    legacy Node validator's (``issues.errors`` / ``issues.warnings``, each with files).
    """
    issues = report.get("issues", {})
    if "errors" in issues or "warnings" in issues:  # legacy (bids-validator 1.x)
        errors = []
        for err in issues.get("errors", []):
            files = [f.get("file", {}).get("relativePath", "") for f in err.get("files", [])
                     if f.get("file")] or [""]
            for where in files:
                errors.append((where, ": ".join(p for p in (err.get("key", "ERROR"), where,
                                                            err.get("reason", "")) if p)))
        return errors, len(issues.get("warnings", []))
    explain = issues.get("codeMessages", {}) or {}
    errors, n_warn = [], 0
    for issue in issues.get("issues", []):
        if issue.get("severity") != "error":
            n_warn += 1
            continue
        where = issue.get("location") or ""
        text = (issue.get("issueMessage") or str(explain.get(issue.get("code"), ""))
                or issue.get("subCode") or "").strip().splitlines()
        errors.append((where, ": ".join(p for p in (issue.get("code", "ERROR"), where,
                                                    text[0] if text else "") if p)))
    return errors, n_warn


def run_validator(command: list[str], bids_dir: Path,
                  participants: Iterable[str] | None = None) -> ValidatorResult:
    """Run ``command`` on the selected participants of ``bids_dir`` (JSON output).

    Raises ``OSError``/``subprocess.TimeoutExpired`` when it cannot run and ``ValueError``
    when its output is not the JSON report it should be.
    """
    with tempfile.TemporaryDirectory(prefix="synflow-validate-") as tmp:
        view = _selected_view(Path(bids_dir), participants, Path(tmp))
        # '--json' is what every build understands (the legacy Node one has no '--format')
        fmt = ["--format", "json"] if Path(command[0]).name.endswith("-deno") else ["--json"]
        proc = subprocess.run([*command, str(view), *fmt], capture_output=True,
                              text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    out = proc.stdout.strip()
    try:
        report = json.loads(out[out.index("{"):]) if "{" in out else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        raise ValueError(f"{command[0]} exited {proc.returncode} without a JSON report: "
                         f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    lines, n_warn = _issue_lines(report)
    dataset, by_participant = [], {}
    for location, line in lines:
        parts = location.strip("/").split("/")
        if parts and parts[0].startswith("sub-") and len(parts) > 1:
            by_participant.setdefault(parts[0][4:], []).append(line)
        else:
            dataset.append(line)
    return ValidatorResult(tool=command[0], errors=tuple(dataset),
                           participant_errors={k: tuple(v) for k, v in by_participant.items()},
                           n_warnings=n_warn)
