"""DIPY's own tests, run against synflow's mirrored modules (issue 9).

The DIPY test files of :data:`tests.dipy_conformance.runner.TEST_FILES` are copied with
their imports pointed at synflow where synflow mirrors the module, run with pytest in a
subprocess, and each outcome is compared with :mod:`tests.dipy_conformance.expected`:
a test failing without an entry fails here, and so does an entry whose test passes.
By hand, with a per-test summary: ``python -m tests.dipy_conformance``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("dipy")

from tests.dipy_conformance.expected import DESELECTED, EXPECTED_FAILURES  # noqa: E402
from tests.dipy_conformance.rewrite import rewrite_source  # noqa: E402
from tests.dipy_conformance.runner import compare, run  # noqa: E402


@pytest.mark.needs_dipy
def test_dipy_tests_pass_against_synflow(tmp_path):
    outcomes = run(tmp_path, deselect=tuple(DESELECTED))
    assert sum(o.status == "passed" for o in outcomes) > 0
    problems = compare(outcomes, EXPECTED_FAILURES)
    assert not problems, "\n".join(problems)


def test_every_expected_failure_has_a_reason():
    for test_id, reason in EXPECTED_FAILURES.items():
        assert reason.startswith(("issue 9, pending: ", "permanent: ")), test_id


def _imports(src: str) -> list[str]:
    return [line for line in rewrite_source(src).splitlines() if "import" in line]


def test_rewrite_splits_package_imports_between_synflow_and_dipy():
    lines = _imports("from dipy.align import imwarp, vector_fields as vfu, floating\n")
    assert "    from synflow.align import imwarp as imwarp" in lines
    # synflow.align.vector_fields is not a DIPY mirror: DIPY's stays
    assert "from dipy.align import vector_fields as vfu, floating" in lines


def test_rewrite_mirrored_modules_and_keeps_the_rest():
    src = (
        "from dipy.align.imwarp import DiffeomorphicMap\n"
        "from dipy.segment.mask import median_otsu\n"
        "from dipy.data import get_fnames\n"
        "import dipy.align.metrics as metrics\n"
        "def f():\n    from dipy.viz import regtools\n"
    )
    lines = _imports(src)
    assert "    from synflow.align.imwarp import DiffeomorphicMap as DiffeomorphicMap" in lines
    assert "    from synflow.segment.mask import median_otsu as median_otsu" in lines
    assert "from dipy.data import get_fnames" in lines
    assert "import synflow.align.metrics as metrics" in lines
    assert "    from synflow.viz import regtools" in lines


def test_a_name_synflow_lacks_fails_only_where_used():
    ns: dict = {}
    exec(rewrite_source("from dipy.align.imwarp import no_such_name\nx = 1\n"), ns)
    assert ns["x"] == 1
    with pytest.raises(ImportError, match="synflow does not offer"):
        ns["no_such_name"]()
