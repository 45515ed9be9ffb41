"""``python -m tests.dipy_conformance``: run DIPY's mirrored tests, print a summary."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from .expected import DESELECTED, EXPECTED_FAILURES
from .runner import TEST_FILES, compare, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.dipy_conformance",
                                     description=__doc__)
    parser.add_argument("files", nargs="*", default=list(TEST_FILES),
                        help="DIPY test files, relative to the dipy package")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print each failure's message")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="synflow-dipy-conformance-") as tmp:
        outcomes = run(Path(tmp), tuple(args.files), deselect=tuple(DESELECTED))
    seconds = time.perf_counter() - start
    for o in outcomes:
        mark = {"passed": "PASS", "skipped": "SKIP"}.get(o.status, "FAIL")
        note = ""
        if mark == "FAIL":
            note = f"  [expected: {EXPECTED_FAILURES[o.test_id]}]" if (
                o.test_id in EXPECTED_FAILURES) else "  [UNEXPECTED]"
        elif mark == "SKIP":
            note = f"  ({o.message})"
        print(f"{mark} {o.seconds:6.2f}s {o.test_id}{note}")
        if args.verbose and mark == "FAIL":
            print(f"       {o.message}")
    ran = [o for o in outcomes if o.status != "skipped"]
    passed = sum(o.status == "passed" for o in ran)
    print(f"\n{passed} of {len(ran)} pass ({len(outcomes) - len(ran)} skipped, "
          f"{len(DESELECTED)} deselected) in {seconds:.1f} s")
    problems = compare(outcomes, EXPECTED_FAILURES)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
