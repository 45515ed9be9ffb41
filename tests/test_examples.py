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
    if script.name == "use_in_your_pipeline.py":  # a figure a user can look at
        figure = Path(proc.stdout.strip().splitlines()[-1].removeprefix("figure: "))
        assert figure.suffix == ".png" and figure.stat().st_size > 10_000, proc.stdout


def test_pipeline_example_help_explains_every_option():
    script = next(p for p in EXAMPLES if p.name == "use_in_your_pipeline.py")
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "init_dwi_registration_wf" in out and "figure" in out  # what it does
    for option, words in (("--out", "folder"), ("--level-iters", "iterations"),
                          ("--fast", "iterations"), ("--nprocs", "processes")):
        block = out[out.index(option, out.index("options:")):]
        assert words in block.split("\n  -")[0], f"{option} has no help"
