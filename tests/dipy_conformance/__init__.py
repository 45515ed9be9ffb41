"""DIPY conformance: DIPY's own tests, run against synflow's mirrored modules (issue 9).

Run by hand for a per-test summary::

    python -m tests.dipy_conformance            # every mirrored DIPY test file
    python -m tests.dipy_conformance -v         # also print each failure's message

``tests/test_dipy_conformance.py`` runs the same in the default test suite and fails on
any test that fails without being listed in :mod:`tests.dipy_conformance.expected`, and
on any listed test that passes (strict: prune the list as work lands).
"""
