"""Every runnable example in workflows/ runs to completion (with its fast setting)."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[1] / "workflows").glob("*.py"))


def test_there_are_examples():
    assert EXAMPLES, "workflows/ should hold runnable example scripts"


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, tmp_path):
    # Each example takes --out DIR (where it writes) and --fast (few iterations).
    proc = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "out"), "--fast"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert any((tmp_path / "out").rglob("*")), f"{script.name} wrote nothing"
