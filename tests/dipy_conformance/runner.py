"""Run DIPY's own test files against synflow's mirrored modules (issue 9).

The test files of the installed DIPY are copied with their imports rewritten
(:mod:`tests.dipy_conformance.rewrite`), run with pytest in a subprocess, and each
test's outcome is read from a JUnit XML report and compared with the list of expected
failures (:mod:`tests.dipy_conformance.expected`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .rewrite import rewrite_source

#: DIPY test files (relative to the ``dipy`` package) whose module synflow mirrors.
TEST_FILES: tuple[str, ...] = (
    "align/tests/test_imwarp.py",
    "align/tests/test_imaffine.py",
    "align/tests/test_metrics.py",
    "align/tests/test_transforms.py",
    "align/tests/test_api.py",
    "align/tests/test_reslice.py",
    "align/tests/test_scalespace.py",
    "segment/tests/test_mask.py",
    "viz/tests/test_regtools.py",
)

#: Settings of the DIPY conftest that the tests rely on (print options, warning filters),
#: and no downloads: a test needing a DIPY data set that is not in ~/.dipy is *skipped*
#: (set SYNFLOW_CONFORMANCE_FETCH=1 to let DIPY download it).
_CONFTEST = '''\
import os
import warnings

import numpy as np
import pytest

np.set_printoptions(legacy="1.13")
warnings.simplefilter(action="default", category=FutureWarning)

from dipy.data import fetcher as _fetcher  # noqa: E402


class DataUnavailable(_fetcher.FetcherError):
    pass


if not os.environ.get("SYNFLOW_CONFORMANCE_FETCH"):
    def _no_download(fname, url, **kwargs):
        raise DataUnavailable(f"DIPY data not available offline: {url}")

    _fetcher._get_file_data = _no_download


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and call.excinfo.errisinstance(_fetcher.FetcherError):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), 0, f"Skipped: {call.excinfo.value}")
'''


@dataclass(frozen=True)
class Outcome:
    """One test's result: ``status`` is passed, failed, error or skipped."""

    test_id: str
    status: str
    seconds: float
    message: str = ""


def dipy_root() -> Path:
    import dipy

    return Path(dipy.__file__).parent


def _synflow_root() -> Path:
    import synflow

    return Path(synflow.__file__).resolve().parents[1]


def prepare(workdir: Path, files: tuple[str, ...] = TEST_FILES) -> list[Path]:
    """Write the rewritten copies of ``files`` under ``workdir``; returns their paths."""
    root = dipy_root()
    (workdir / "pytest.ini").write_text("[pytest]\n")
    (workdir / "conftest.py").write_text(_CONFTEST)
    out = []
    for rel in files:
        src = root / rel
        if not src.exists():
            continue
        dst = workdir / rel.replace("/tests/", "/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(rewrite_source(src.read_text()))
        out.append(dst)
    return out


def _test_id(classname: str, name: str) -> str:
    """JUnit ``align.test_imwarp`` + ``test_x`` -> ``align/tests/test_imwarp.py::test_x``."""
    if not classname:  # a collection error: the whole file
        pkg, _, mod = name.partition(".")
        return f"{pkg}/tests/{mod}.py"
    parts = classname.split(".")
    # classname = <package>.<module>[.<TestClass>...]
    pkg, mod, classes = parts[0], parts[1], parts[2:]
    return "::".join([f"{pkg}/tests/{mod}.py", *classes, name])


def parse_junit(xml_path: Path) -> list[Outcome]:
    outcomes = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                status = {"failure": "failed"}.get(tag, tag)
                message = (child.get("message") or "").splitlines()[0][:300] if (
                    child.get("message")) else ""
                break
        outcomes.append(
            Outcome(_test_id(case.get("classname", ""), case.get("name", "")), status,
                    float(case.get("time", 0.0)), message)
        )
    return outcomes


def _local(test_id: str) -> str:
    """``align/tests/test_api.py::test_x`` -> the rewritten copy's ``align/test_api.py::test_x``."""
    return test_id.replace("/tests/", "/", 1)


def run(workdir: Path, files: tuple[str, ...] = TEST_FILES, timeout: float = 600.0,
        extra_args: tuple[str, ...] = (), deselect: tuple[str, ...] = ()) -> list[Outcome]:
    """Rewrite ``files`` into ``workdir``, run them with pytest, return every outcome.

    ``deselect``: test ids (``<package>/tests/<file>.py::<test>``) not to run.
    """
    workdir = Path(workdir)
    paths = prepare(workdir, files)
    extra_args = (*extra_args, *[f"--deselect={_local(t)}" for t in deselect])
    xml = workdir / "report.xml"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_synflow_root()), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "--import-mode=importlib",
           "--continue-on-collection-errors", f"--junitxml={xml}", "-o", "junit_family=xunit1",
           *extra_args, *[str(p.relative_to(workdir)) for p in paths]]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if not xml.exists():
        raise RuntimeError(f"pytest wrote no report (rc {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return parse_junit(xml)


def compare(outcomes: list[Outcome], expected: dict[str, str]) -> list[str]:
    """Problems: unexpected failures, expected failures that pass, stale entries.

    An entry for a file (no ``::``) that now imports is stale too: list its tests instead.
    """
    problems = []
    seen = {o.test_id: o for o in outcomes}
    for o in outcomes:
        if o.status in ("failed", "error") and o.test_id not in expected:
            problems.append(f"UNEXPECTED {o.status.upper()}: {o.test_id}: {o.message}")
        elif o.status == "passed" and o.test_id in expected:
            problems.append(f"EXPECTED FAILURE NOW PASSES (remove it from the list): "
                            f"{o.test_id} ({expected[o.test_id]})")
    for test_id in expected:
        if test_id not in seen:
            problems.append(f"STALE ENTRY (no such test ran): {test_id}")
    return problems
